"""Operators get one line with the fix, a non-zero exit code, and bounded waits (issue 8, item 6).

Every case runs ``python -m cli`` as a subprocess, as an operator would, against the real
PostgreSQL and Kafka of the test session, or against a closed port found at runtime; each
asserts the exit code, that stderr is one line without a traceback, and (services down) that
the command ended within 10 s.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
import pytest

from core.settings import REPO_ROOT
from storage.inventory import load_inventory
from storage.tenants import load_tenants
from tests.integration.conftest import consume_all, settings_env, wait_for

BOUND_S = 10.0  # "Kafka/PostgreSQL unreachable -> a clear error within 10 s"


@dataclass
class Run:
    args: list[str]
    code: int
    out: str
    err: str
    seconds: float

    def __str__(self) -> str:
        return (
            f"eventops {' '.join(self.args)} -> exit {self.code} in {self.seconds:.1f}s\n"
            f"stdout: {self.out[-2000:]}\nstderr: {self.err[-3000:]}"
        )


def eventops(
    args: list[str], env: dict[str, str], timeout: float = 120, stdin: bytes | None = None
) -> Run:
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env=env,
        cwd=REPO_ROOT,
        input=stdin,
        capture_output=True,
        timeout=timeout,
    )
    return Run(
        args,
        p.returncode,
        p.stdout.decode(errors="replace"),
        p.stderr.decode(errors="replace"),
        time.monotonic() - t0,
    )


def one_line_error(r: Run, code: int, *needles: str, max_s: float | None = None) -> str:
    """The run failed with ``code`` and one stderr line containing ``needles``; returns it."""
    assert r.code == code, str(r)
    assert "Traceback" not in r.err and "Traceback" not in r.out, str(r)
    lines = [ln for ln in r.err.splitlines() if ln.strip()]
    assert len(lines) == 1, str(r)
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    if max_s is not None:
        assert r.seconds <= max_s, str(r)
    return lines[0]


def closed_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@pytest.fixture
def env(settings) -> dict[str, str]:
    return settings_env(settings)


# --- bad arguments and missing things ----------------------------------------------------------


def test_send_missing_file_is_one_line_exit_4(env, tmp_path):
    r = eventops(["send", "-f", str(tmp_path / "missing.jsonl")], env)
    one_line_error(r, 4, "file not found", "missing.jsonl")


def test_worker_unknown_stage_is_one_line_exit_2(env):
    r = eventops(["worker", "bogus"], env)
    one_line_error(r, 2, "bogus", "normalize,enrich,detect,sink")


@pytest.mark.parametrize("tenant_id", ["", "a b", "_x", "x" * 65, "a\n", "a;drop"])
def test_tenants_create_invalid_id_is_one_line_exit_2(env, conn, tenant_id):
    r = eventops(["tenants", "create", tenant_id], env)
    one_line_error(r, 2, "invalid tenant id")
    assert tenant_id not in load_tenants(conn)


def test_inventory_set_unknown_tenant_names_tenants_create(env, conn):
    ghost = f"ghost{uuid.uuid4().hex[:6]}"
    r = eventops(["inventory", "set", ghost, "host-a", "team=payments"], env)
    one_line_error(r, 4, ghost, f"eventops tenants create {ghost}")
    assert all(t != ghost for t, _ in load_inventory(conn))


def test_inventory_set_invalid_host_is_refused(env, tenant, conn):
    r = eventops(["inventory", "set", tenant, "bad host", "team=payments"], env)
    one_line_error(r, 2, "bad_field")
    assert (tenant, "bad host") not in load_inventory(conn)


def test_invalid_setting_is_one_line_exit_3(env):
    r = eventops(["tenants", "list"], {**env, "EVENTOPS_PG_PORT": "not-a-port"})
    one_line_error(r, 3, "EVENTOPS_PG_PORT")


def test_send_to_missing_topic_is_one_line_exit_4(env):
    r = eventops(["send", "--topic", f"no-such-{uuid.uuid4().hex[:6]}", '{"a": 1}'], env)
    one_line_error(r, 4, "not found", "eventops topics create", max_s=BOUND_S)


# --- services down: bounded, one line ----------------------------------------------------------

PG_COMMANDS = [
    ["tenants", "list"],
    ["tenants", "create", "acme"],
    ["inventory", "set", "acme", "host-a", "team=x"],
    ["inventory", "list"],
    ["db", "migrate"],
    ["db", "maintain"],
    ["keys", "list"],
    ["keys", "create", "--tenant", "acme"],
    ["worker", "normalize"],
    ["simulate", "--duration", "1"],
    ["models", "list", "--tenant", "acme"],
    ["models", "status", "--tenant", "acme"],
    ["train", "--no-promote", "--tenant", "acme"],
]


@pytest.mark.parametrize("args", PG_COMMANDS, ids=lambda a: "-".join(a[:2]))
def test_postgres_unreachable_is_one_line_within_10s(env, args):
    port = closed_port()
    env = {**env, "EVENTOPS_PG_PORT": str(port)}
    env.pop("MLFLOW_TRACKING_URI", None)  # the MLflow store is the same (unreachable) server
    r = eventops(args, env)
    one_line_error(
        r, 5, f"PostgreSQL at 127.0.0.1:{port} is not reachable", "EVENTOPS_PG_", max_s=BOUND_S
    )


KAFKA_COMMANDS = [
    ["send", '{"tenant_id": "acme"}'],
    ["topics", "create"],
    ["worker", "normalize,enrich,detect,sink"],
    ["worker", "sink"],
    ["simulate", "--duration", "1"],
]


@pytest.mark.parametrize("args", KAFKA_COMMANDS, ids=lambda a: "-".join(a[:2]))
def test_kafka_unreachable_is_one_line_within_10s(env, args):
    port = closed_port()
    r = eventops(args, {**env, "EVENTOPS_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}"})
    # no librdkafka log lines: the 298 lines of "Connect to ... failed" are gone
    one_line_error(
        r,
        5,
        f"Kafka at 127.0.0.1:{port} is not reachable",
        "EVENTOPS_KAFKA_BOOTSTRAP",
        max_s=BOUND_S,
    )


def test_kafka_that_accepts_but_never_answers_is_bounded(env):
    """A broker address that accepts TCP connections and says nothing (a hung broker)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        r = eventops(
            ["send", '{"a": 1}'],
            {
                **env,
                "EVENTOPS_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}",
                "EVENTOPS_CONNECT_TIMEOUT_S": "3",
            },
        )
    one_line_error(r, 5, f"Kafka at 127.0.0.1:{port} is not reachable", max_s=BOUND_S)


def test_mlflow_tracking_server_unreachable_is_bounded(env):
    port = closed_port()
    r = eventops(
        ["models", "list", "--tenant", "acme"],
        {**env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"},
    )
    one_line_error(r, 5, f"http://127.0.0.1:{port}", "MLFLOW_TRACKING_URI", max_s=BOUND_S)


# --- the API's port ---------------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
def test_api_port_taken_is_one_line_naming_the_port(env, workers):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = eventops(["api", "--port", str(port), "--workers", workers], env)
    one_line_error(r, 3, f"port {port}", "--port", "EVENTOPS_API_PORT", max_s=BOUND_S)


# --- input the pipeline refuses is reported, not hidden -----------------------------------------


def test_send_reports_what_will_be_dead_lettered_and_the_dlq_gets_it(
    settings, env, tenant, conn, start_worker, tmp_path
):
    good = [
        orjson.dumps(
            {
                "tenant_id": tenant,
                "host": "host-a",
                "metric": "cpu_load",
                "value": i,
                "ts_event": now_iso(),
                "event_id": f"{tenant}-{i}",
            }
        )
        for i in range(6)
    ]
    bad_json = b'{"tenant_id": "' + tenant.encode() + b'", "host": '
    unknown = orjson.dumps(
        {
            "tenant_id": "nobody-here",
            "host": "host-a",
            "metric": "cpu_load",
            "value": 1,
            "ts_event": now_iso(),
        }
    )
    f = tmp_path / "events.jsonl"
    f.write_bytes(b"\n".join([*good[:3], bad_json, b"", unknown, *good[3:]]) + b"\n")

    r = eventops(["send", "-f", str(f)], env)
    line = one_line_error(
        r, 6, "sent 8 events", "2 will be dead-lettered", "bad_json 1", "unknown_tenant 1", "line 4"
    )
    assert r.out == "", line

    # "never lost": the rejected events were sent too, and the worker dead-letters them
    start_worker()
    wait_for(
        lambda: (
            conn.execute("SELECT count(*) FROM metrics WHERE tenant_id = %s", (tenant,)).fetchone()[
                0
            ]
            == 6
        ),
        60,
        what="6 stored events",
    )
    dlq = consume_all(settings, settings.topic_dlq, 2)
    assert sorted(dict(m.headers())["reason"] for m in dlq) == [b"bad_json", b"unknown_tenant"]
    assert {m.value() for m in dlq} == {bad_json, unknown}


def test_send_of_valid_events_says_sent_and_exits_0(env, tenant):
    ev = orjson.dumps(
        {
            "tenant_id": tenant,
            "host": "host-a",
            "metric": "cpu_load",
            "value": 1,
            "ts_event": now_iso(),
        }
    )
    r = eventops(["send", "-f", "-"], env, stdin=ev + b"\n" + ev + b"\n")
    assert r.code == 0, str(r)
    assert r.out.strip().startswith("sent 2 events to ")
    assert "Traceback" not in r.err and "%3|" not in r.err, str(r)


def test_simulate_backfill_3600_after_a_live_run_is_not_dead_lettered_as_ts_too_old(
    settings, env, tenant, start_worker
):
    """The issue's ``simulate --backfill 3600``: 2,856 of 3,664 events dead-lettered as
    ``ts_too_old`` because the history landed behind windows that the hosts' earlier events
    (a previous run) had already closed. The backfill now starts after them."""
    start_worker()
    args = [
        "simulate",
        "--tenant",
        tenant,
        "--hosts",
        "2",
        "--backfill",
        "3600",
        "--duration",
        "2",
        "--rate",
        "200",
    ]
    first = eventops(args, env)
    assert first.code == 0, str(first)
    assert ": " in first.out and " 0 dead-lettered" in first.out, str(first)
    second = eventops(args, env)
    assert second.code == 0, str(second)
    assert " 0 dead-lettered" in second.out and "not processed" not in second.out, str(second)
    assert "history starts after them" in second.err, str(second)
    for run in (first, second):
        sent, stored = _counts(run.out)
        assert stored == sent > 0, str(run)


def test_simulate_counts_what_the_worker_dead_lettered_by_reason(
    settings, env, tenant, start_worker
):
    # a worker whose limits refuse every simulated event (they carry one tag)
    start_worker(s=settings.model_copy(update={"max_tags": 0}))
    r = eventops(
        [
            "simulate",
            "--tenant",
            tenant,
            "--hosts",
            "1",
            "--backfill",
            "300",
            "--duration",
            "1",
            "--rate",
            "100",
        ],
        env,
    )
    line = one_line_error(r, 6, "0 stored", "dead-lettered (too_many_tags ")
    assert "ok" not in line.split()


def _counts(out: str) -> tuple[int, int]:
    """(sent, stored) from ``sent N events, … : M stored, …``."""
    words = out.replace(",", " ").replace(":", " ").split()
    return int(words[words.index("sent") + 1]), int(words[words.index("stored") - 1])


def test_traceback_only_at_debug_level(env, tmp_path):
    d = tmp_path / "dir.jsonl"  # a directory where a file is expected
    d.mkdir()
    r = eventops(["send", "-f", str(d)], env)
    one_line_error(r, 4, str(d))
    r = eventops(["send", "-f", str(d)], {**env, "EVENTOPS_LOG_LEVEL": "DEBUG"})
    assert r.code == 4 and "Traceback" in r.err  # DEBUG shows it


def test_exit_codes_are_documented_in_the_readme():
    text = (REPO_ROOT / "README.md").read_text()
    section = text[text.index("## CLI errors and exit codes") :]
    for code in ("| 0 |", "| 1 |", "| 2 |", "| 3 |", "| 4 |", "| 5 |", "| 6 |"):
        assert code in section
