"""nginx from Debian's package running the project's own deploy/*.conf files on loopback.

Only what is site-specific changes: the `listen` port, the upstream `server` lines (the load balancer)
or the served `root` (the origin). Files live in a temp prefix removed by close().
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def nginx_available() -> bool:
    return Path(NGINX).exists()


@dataclass
class Nginx:
    conf: str
    prefix: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        (self.prefix / "tmp").mkdir(parents=True, exist_ok=True)
        (self.prefix / "nginx.conf").write_text(self.conf)
        # As root, nginx's workers would switch to `nobody`, who cannot read a test's private temp folders.
        globals_ = "daemon off;" + (" user root;" if os.geteuid() == 0 else "")
        self.proc = subprocess.Popen([NGINX, "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf"), "-g", globals_],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:  # bounded by the deadline
            try:
                urllib.request.urlopen(f"{self.url}/", timeout=1).close()
                return self
            except urllib.error.HTTPError:
                return self  # it answers (404, 502 and the like are answers)
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.prefix / "error.log")
                    raise RuntimeError(f"nginx did not start: {log.read_text() if log.exists() else ''}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.prefix, ignore_errors=True)


def load_balancer(host_ports: list[int], rates: dict[str, int] | None = None, operators: list[str] | None = None) -> Nginx:
    """deploy/nginx.conf in front of the service hosts on these loopback ports; `rates` sizes its limit_req
    zones (zone name -> requests a second; a limit's burst follows, at 10 ms of its rate), as an
    operator does for a site (the lines marked SIZE). Every address is 127.0.0.1 here, so the per-address
    limits are lifted unless given. `operators` replaces the networks /healthz, /metrics and /v1/admin/ answer."""
    port = free_port()
    conf = (DEPLOY / "nginx.conf").read_text()
    if operators is not None:
        conf, n = re.subn(r"(?:^ +allow \S+;.*\n)+", lambda _: "".join(f"            allow {o};\n" for o in operators),
                          conf, count=1, flags=re.M)
        assert n == 1, "deploy/nginx.conf has no allow list"
    conf, lifted = re.subn(r"limit_conn conns_per_address \d+;", "limit_conn conns_per_address 60000;", conf)
    assert lifted == 1, "deploy/nginx.conf has no limit_conn conns_per_address"
    for zone, rate in {"per_address": 10**6, **(rates or {})}.items():
        conf, zones = re.subn(rf"(zone={zone}:\S+) rate=\d+r/s;", rf"\1 rate={rate}r/s;", conf)
        conf, limits = re.subn(rf"(limit_req zone={zone}) burst=\d+", rf"\1 burst={max(1, rate // 100)}", conf)
        assert zones == 1 and limits >= 1, f"deploy/nginx.conf has no limit_req zone {zone}"
    upstream = re.search(r"^( +)server 10\.0\.0\.\d+:8080 (.*);\n", conf, re.M)
    assert upstream is not None, "deploy/nginx.conf has no upstream server line"
    indent, options = upstream.groups()
    servers = "".join(f"{indent}server 127.0.0.1:{p} {options};\n" for p in host_ports)
    conf = re.sub(r"(^ +server 10\.0\.0\.\d+:8080 .*;\n)+", lambda _: servers, conf, count=1, flags=re.M)
    conf = conf.replace("listen 80 ", f"listen 127.0.0.1:{port} ", 1)
    return Nginx(conf, Path(tempfile.mkdtemp(prefix="geodrop-lb-")), port)


def origin_server(root: Path) -> Nginx:
    """deploy/origin.nginx.conf serving an origin folder."""
    port = free_port()
    conf = (DEPLOY / "origin.nginx.conf").read_text()
    conf = conf.replace("listen 8090;", f"listen 127.0.0.1:{port};", 1).replace("root /srv/geodrop-origin;", f"root {root};", 1)
    return Nginx(conf, Path(tempfile.mkdtemp(prefix="geodrop-origin-")), port)
