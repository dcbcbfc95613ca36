"""Schemathesis over the whole OpenAPI, stateful links included: no server errors, full conformance.

The real CLI (``schemathesis run``) against the API under uvicorn (embedded mode, its own
PostgreSQL database, a seeded tenant), with every check (``--checks all``): not a server error,
status codes / content types / headers / response bodies as documented, schema-violating
requests rejected, schema-valid ones accepted, 405 with ``Allow`` for undocumented methods,
missing auth refused, and the stateful checks that follow the OpenAPI links (a deleted
inventory source stays deleted, a created one is found). Phases: coverage (boundary and
negative values of every parameter), fuzzing, stateful.

Bounded for ``make test`` (1-3 minutes): a fixed seed (reproducible; change it to explore),
``FUZZ_EXAMPLES`` per operation and ``STATEFUL_SCENARIOS`` link walks. The SSE streams are
excluded: they never end (tests/integration/test_api_tenancy.py and test_api_sse_resume.py
cover them). ``POST /ingest`` runs with an ``ingest`` key, everything else with an ``admin``
key. Configured exceptions: for ``POST /ingest`` a 413 counts as a rejection and as an
acceptable answer to a schema-valid body, because the byte limit of a request
(``EVENTOPS_MAX_REQUEST_BYTES``) is something an OpenAPI schema cannot state; for ``POST
/silences`` and ``POST /channels`` a 400 is an acceptable answer to a schema-valid body, for the
same reason (a silence that would end in the past, a cron expression croniter refuses, a regex
matcher that does not compile, a URL without a host).

By hand, with many more examples::

    FUZZ_EXAMPLES=500 STATEFUL_SCENARIOS=1500 FUZZ_SEED=7 .venv/bin/python -m pytest \\
        tests/integration/test_api_fuzz.py -q
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid

import pytest

from pipeline.embedded import Bus
from storage.connect import connect
from storage.tenants import create_tenant
from tests.integration.api_support import Api, make_key, seed

pytestmark = pytest.mark.integration
FUZZ_SEED = int(os.environ.get("FUZZ_SEED", "1"))
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "50"))
STATEFUL_SCENARIOS = int(os.environ.get("STATEFUL_SCENARIOS", "150"))
#: statuses that reject a request beside schemathesis' defaults (plus 413, see above)
CONFIG = """\
headers = {{ Authorization = "Bearer ${{FUZZ_ADMIN_KEY}}" }}

[phases.stateful]
generation.max-examples = {scenarios}
max-steps = 12

[[operations]]
include-path = "/ingest"
headers = {{ Authorization = "Bearer ${{FUZZ_INGEST_KEY}}" }}
checks.negative_data_rejection.expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, \
415, 422, 428, 429, "5xx"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", 401, 403, 404, 409, 413, \
429, "5xx"]
[[operations]]
include-path = "/silences"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", 400, 401, 403, 404, 409, \
429, "5xx"]

[[operations]]
include-path = "/channels"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", 400, 401, 403, 404, 409, \
429, "5xx"]
"""


@pytest.fixture(scope="module")
def fuzz_api(base_settings, test_db):
    s = base_settings.model_copy(update={"pg_database": test_db})
    conn = connect(s, autocommit=True)
    tenant = f"tf{uuid.uuid4().hex[:8]}"
    create_tenant(conn, tenant)
    seed(s, conn, tenant, "FUZZ", hosts=("host-a", "host-b"))
    api = Api(s, bus=Bus())
    api.keys = {
        "admin": make_key(conn, tenant, "admin"),
        "ingest": make_key(conn, tenant, "ingest"),
    }
    yield api
    api.stop()
    conn.close()


def test_schemathesis_whole_api_with_stateful_links_finds_nothing(fuzz_api, tmp_path):
    cfg = tmp_path / "schemathesis.toml"
    cfg.write_text(CONFIG.format(scenarios=STATEFUL_SCENARIOS))
    env = {
        **os.environ,
        "FUZZ_ADMIN_KEY": fuzz_api.keys["admin"],
        "FUZZ_INGEST_KEY": fuzz_api.keys["ingest"],
        "NO_COLOR": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(cfg),
        "run",
        f"{fuzz_api.url}/openapi.json",
        "--checks",
        "all",
        "--exclude-path-regex",
        "/stream$",
        "--phases",
        "coverage,fuzzing,stateful",
        "--seed",
        str(FUZZ_SEED),
        "--max-examples",
        str(FUZZ_EXAMPLES),
        "--workers",
        "1",
        "--no-color",
        "--generation-database",
        "none",
        "--request-timeout",
        "30",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800, cwd=tmp_path)
    text = out.stdout + out.stderr
    summary = text[text.rfind("=== SUMMARY") if "=== SUMMARY" in text else -4000 :]
    assert out.returncode == 0, "schemathesis found problems:\n" + (
        text[text.find("=== FAILURES") :][:20_000] if "=== FAILURES" in text else text[-20_000:]
    )
    assert (
        re.search(r"Tested:\s+(\d+)", summary)
        and int(re.search(r"Tested:\s+(\d+)", summary)[1]) >= 20
    ), summary
    # the stateful phase really walked links (an OpenAPI whose links broke would cover none)
    links = re.search(r"API Links:\s+(\d+) covered", text)
    assert links and int(links[1]) >= 10, text[-3000:]
