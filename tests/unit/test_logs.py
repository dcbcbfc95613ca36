"""Log lines: JSON format, and no API key in any line (the SSE ``?key=`` of the access log)."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import textwrap
import time

import httpx
import pytest

from core.logs import JsonFormatter, RedactSecrets, redact
from core.settings import REPO_ROOT
from serving.serve import log_config

SECRET = "eo_s3cr3t_VALUE"


def _access_record(path: str) -> logging.LogRecord:
    # what uvicorn's h11/httptools protocols log for every request
    return logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:50000", "GET", path, "1.1", 200),
        None,
    )


@pytest.mark.parametrize("param", ["key", "api_key", "token", "access_token", "KEY"])
def test_secret_query_parameters_are_redacted(param):
    out = redact(f"/alerts/stream?tenant=t1&{param}={SECRET}&last_id=3")
    assert SECRET not in out
    assert f"{param}=REDACTED" in out and "tenant=t1" in out and "last_id=3" in out
    assert redact("/keys?monkey=1&tokens=2") == "/keys?monkey=1&tokens=2"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_access_log_lines_carry_no_key_in_either_format(fmt):
    """The handlers of the uvicorn log config, fed the records uvicorn makes, captured."""
    import io

    cfg = log_config(fmt)
    lines = []
    for name in ("access", "default"):
        fconf = dict(cfg["formatters"][name])
        factory = fconf.pop("()")
        mod, _, cls = factory.rpartition(".")
        formatter = getattr(__import__(mod, fromlist=[cls]), cls)(**fconf)
        buf = io.StringIO()
        handler = logging.StreamHandler(buf)
        handler.setFormatter(formatter)
        assert cfg["handlers"][name]["filters"] == ["redact"]
        handler.addFilter(RedactSecrets())
        rec = (
            _access_record(f"/alerts/stream?key={SECRET}")
            if name == "access"
            else logging.LogRecord(
                "uvicorn.error",
                logging.WARNING,
                __file__,
                1,
                "bad request to %s",
                (f"/series/h/m/scores/stream?token={SECRET}",),
                None,
            )
        )
        handler.handle(rec)
        lines.append(buf.getvalue())
    for line in lines:
        assert SECRET not in line and "REDACTED" in line
    if fmt == "json":
        obj = json.loads(lines[0])
        assert obj["logger"] == "uvicorn.access" and obj["level"] == "INFO"
        assert obj["http"]["path"] == "/alerts/stream?key=REDACTED"
        assert obj["http"]["status"] == 200 and obj["ts"].endswith("Z")


def test_json_formatter_writes_one_object_per_line_with_the_exception():
    try:
        raise ValueError("no")
    except ValueError:
        rec = logging.LogRecord(
            "eventops", logging.ERROR, __file__, 1, "failed %d", (3,), sys.exc_info()
        )
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["msg"] == "failed 3" and obj["level"] == "ERROR" and obj["logger"] == "eventops"
    assert "ValueError: no" in obj["exc"]
    assert set(obj) == {"ts", "level", "logger", "msg", "exc"}


_SERVER = textwrap.dedent(
    """
    import sys, uvicorn
    from fastapi import FastAPI
    from serving.serve import log_config
    app = FastAPI()

    @app.get("/alerts/stream")
    async def stream(key: str = "") -> dict:
        return {"ok": True}

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_config=log_config(sys.argv[1]))
    """
)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_real_uvicorn_access_log_has_no_key(fmt):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    p = subprocess.Popen(
        [sys.executable, "-c", _SERVER, fmt, str(port)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/alerts/stream?key={SECRET}&x=1", timeout=2)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or p.poll() is not None:
                    pytest.fail("the server did not start")
                time.sleep(0.1)
        assert r.status_code == 200
    finally:
        p.terminate()
        out, err = p.communicate(timeout=30)
    access = [ln for ln in out.splitlines() if "/alerts/stream" in ln]
    assert len(access) == 1, (out, err)
    assert SECRET not in out + err
    assert "key=REDACTED&x=1" in access[0]
    if fmt == "json":
        assert json.loads(access[0])["http"]["method"] == "GET"
        assert all(json.loads(ln)["logger"].startswith("uvicorn") for ln in err.splitlines() if ln)


def test_cli_json_logs(tmp_path):
    """``eventops --log-format json``: the CLI's root handler writes JSON lines, redacted."""
    code = textwrap.dedent(
        f"""
        import logging
        from cli.main import _setup_logging
        _setup_logging("INFO", "json")
        logging.getLogger("eventops.test").info("GET /x?api_key={SECRET}")
        try:
            1 / 0
        except ZeroDivisionError:
            logging.getLogger("eventops.test").exception("boom")
        """
    )
    p = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = [json.loads(ln) for ln in p.stderr.splitlines()]
    assert [ln["msg"] for ln in lines] == ["GET /x?api_key=REDACTED", "boom"]
    assert "ZeroDivisionError" in lines[1]["exc"]
