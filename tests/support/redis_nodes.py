"""Throwaway redis-server processes on free loopback ports: one node, or a cluster of masters.

Each node runs from Debian's binary in its own folder with the durability the ledger requires (AOF,
fsync on every write, no eviction) and is stopped, and its folder removed, by close(). The tests and
the benchmarks share these; nothing here touches the Redis on 6379.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.cluster import ClusterNode, RedisCluster

from geo_service.dsn import REDIS_BUCKETS
from geo_service.ledger.redis_layout import epoch_key

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
TEST_EPOCH = "test-epoch"  # the epoch a flushed test deployment's buckets get, as `geo-service ledger init` would
DURABLE = ["--appendonly", "yes", "--appendfsync", "always", "--maxmemory-policy", "noeviction", "--save", ""]


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """Return a free loopback port whose cluster bus port (+10000) is free too."""
    for _ in range(1000):  # bounded
        port = random.randint(20_000, 45_000)
        if _is_free(port) and _is_free(port + 10_000):
            return port
    raise RuntimeError("no free port pair found")


def redis_available() -> bool:
    return Path(REDIS_SERVER).exists() and Path(REDIS_CLI).exists()


def _cli(port: int, *args: str) -> str:
    done = subprocess.run([REDIS_CLI, "-p", str(port), *args], capture_output=True, text=True, timeout=30)
    return done.stdout.strip()


@dataclass
class RedisNode:
    """One redis-server; start() again after kill() restarts it from its AOF."""

    folder: Path
    port: int = field(default_factory=free_port)
    cluster: bool = False
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
                "--logfile", "redis.log", *DURABLE]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while _cli(self.port, "ping") != "PONG":  # bounded by the deadline
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} did not start; see {self.folder}/redis.log")
            time.sleep(0.05)
        while _cli(self.port, "info", "persistence").find("loading:0") < 0:  # an AOF being replayed
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} kept loading")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class RedisDeployment:
    """A single node or a cluster of masters, its DSN, and its nodes for fault drills."""

    nodes: list[RedisNode]
    cluster: bool
    root: Path

    @property
    def dsn(self) -> str:
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        return f"redis+cluster://{hosts}" if self.cluster else f"redis://{hosts}/0"

    def flush(self, epoch: str | None = TEST_EPOCH) -> None:
        """Empty every node, then give the ledger's buckets `epoch`, as `geo-service ledger init` does for a new
        ledger (None: leave them without one, as nodes that lost the ledger's state)."""
        for node in self.nodes:
            _cli(node.port, "flushall")
            _cli(node.port, "script", "flush")
        if epoch is not None:
            self.mark(range(REDIS_BUCKETS), epoch)

    def mark(self, buckets: Iterable[int], epoch: str = TEST_EPOCH) -> None:
        """Give these buckets of the ledger its epoch."""
        client: redis.Redis | RedisCluster = (
            RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", n.port) for n in self.nodes])  # type: ignore[no-untyped-call]
            if self.cluster else redis.Redis(port=self.nodes[0].port))
        try:
            pipe = client.pipeline(transaction=False)
            for b in buckets:
                pipe.set(epoch_key(b), epoch)
            pipe.execute()
        finally:
            client.close()

    def node_of(self, key: str) -> RedisNode:
        """Return the node serving a key."""
        if not self.cluster:
            return self.nodes[0]
        slot = int(_cli(self.nodes[0].port, "cluster", "keyslot", key))
        for node in self.nodes:
            for line in _cli(node.port, "cluster", "nodes").splitlines():
                parts = line.split()
                if "myself" in parts[2] and "master" in parts[2]:
                    for span in parts[8:]:
                        lo, _, hi = span.partition("-")
                        if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                            return node
        raise LookupError(f"no node serves slot {slot}")

    def wait_healthy(self, timeout_s: float = 30) -> None:
        """Return once every node answers (and a cluster reports state ok)."""
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            while (_cli(node.port, "ping") != "PONG"
                   or (self.cluster and "cluster_state:ok" not in _cli(node.port, "cluster", "info"))):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis node {node.port} not healthy after {timeout_s} s")
                time.sleep(0.1)

    def close(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def start_redis(cluster: bool = False, masters: int = 3) -> RedisDeployment:
    """Start a throwaway single node, or a cluster of `masters` masters with no replicas."""
    root = Path(tempfile.mkdtemp(prefix="geodrop-redis-"))
    nodes = [RedisNode(root / f"node{i}", cluster=cluster) for i in range(masters if cluster else 1)]
    deployment = RedisDeployment(nodes, cluster, root)
    try:
        for node in nodes:
            node.start()
        if cluster:
            addresses = [f"127.0.0.1:{n.port}" for n in nodes]
            subprocess.run([REDIS_CLI, "--cluster", "create", *addresses, "--cluster-yes"], check=True,
                           capture_output=True, timeout=60)
        deployment.wait_healthy()
    except BaseException:
        deployment.close()
        raise
    return deployment


if __name__ == "__main__":  # a manual check: start a cluster, print its DSN, stop on Enter
    d = start_redis(cluster=os.environ.get("CLUSTER", "1") == "1")
    print(d.dsn, flush=True)
    try:
        input()
    finally:
        d.close()
