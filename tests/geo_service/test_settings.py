"""Settings: precedence, conversion errors that name the field, unknown keys, and documentation."""

from __future__ import annotations

from pathlib import Path

import pytest

from geo_service.cli import main, parser
from geo_service.config import SettingsError, documented, load_settings
from geo_service.settings import ServiceSettings

P = "GEODROP_SERVICE_"


def test_precedence_is_defaults_then_toml_then_env_then_flags(tmp_path: Path) -> None:
    toml = tmp_path / "geo.toml"
    toml.write_text('port = 9000\nmax_pois = 50\nsnapshots = "/srv/snaps"\naccess_log = true\n')
    env = {P + "PORT": "9100", P + "MAX_POIS": "60"}
    s = load_settings(ServiceSettings, P, toml, env, {"port": "9200"})
    assert (s.port, s.max_pois, s.snapshots, s.access_log) == (9200, 60, Path("/srv/snaps"), True)
    assert s.workers == 1  # default untouched


def test_every_problem_is_named_at_once(tmp_path: Path) -> None:
    toml = tmp_path / "geo.toml"
    toml.write_text("prot = 9000\n")
    with pytest.raises(SettingsError) as err:
        load_settings(ServiceSettings, P, toml, {P + "WORKERS": "two", P + "ACCESS_LOG": "maybe"})
    text = str(err.value)
    assert "unknown setting 'prot'" in text and "workers: should be int" in text and "access_log" in text


def test_cross_field_rules_are_checked() -> None:
    with pytest.raises(SettingsError, match="busy_inflight"):
        load_settings(ServiceSettings, P, None, {}, {"busy_inflight": 10, "shed_inflight": 5})


def test_secret_stays_out_of_repr() -> None:
    s = load_settings(ServiceSettings, P, None, {P + "ADMIN_TOKEN": "hunter2"})
    assert s.admin_token == "hunter2" and "hunter2" not in repr(s)


def test_every_setting_is_documented_and_has_a_flag(capsys: pytest.CaptureFixture[str]) -> None:
    for name, _, help_text in documented(ServiceSettings):
        assert help_text.endswith("."), name
    with pytest.raises(SystemExit):
        parser().parse_args(["serve", "--help"])
    text = capsys.readouterr().out
    for name, _, _ in documented(ServiceSettings):
        if name != "worker_id":
            assert "--" + name.replace("_", "-") in text, name


def test_bad_flag_values_exit_2_naming_the_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--port", "eighty"]) == 2
    assert "port: should be int" in capsys.readouterr().err


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "geo.example"])
def test_a_service_off_loopback_refuses_the_demo_secrets_and_short_ones(host: str) -> None:
    from collector.settings import CollectorSettings

    strong = "s" * 32
    with pytest.raises(SettingsError) as refused:
        ServiceSettings(host=host, token_secret="geodrop-demo-only", admin_token="short")
    assert [p.partition(":")[0] for p in refused.value.problems] == ["token_secret", "admin_token"]
    assert ServiceSettings(host=host, token_secret=strong, admin_token=strong).host == host
    with pytest.raises(SettingsError, match="admin_token"):
        CollectorSettings(host=host, admin_token="geodrop-demo-admin")
    assert CollectorSettings(host=host, admin_token=strong).host == host


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_a_service_on_loopback_takes_the_demo_secrets(host: str) -> None:
    assert ServiceSettings(host=host, token_secret="geodrop-demo-only", admin_token="geodrop-demo-admin").host == host


def test_the_makefiles_demo_secrets_are_the_ones_refused_off_loopback() -> None:
    from geo_service.config import DEMO_SECRETS

    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    demo = {line.split("?=")[1].strip() for line in makefile.splitlines()
            if line.startswith(("DEMO_SECRET", "DEMO_ADMIN", "DEMO_PARTNER", "DEMO_CONSOLE"))}
    assert demo == DEMO_SECRETS
    assert "--token-secret" not in makefile and "--admin-token" not in makefile  # a process list shows flags


@pytest.mark.parametrize(("name", "value"), [
    ("origin", "http://puller:pa/ss-WORD@127.0.0.1:8090/origin"),
    ("origin", "https://puller:pa?ss-WORD@origin.example/x"),
    ("origin", "http://puller:pa#ss-WORD@127.0.0.1/o"),
    ("ledger", "mysql://root:pa?ss-WORD@127.0.0.1:3306/test"),
    ("ledger", "redis://:pa?ss-WORD@127.0.0.1:6379/0"),
    ("record_db", "mysql://root:pa/ss-WORD@127.0.0.1:3306/test"),
])
def test_a_password_holding_a_raw_delimiter_is_refused_without_being_shown(name: str, value: str) -> None:
    # Left raw, '/', '?' or '#' ends the authority early: the rest of the password would pass for the path or the
    # query, and be shown wherever the URL is. The refusal says how to write it, and never echoes it.
    settings = {name: value, **({"ledger": "redis://127.0.0.1:6379"} if name == "record_db" else {})}
    with pytest.raises(SettingsError) as refused:
        load_settings(ServiceSettings, P, None, {}, settings)
    assert "percent-encoded" in str(refused.value) and "WORD" not in str(refused.value)
    assert "%2F, %3F, %23, %40" in str(refused.value)  # the delimiter's branch, not the port's
