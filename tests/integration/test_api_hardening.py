"""Rate limit, request size limit, security headers, CORS allowlist, the dashboard at ``/``."""

from __future__ import annotations

import base64
import hashlib
import re
import uuid

import httpx
import pytest

from pipeline.embedded import Bus
from serving.config import ServingSettings
from storage.connect import connect
from storage.tenants import create_tenant
from tests.integration.api_support import Api, hdr, make_key

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def hard(base_settings, test_db):
    s = base_settings.model_copy(update={"pg_database": test_db})
    conn = connect(s, autocommit=True)
    tenant = f"th{uuid.uuid4().hex[:8]}"
    create_tenant(conn, tenant)
    api = Api(
        s,
        bus=Bus(),
        serving=ServingSettings(
            _env_file=None,
            rate_limit_rps=1,
            rate_limit_burst=3,
            max_request_bytes=2000,
            cors_origins="https://ops.example.com",
        ),
    )
    api.conn, api.tenant = conn, tenant
    yield api
    api.stop()
    conn.close()


def test_rate_limit_per_key_answers_429_with_retry_after(hard):
    key, other = make_key(hard.conn, hard.tenant), make_key(hard.conn, hard.tenant)
    codes = [httpx.get(hard.url + "/alerts", headers=hdr(key)).status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200] and 429 in codes[3:]
    r = httpx.get(hard.url + "/alerts", headers=hdr(key))
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1 and r.json()["detail"]
    assert httpx.get(hard.url + "/alerts", headers=hdr(other)).status_code == 200  # per key


def test_request_body_limit_is_413(hard):
    key = make_key(hard.conn, hard.tenant, "admin")
    big = {"tags": {f"k{i}": "v" * 50 for i in range(100)}}
    r = httpx.put(hard.url + "/inventory/h1", json=big, headers=hdr(key))
    assert r.status_code == 413 and r.json()["detail"]

    def chunks():  # no Content-Length: counted while streaming
        yield b'{"tags": {"a": "'
        for _ in range(50):
            yield b"x" * 100
        yield b'"}}'

    r = httpx.put(
        hard.url + "/inventory/h1",
        content=chunks(),
        headers={**hdr(key), "Content-Type": "application/json"},
    )
    assert r.status_code == 413


def test_security_headers_and_dashboard(hard):
    r = httpx.get(hard.url + "/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "EventOps" in r.text
    for h in (
        "x-content-type-options",
        "x-frame-options",
        "referrer-policy",
        "content-security-policy",
    ):
        assert h in r.headers, h
    assert "script-src 'self'" in r.headers["content-security-policy"]
    r = httpx.get(hard.url + "/healthz")
    assert (
        r.headers["x-content-type-options"] == "nosniff"
        and r.headers["cache-control"] == "no-store"
    )


def test_cors_allows_only_the_configured_origins(hard):
    pre = {
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }
    ok = httpx.options(hard.url + "/alerts", headers={"Origin": "https://ops.example.com", **pre})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "https://ops.example.com"
    bad = httpx.options(hard.url + "/alerts", headers={"Origin": "https://evil.example", **pre})
    assert "access-control-allow-origin" not in bad.headers


def test_cors_wildcard_is_refused():
    from core.errors import ConfigError

    with pytest.raises(ConfigError):
        ServingSettings(_env_file=None, cors_origins="*").cors_list()


def test_docs_are_served_from_this_server_with_a_strict_csp(hard):
    r = httpx.get(hard.url + "/docs")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    # every asset the page loads is one of ours (vendored Swagger UI): /docs works offline
    assets = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert assets and all(a.startswith("/vendor/swagger-ui/") for a in assets), assets
    assert "cdn" not in r.text.lower()
    for a in assets:
        got = httpx.get(hard.url + a)
        assert got.status_code == 200 and len(got.content) > 500, a
    csp = r.headers["content-security-policy"]
    # only the page's own inline script runs, named by its hash
    (script,) = re.findall(r"<script>(.*?)</script>", r.text, re.S)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp and "'unsafe-inline'" not in csp.split("style-src")[0]
    assert "default-src 'self'" in csp
    old = httpx.get(hard.url + "/redoc", follow_redirects=False)
    assert old.status_code == 308 and old.headers["location"] == "/docs"
    assert httpx.get(hard.url + "/openapi.json").status_code == 200
