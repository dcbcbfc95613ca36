"""``eventops api --workers N``: N processes on one port (SO_REUSEPORT), supervised as a set."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import httpx
import pytest

from core.settings import REPO_ROOT
from tests.integration.conftest import settings_env, wait_for


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(x) for x in out]


def _api_workers(pid: int) -> list[int]:
    # the spawn start method adds a resource tracker child: the workers are the ones listening
    return [
        c
        for c in _children(pid)
        if "multiprocessing.resource_tracker"
        not in open(f"/proc/{c}/cmdline", "rb").read().decode(errors="replace")
    ]


@pytest.fixture
def port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def _start(settings, port, workers=2):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli",
            "api",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
        ],
        cwd=REPO_ROOT,
        env=settings_env(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_two_workers_serve_one_port_and_stop_together(settings, port):
    proc = _start(settings, port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: len(_api_workers(proc.pid)) == 2 and _ready(url),
            60,
            interval=0.3,
            what="2 workers ready",
        )
        # 20 connections held open at once: the kernel spreads them over both listening sockets
        clients = [httpx.Client(base_url=url) for _ in range(20)]
        try:
            assert all(c.get("/healthz").status_code == 200 for c in clients)
            workers = _api_workers(proc.pid)
            listening = {w: _sockets(w, port, "0A") for w in workers}
            established = {w: len(_sockets(w, port, "01")) for w in workers}
            assert all(len(x) == 1 for x in listening.values()), listening  # one listener each
            assert sum(established.values()) == 20 and min(established.values()) > 0, established
        finally:
            for c in clients:
                c.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not any(_alive(w) for w in workers)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_dead_worker_stops_the_set_with_an_error(settings, port):
    proc = _start(settings, port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: len(_api_workers(proc.pid)) == 2 and _ready(url),
            60,
            interval=0.3,
            what="2 workers ready",
        )
        first, other = _api_workers(proc.pid)
        subprocess.run(["kill", "-9", str(first)], check=True)
        assert proc.wait(30) == 1  # the supervisor stops the other worker and reports failure
        assert not _alive(other)
        assert b"exited; stopping the others" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _sockets(pid: int, port: int, state: str) -> list[str]:
    """TCP sockets of ``pid`` on local ``port`` in ``state`` (0A listen, 01 established)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    with open(f"/proc/{pid}/net/tcp") as f:
        rows = f.read().splitlines()[1:]
    return [
        r
        for r in rows
        if r.split()[9] in inodes
        and r.split()[1].endswith(f":{port:04X}")
        and r.split()[3] == state
    ]


def _metrics_dir(pid: int) -> str | None:
    with open(f"/proc/{pid}/environ", "rb") as f:
        pairs = [kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv]
    d = dict(pairs).get(b"PROMETHEUS_MULTIPROC_DIR")
    return d.decode() if d else None


def _healthz_count(text: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "eventops_http_requests_total" and s.labels == {
                "route": "/healthz",
                "method": "GET",
                "status": "200",
            }:
                return s.value
    return 0.0


def test_prometheus_metrics_of_two_workers_are_merged(settings, port):
    """Every worker answers ``/prometheus/metrics`` with the requests of both (a private
    PROMETHEUS_MULTIPROC_DIR set by the supervisor, removed when the set stops)."""
    proc = _start(settings, port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: len(_api_workers(proc.pid)) == 2 and _ready(url),
            60,
            interval=0.3,
            what="2 workers ready",
        )
        workers = _api_workers(proc.pid)
        dirs = {_metrics_dir(w) for w in workers}
        assert len(dirs) == 1 and None not in dirs, dirs
        (mdir,) = dirs
        assert os.path.isdir(mdir) and mdir != os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        clients = [httpx.Client(base_url=url) for _ in range(20)]
        try:
            assert all(c.get("/healthz").status_code == 200 for c in clients)
            served = {w: len(_sockets(w, port, "01")) for w in workers}
            assert min(served.values()) > 0, served  # both workers answered some
            # whichever worker answers, it reports all 20
            answers = [_healthz_count(c.get("/prometheus/metrics").text) for c in clients]
        finally:
            for c in clients:
                c.close()
        assert answers == [20.0] * 20, answers
        assert {f.rsplit("_", 1)[-1] for f in os.listdir(mdir) if f.startswith("counter_")} == {
            f"{w}.db" for w in workers
        }
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not os.path.exists(mdir)  # removed with the set
    finally:
        if proc.poll() is None:
            proc.kill()
