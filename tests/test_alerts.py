"""The alerts operators load (deploy/prometheus/alerts.yml): promtool checks them and runs their unit tests
(alerts_test.yml), and every runbook row and metric they name exists, so the file cannot drift from the README
and the code."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import yaml  # PyYAML: schemathesis, a test dependency, requires it

from delivery.app import Dispatcher, render_metrics
from delivery.dispatcher import ChannelHealth, ChannelRunner
from geo_service.web.metrics import Metrics
from tests.conftest import REPO
from tests.support.parts import missing

RULES = REPO / "deploy" / "prometheus"
RUNBOOK = "README.md#failure-modes: "
# Labels Prometheus adds to every series it scrapes; the rest come from the code.
TARGET_LABELS = {"job", "instance"}
# A metric's definition in a /metrics handler's values: "name": ("gauge" or "counter", help, value).
_VALUE = re.compile(r'"(\w+)":\s*\(\s*"(?:gauge|counter)"')
# The labels a handler gives Metrics.render: .render({"worker": ...}, ...).
_BASE_LABEL = re.compile(r'\.render\(\{"(\w+)"')
_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)\{([^}]*)\}", re.M)


def _load(path: Path) -> dict[str, Any]:
    return cast(dict[str, Any], yaml.safe_load(path.read_text()))


def _alerts() -> list[dict[str, Any]]:
    return [rule for group in _load(RULES / "alerts.yml")["groups"] for rule in group["rules"]]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    if path is None:
        missing("promtool", "install Debian's prometheus package, which provides it, to check the alerts")
    # From the rules' folder, so the unit tests' rule_files (alerts.yml) resolve however promtool resolves them.
    return subprocess.run([path, *args], cwd=RULES, capture_output=True, text=True, timeout=120)


def test_promtool_accepts_the_rules() -> None:
    done = _promtool("check", "rules", "alerts.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_alerts_pass_their_unit_tests() -> None:
    done = _promtool("test", "rules", "alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_does_not() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in _load(RULES / "alerts_test.yml")["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in _alerts()}
    assert names - fires == set(), "alerts no unit test sees firing"
    assert names - quiet == set(), "alerts no unit test sees quiet"
    assert (fires | quiet) - names == set(), "unit tests of alerts that are gone"


def failure_modes(readme: str) -> set[str]:
    """Return the rows of the README's failure-modes table, each by its first cell without the drills in brackets."""
    section = readme.split("\n## Failure modes\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]  # past the header (the rule is |---|)
    return {row[2:].split(" | ", 1)[0].split(" [", 1)[0].strip() for row in rows}


def test_every_alert_has_a_severity_a_summary_and_a_runbook_row_that_exists() -> None:
    readme = (REPO / "README.md").read_text()
    assert "\n## Failure modes\n" in readme  # the heading GitHub anchors as #failure-modes
    rows = failure_modes(readme)
    assert {"the ledger's database or Redis node goes away, or stalls", "more polls than a host can answer"} <= rows
    for rule in _alerts():
        name, annotations = rule["alert"], rule.get("annotations", {})
        assert rule.get("labels", {}).get("severity") in {"page", "ticket"}, name
        assert annotations.get("summary"), name
        runbook = annotations.get("runbook", "")
        assert runbook.startswith(RUNBOOK) and runbook.removeprefix(RUNBOOK) in rows, f"{name}: {runbook!r}"


def _delivery_exposition() -> str:
    """Render a dispatcher's /metrics for one channel: render_metrics reads its name, its health and its counts of
    calls open and answers unrecorded."""
    runner = SimpleNamespace(channel=SimpleNamespace(name="cash"), health=ChannelHealth(), in_flight=0, unrecorded=0)
    return render_metrics(Dispatcher((cast(ChannelRunner, runner),), ()))


def exported() -> tuple[set[str], set[str]]:
    """Return the metric names and labels the code exports, rendered as the services' /metrics render them."""
    sources = [p for package in ("geo_service", "collector", "delivery") for p in (REPO / package).rglob("*.py")]
    texts = [p.read_text() for p in sources]
    values = {name for text in texts for name in _VALUE.findall(text)}
    base = {label for text in texts for label in _BASE_LABEL.findall(text)}
    metrics = Metrics()
    metrics.observe("/v1/nearby", 200, 0.001)  # so the request counter and latency histogram are rendered too
    text = metrics.render({label: "x" for label in base}, {n: ("gauge", "", 0.0) for n in values})
    text += _delivery_exposition()
    names, labels = set(), set(TARGET_LABELS)
    for name, pairs in _SAMPLE.findall(text):
        names.add(name)
        labels |= {pair.split("=", 1)[0] for pair in pairs.split(",") if pair}
    return names, labels


def test_every_metric_and_label_an_alert_uses_is_exported() -> None:
    names, labels = exported()
    assert {"geodrop_ledger_config_problems", "geodrop_last_pull_age_seconds", "geodrop_http_requests_total",
            "geodrop_delivery_failed_total"} <= names and {"worker", "process", "status", "channel"} <= labels
    for rule in _alerts():
        expr = rule["expr"]
        used = set(re.findall(r"\bgeodrop_\w+", expr))
        assert used and used <= names, f"{rule['alert']}: not exported: {sorted(used - names)}"
        # Labels in matchers ({status=~"5.."}) and in by/without clauses.
        named = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"", expr))
        named |= {label.strip() for clause in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
                  for label in clause.split(",") if label.strip()}
        assert named <= labels, f"{rule['alert']}: labels not exported: {sorted(named - labels)}"
