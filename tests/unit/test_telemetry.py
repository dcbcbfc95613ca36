"""The Prometheus metrics of core.telemetry: names and labels, multi-process exposition, the
route-template label of the request middleware."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from starlette.responses import PlainTextResponse
from starlette.staticfiles import StaticFiles

from core import telemetry
from core.settings import REPO_ROOT

#: the contract: name -> (type, labels); dashboards and the lead's ingest counters use them
CONTRACT = {
    "eventops_events_consumed_total": ("counter", ("runner",)),
    "eventops_events_stored_total": ("counter", ("runner",)),
    "eventops_events_dead_lettered_total": ("counter", ("runner", "reason")),
    "eventops_stage_batch_seconds": ("histogram", ("stage",)),
    "eventops_consumer_lag": ("gauge", ("topic", "partition")),
    "eventops_checkpoint_age_seconds": ("gauge", ("partition",)),
    "eventops_champion_version": ("gauge", ("tenant",)),
    "eventops_sse_clients": ("gauge", ()),
    "eventops_http_requests_total": ("counter", ("route", "method", "status")),
    "eventops_http_request_seconds": ("histogram", ("route",)),
    "eventops_ingest_points_total": ("counter", ("protocol", "outcome")),
    "eventops_build_info": ("gauge", ("version",)),
}


def _families(body: bytes) -> dict:
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def _value(fams: dict, family: str, sample: str, **labels) -> float | None:
    for s in fams[family].samples if family in fams else ():
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


def test_every_metric_has_its_contract_name_type_and_labels():
    defined = {
        m._name if m._type != "counter" else m._name + "_total": m
        for m in vars(telemetry).values()
        if hasattr(m, "_labelnames") and hasattr(m, "_type")
    }
    assert set(defined) == set(CONTRACT)
    for name, (kind, labels) in CONTRACT.items():
        assert defined[name]._type == kind, name
        assert tuple(defined[name]._labelnames) == labels, name


def test_stage_buckets_span_half_a_millisecond_to_ten_seconds():
    b = telemetry.LATENCY_BUCKETS
    assert b[0] == 0.0005 and b[-1] == 10.0 and list(b) == sorted(b)


def test_exposition_shows_counts_and_build_info():
    telemetry.count_events("embedded", consumed=5, stored=4, dead={"bad_json": 1})
    with telemetry.timed("normalize"):
        pass
    body, ctype = telemetry.exposition()
    assert ctype.startswith("text/plain; version=0.0.4")
    fams = _families(body)
    assert (
        _value(
            fams, "eventops_events_consumed", "eventops_events_consumed_total", runner="embedded"
        )
        >= 5
    )
    assert (
        _value(
            fams,
            "eventops_events_dead_lettered",
            "eventops_events_dead_lettered_total",
            runner="embedded",
            reason="bad_json",
        )
        >= 1
    )
    assert (
        _value(
            fams,
            "eventops_stage_batch_seconds",
            "eventops_stage_batch_seconds_count",
            stage="normalize",
        )
        >= 1
    )
    from core import __version__

    assert _value(fams, "eventops_build_info", "eventops_build_info", version=__version__) == 1


_CHILD = textwrap.dedent(
    """
    import sys
    from core import telemetry
    n = int(sys.argv[1])
    telemetry.count_events("kafka", consumed=n, stored=n - 1)
    for _ in range(n):
        telemetry.SSE_CLIENTS.inc()
    telemetry.CONSUMER_LAG.labels("raw", "0").set(10 * n)
    telemetry.HTTP_SECONDS.labels("/healthz").observe(0.002)
    """
)
_EXPOSE = (
    "import sys; from core import telemetry; sys.stdout.buffer.write(telemetry.exposition()[0])"
)


def test_multiprocess_exposition_merges_the_processes(tmp_path):
    env = {**os.environ, telemetry.MULTIPROC_ENV: str(tmp_path)}
    pids = []
    for n in (3, 4):
        p = subprocess.run(
            [sys.executable, "-c", _CHILD + "\nimport os; print(os.getpid())", str(n)],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        pids.append(int(p.stdout.strip()))

    def expose() -> dict:
        out = subprocess.run(
            [sys.executable, "-c", _EXPOSE],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            timeout=60,
            check=True,
        )
        return _families(out.stdout)

    fams = expose()
    assert (
        _value(fams, "eventops_events_consumed", "eventops_events_consumed_total", runner="kafka")
        == 7
    )
    assert (
        _value(fams, "eventops_events_stored", "eventops_events_stored_total", runner="kafka") == 5
    )
    assert (
        _value(
            fams,
            "eventops_http_request_seconds",
            "eventops_http_request_seconds_count",
            route="/healthz",
        )
        == 2
    )
    assert _value(fams, "eventops_sse_clients", "eventops_sse_clients") == 7  # livesum
    assert (
        _value(fams, "eventops_consumer_lag", "eventops_consumer_lag", topic="raw", partition="0")
        == 40
    )  # the most recent writer
    # a process marked dead leaves the live gauges; counters keep what it counted
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pids[1], str(tmp_path))
    fams = expose()
    assert _value(fams, "eventops_sse_clients", "eventops_sse_clients") == 3
    assert (
        _value(fams, "eventops_events_consumed", "eventops_events_consumed_total", runner="kafka")
        == 7
    )


def _app() -> FastAPI:
    from serving.prometheus import RequestMetrics

    app = FastAPI()

    @app.get("/series/{host}/{metric}/scores")
    async def scores(host: str, metric: str) -> dict:
        return {"host": host}

    @app.get("/boom")
    async def boom() -> PlainTextResponse:
        raise RuntimeError("boom")

    app.mount("/", StaticFiles(directory=REPO_ROOT / "serving" / "static", html=True))
    app.add_middleware(RequestMetrics)
    return app


def _call(*requests: tuple[str, str]) -> list[int]:
    """Answer ``(method, path)`` requests with the app in process (no server, no lifespan)."""

    async def go() -> list[int]:
        transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return [(await c.request(m, u)).status_code for m, u in requests]

    return asyncio.run(go())


def _requests(route: str, method: str = "GET", status: str = "200") -> float:
    fams = _families(telemetry.exposition()[0])
    return (
        _value(
            fams,
            "eventops_http_requests",
            "eventops_http_requests_total",
            route=route,
            method=method,
            status=status,
        )
        or 0.0
    )


def test_request_metrics_label_the_route_template_never_the_raw_path():
    tpl = "/series/{host}/{metric}/scores"
    before, other = _requests(tpl), _requests("other", status="404")
    got = _call(
        *[("GET", f"/series/{h}/cpu/scores?key=x") for h in ("h1", "h2", "h3")],
        ("GET", "/no/such/path"),
        ("GET", "/boom"),
    )
    assert got == [200, 200, 200, 404, 500]
    assert _requests(tpl) == before + 3
    assert _requests("other", status="404") == other + 1
    assert _requests("/boom", status="500") >= 1
    body = telemetry.exposition()[0].decode()
    assert "/series/h1" not in body and "/no/such/path" not in body
    assert 'eventops_http_request_seconds_count{route="/series/{host}/{metric}/scores"}' in body


@pytest.mark.parametrize("method", ["BREW"])
def test_request_metrics_bound_the_method_label(method):
    _call((method, "/series/a/b/scores"))
    assert 'method="BREW"' not in telemetry.exposition()[0].decode()


def _gauge(name: str, **labels) -> float | None:
    fams = _families(telemetry.exposition()[0])
    return _value(fams, name, name, **labels)


def test_champion_version_is_the_model_detect_picked_up_per_tenant():
    import numpy as np

    from core.settings import REPO_ROOT as ROOT
    from models.rules import RulesFile
    from pipeline.simulate import Simulator
    from pipeline.stages.detect.stage import DetectStage
    from pipeline.stages.normalize import NormalizeConfig, Normalizer

    class Zero:
        def score_many(self, X):
            return np.zeros(len(X["series"]))

    tenant = f"tc{os.getpid()}"
    table: dict = {tenant: ("3", Zero())}
    det = DetectStage(
        RulesFile(ROOT / "pipeline" / "rules.default.toml").rules, model=lambda: table
    )
    sim = Simulator(hosts=1, tenant=tenant, seed=1, interval=10.0, start=time.time() - 1200)
    norm = Normalizer(NormalizeConfig())
    ticks = list(sim.events(ticks=60))

    def feed(part: list) -> None:
        raws = [r for evs in part for r in evs]
        batch, dead = norm(raws, "raw", [0] * len(raws), range(len(raws)))
        assert not dead
        det(batch)

    feed(ticks[:30])
    assert _gauge("eventops_champion_version", tenant=tenant) == 3
    table.clear()  # the champion archived: the default ensemble alone
    feed(ticks[30:])
    assert _gauge("eventops_champion_version", tenant=tenant) == 0
