"""Schema-driven fuzzing of the OpenAPI with schemathesis: no server errors, responses conform.

Bounded for CI: a few examples per operation (``FUZZ_EXAMPLES``), the SSE streams excluded
(they never end; tests/integration/test_api_tenancy.py and test_api_sse_resume.py cover them).
Requests carry an admin key of a seeded tenant, so the positive paths reach the database.
"""

from __future__ import annotations

import uuid

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from pipeline import db
from pipeline.runner import Bus
from tests.integration.api_support import Api, hdr, make_key, seed

pytestmark = pytest.mark.integration
FUZZ_EXAMPLES = 12
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]


@pytest.fixture(scope="module")
def fuzz_api(base_settings, test_db):
    s = base_settings.model_copy(update={"pg_database": test_db})
    conn = db.connect(s, autocommit=True)
    tenant = f"tf{uuid.uuid4().hex[:8]}"
    db.create_tenant(conn, tenant)
    seed(s, conn, tenant, "FUZZ", hosts=("host-a", "host-b"))
    api = Api(s, bus=Bus())
    api.key = make_key(conn, tenant, "admin")
    yield api
    api.stop()
    conn.close()


def _operations():
    from serving.app import create_app

    spec = schemathesis.openapi.from_dict(create_app().openapi())  # no I/O: lifespan not run
    ops = [r.ok() for r in spec.get_all_operations()]
    return [op for op in ops if not op.path.endswith("/stream")]


OPERATIONS = _operations()


@pytest.mark.parametrize("op", OPERATIONS, ids=lambda op: f"{op.method.upper()} {op.path}")
def test_openapi_fuzz_no_server_errors_and_conforming_responses(op, fuzz_api):
    @given(case=op.as_strategy())
    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case):
        case.call_and_validate(base_url=fuzz_api.url, headers=hdr(fuzz_api.key), checks=CHECKS)

    run()
