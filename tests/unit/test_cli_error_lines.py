"""The CLI's error lines and exit codes (cli/errors.py), its bounded service checks
(cli/preflight.py) and local event checks (cli/tally.py) — no services needed: the
"unreachable" cases use a closed port on 127.0.0.1."""

from __future__ import annotations

import socket
import sys
import time
from collections import Counter

import orjson
import pytest

from cli import errors as ce
from core.errors import ConfigError, EventOpsError, NotFound, ServiceError
from core.settings import Settings


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (ce.BadArgument("x"), ce.EXIT_USAGE),
        (ConfigError("x"), ce.EXIT_CONFIG),
        (NotFound("x"), ce.EXIT_NOT_FOUND),
        (ServiceError("x"), ce.EXIT_SERVICE),
        (EventOpsError("x"), ce.EXIT_INTERNAL),
        (FileNotFoundError(2, "No such file or directory", "missing.jsonl"), ce.EXIT_NOT_FOUND),
        (IsADirectoryError(21, "Is a directory", "d"), ce.EXIT_NOT_FOUND),
        (KeyboardInterrupt(), ce.EXIT_INTERRUPTED),
        (RuntimeError("boom"), ce.EXIT_INTERNAL),
    ],
)
def test_describe_maps_each_kind_to_its_exit_code(exc, code):
    line, got = ce.describe(exc)
    assert got == code
    assert "\n" not in line and line


def test_unexpected_error_names_the_type_and_how_to_get_the_traceback():
    line, code = ce.describe(ZeroDivisionError("division by zero\nsecond line"))
    assert code == 1
    assert line == "unexpected ZeroDivisionError: division by zero — " + ce.DEBUG_HINT


def test_one_line_folds_and_bounds():
    assert ce.one_line("a\n\n b") == "a b"
    assert len(ce.one_line("y" * 5000)) == ce.MAX_LINE


def test_invalid_setting_names_the_variable(monkeypatch):
    from pydantic import ValidationError

    monkeypatch.setenv("EVENTOPS_PG_PORT", "abc")
    with pytest.raises(ValidationError) as ei:
        Settings()
    line, code = ce.describe(ei.value)
    assert code == ce.EXIT_CONFIG
    assert "EVENTOPS_PG_PORT='abc'" in line and ".env.example" in line


def test_postgres_down_was_58_lines_now_one_with_the_fix():
    from storage.connect import connect

    port = closed_port()
    s = Settings(pg_port=port)
    with pytest.raises(ServiceError) as ei:
        connect(s)
    line, code = ce.describe(ei.value)
    assert code == ce.EXIT_SERVICE
    assert line.startswith(f"PostgreSQL at 127.0.0.1:{port} is not reachable")
    assert "make services-up" in line and "EVENTOPS_PG_HOST" in line


def test_raw_psycopg_errors_are_classified():
    import psycopg

    port = closed_port()
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(f"host=127.0.0.1 port={port} user=x dbname=x connect_timeout=2")
    assert ce.describe(ei.value)[1] == ce.EXIT_SERVICE
    line, code = ce.describe(psycopg.errors.UndefinedTable('relation "tenants" does not exist'))
    assert code == ce.EXIT_CONFIG and "eventops db migrate" in line


@pytest.mark.parametrize(
    ("text", "code", "needle"),
    [
        ('FATAL:  password authentication failed for user "eventops"', 3, "EVENTOPS_PG_PASSWORD"),
        ('FATAL:  role "bob" does not exist', 3, "EVENTOPS_PG_USER"),
        ('FATAL:  database "nope" does not exist', 3, 'no database "nope"'),
        ("timeout expired", 5, "not reachable"),
    ],
)
def test_pg_problem_tells_login_database_and_reachability_apart(text, code, needle):
    line, got = ce.pg_problem(Exception(text), "db.example", 5432, "nope", "bob")
    assert got == code and needle in line and "db.example:5432" in line


def test_kafka_exception_is_one_line_exit_5():
    from confluent_kafka import KafkaError, KafkaException

    line, code = ce.describe(KafkaException(KafkaError(KafkaError._TRANSPORT, "broker down")))
    assert code == ce.EXIT_SERVICE and "EVENTOPS_KAFKA_BOOTSTRAP" in line


# --- preflight ------------------------------------------------------------------------------


def test_refused_kafka_is_reported_at_once():
    from cli.preflight import check_kafka

    s = Settings(kafka_bootstrap=f"127.0.0.1:{closed_port()}")
    t0 = time.monotonic()
    with pytest.raises(ServiceError, match="is not reachable .* EVENTOPS_KAFKA_BOOTSTRAP"):
        check_kafka(s)
    assert time.monotonic() - t0 < 2.0


def test_silent_kafka_is_bounded_by_the_connect_timeout():
    from cli.preflight import check_kafka

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        s = Settings(kafka_bootstrap=f"127.0.0.1:{silent.getsockname()[1]}", connect_timeout_s=1.5)
        t0 = time.monotonic()
        with pytest.raises(ServiceError):
            check_kafka(s)
        assert time.monotonic() - t0 < 5.0


def test_all_refused_needs_every_address_refused():
    from cli.preflight import _all_refused

    a, b = closed_port(), closed_port()
    assert _all_refused(f"127.0.0.1:{a},PLAINTEXT://127.0.0.1:{b}", 1.0)
    with socket.socket() as up:
        up.bind(("127.0.0.1", 0))
        up.listen(1)
        assert not _all_refused(f"127.0.0.1:{a},127.0.0.1:{up.getsockname()[1]}", 1.0)
    assert not _all_refused("no-port-here", 1.0)


def test_check_postgres_and_tracking_store_refused():
    from cli.preflight import check_postgres, check_tracking

    port = closed_port()
    s = Settings(pg_port=port)
    with pytest.raises(ServiceError, match=f"PostgreSQL at 127.0.0.1:{port} is not reachable"):
        check_postgres(s)
    with pytest.raises(ServiceError, match="^MLflow store: PostgreSQL at"):
        check_tracking(s, s.mlflow_tracking_uri())
    with pytest.raises(ServiceError, match="MLFLOW_TRACKING_URI"):
        check_tracking(s, f"http://127.0.0.1:{port}")


def test_api_port_taken_was_a_48_line_traceback_now_a_config_error():
    from serving.serve import bind_or_explain

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(
            ConfigError, match=f"port {port} on 127.0.0.1 is already in use.*--port"
        ):
            bind_or_explain("127.0.0.1", port)
        # the demo names its own setting
        with pytest.raises(ConfigError, match="another port with --port or EVENTOPS_DEMO_PORT$"):
            bind_or_explain("127.0.0.1", port, choose="--port or EVENTOPS_DEMO_PORT")
    bind_or_explain("127.0.0.1", port).close()  # free again


def test_the_demo_and_the_api_default_to_different_ports():
    s = Settings(_env_file=None)
    assert s.demo_port != s.api_port


# --- local checks ---------------------------------------------------------------------------


def _ev(tenant: str = "acme", **kw) -> bytes:
    return orjson.dumps(
        {
            "tenant_id": tenant,
            "host": "h",
            "metric": "cpu",
            "value": 1,
            "ts_event": time.time(),
            **kw,
        }
    )


def test_check_locally_counts_what_normalize_would_dead_letter():
    from cli.tally import check_locally

    raws = [_ev(), b"{not json", _ev("ghost"), _ev(value="x"), _ev()]
    v = check_locally(Settings(), raws, frozenset({"acme"}))
    assert v.rejected == Counter({"bad_json": 1, "unknown_tenant": 1, "bad_type": 1})
    assert v.first[:2] == (1, "bad_json") and v.tenants_checked
    v = check_locally(Settings(), raws, None)  # tenants unknown: any tenant passes
    assert "unknown_tenant" not in v.rejected and not v.tenants_checked


def test_by_reason_orders_by_count():
    from cli.tally import by_reason

    assert by_reason(Counter({"b": 1, "a": 1, "c": 3})) == "c 3, a 1, b 1"


# --- main() ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "code", "needle"),
    [
        (["worker", "bogus"], 2, "unknown stages ['bogus']"),
        (
            ["send", "-f", "/nonexistent/missing.jsonl"],
            4,
            "file not found: /nonexistent/missing.jsonl",
        ),
        (["tenants", "create", ""], 2, "invalid tenant id ''"),
        (["send"], 2, "give either one EVENT"),
    ],
)
def test_main_prints_one_line_and_exits(monkeypatch, capsys, argv, code, needle):
    from cli import main as cli

    monkeypatch.setattr(sys, "argv", ["eventops", *argv])
    with pytest.raises(SystemExit) as ei:
        cli.main()
    assert ei.value.code == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("eventops: ") and needle in err[0]
