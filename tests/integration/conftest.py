"""Fixtures over the real PostgreSQL and Kafka that `make test` starts (scripts/services.sh).

Every test session gets its own database (migrated from scratch); every test gets its own
topic names and consumer groups, so tests never see each other's records.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Consumer

from core.settings import REPO_ROOT, Settings
from pipeline import kafka as kq
from storage.connect import connect
from storage.migrate import migrate
from storage.tenants import create_tenant

pytestmark = pytest.mark.integration


def wait_for(
    cond: Callable[[], object], timeout: float = 30.0, interval: float = 0.1, what: str = ""
) -> object:
    """Poll ``cond`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or cond}")
        time.sleep(interval)


@functools.cache
def nab_dir() -> Path:
    """A NAB-layout directory of labelled synthetic series (``training.synthetic``), made once
    per test session: the tests need no dataset from outside the repository."""
    from training.synthetic import write_nab_like

    return write_nab_like(Path(tempfile.mkdtemp(prefix="eventops-nab-like-")))


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def test_db(base_settings: Settings) -> Iterator[str]:
    name = f"eventops_test_{uuid.uuid4().hex[:8]}"
    try:
        admin = connect(base_settings, autocommit=True)
    except Exception as e:  # pragma: no cover - a clear message instead of a skip
        pytest.fail(f"PostgreSQL not running ({e}); `make test` starts it")
    admin.execute(f'CREATE DATABASE "{name}"')
    s = base_settings.model_copy(update={"pg_database": name})
    with connect(s) as conn:
        migrate(conn)
    yield name
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture
def settings(base_settings: Settings, test_db: str, tmp_path: Path) -> Settings:
    """Settings with a private database, fresh topic names and a short batch wait."""
    sfx = uuid.uuid4().hex[:8]
    s = base_settings.model_copy(
        update={
            "pg_database": test_db,
            "topic_raw": f"t-{sfx}-raw",
            "topic_metric": f"t-{sfx}-metric",
            "topic_enriched": f"t-{sfx}-enriched",
            "topic_score": f"t-{sfx}-score",
            "topic_alert": f"t-{sfx}-alert",
            "topic_dlq": f"t-{sfx}-dlq",
            "topic_partitions": 3,
            "consumer_group_prefix": f"g-{sfx}",
            "batch_max_wait_ms": 100,
            "champion_poll_s": 0.0,  # tests of the batch model turn the champion watcher on
            "inventory_refresh_s": 0.5,
        }
    )
    kq.wait_for_broker(s, timeout=60)
    kq.create_topics(s)
    yield s
    kq.delete_topics(s, kq.all_topics(s))


@pytest.fixture(scope="session")
def mlflow_settings(base_settings: Settings, tmp_path_factory) -> Iterator[Settings]:
    """Settings of a scratch PostgreSQL-backed MLflow store (tests name their own models)."""
    from registry import scratch

    s = scratch.create_scratch_store(base_settings)
    s = s.model_copy(update={"mlflow_artifacts": tmp_path_factory.mktemp("mlruns")})
    yield s
    scratch.drop_scratch_store(s)


@pytest.fixture
def two_dbs(base_settings):
    """Names of two fresh, empty databases (migrated by the test), dropped afterwards."""
    names = [f"eventops_test_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    admin = connect(base_settings, autocommit=True)
    for name in names:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield names
    for name in names:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture
def conn(settings: Settings) -> Iterator[psycopg.Connection]:
    c = connect(settings, autocommit=True)
    yield c
    c.close()


@pytest.fixture
def tenant(conn) -> str:
    t = f"tn{uuid.uuid4().hex[:8]}"
    create_tenant(conn, t)
    return t


def settings_env(s: Settings) -> dict[str, str]:
    """The environment a subprocess needs to see the same settings."""
    env = dict(os.environ)
    for k, v in s.model_dump().items():
        if hasattr(v, "get_secret_value"):
            v = v.get_secret_value()
        if v is None:
            continue
        if k == "mlflow_tracking_uri_override":
            env["MLFLOW_TRACKING_URI"] = str(v)
            continue
        env[f"EVENTOPS_{k.upper()}"] = str(v)
    return env


class ThreadWorker:
    """A KafkaWorker running in a background thread of the test process."""

    def __init__(self, s: Settings, chain: str) -> None:
        from pipeline.kafka_worker import KafkaWorker

        self.worker = KafkaWorker(s, chain)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as e:  # noqa: BLE001 - reported by stop()
            self.error = e

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(timeout=30)
        if self.error:
            raise self.error


@pytest.fixture
def start_worker(settings: Settings):
    started: list[ThreadWorker] = []

    def start(
        chain: str = "normalize,enrich,detect,sink", s: Settings | None = None
    ) -> ThreadWorker:
        w = ThreadWorker(s or settings, chain)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


def spawn_worker(s: Settings, chain: str, log_path: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "worker", chain],
        env=settings_env(s),
        cwd=REPO_ROOT,
        stdout=open(log_path, "ab"),
        stderr=subprocess.STDOUT,
    )


def group_lag(s: Settings, chain: str, topic: str | None = None) -> int:
    """Records of ``topic`` (default: the raw topic) not yet committed by ``chain``'s consumer
    group."""
    from confluent_kafka import TopicPartition

    topic = topic or s.topic_raw
    c = Consumer(
        {
            "bootstrap.servers": s.kafka_bootstrap,
            "group.id": f"{s.consumer_group_prefix}-{chain.replace(',', '-')}",
        }
    )
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        committed = c.committed([TopicPartition(topic, p) for p in md.partitions], timeout=10)
        return sum(
            c.get_watermark_offsets(tp, timeout=10)[1] - max(tp.offset, 0) for tp in committed
        )
    finally:
        c.close()


def produce_sim(
    settings: Settings,
    tenant: str,
    hosts: int,
    ticks: int,
    seed: int = 11,
    anomaly_rate: float = 0.01,
):
    """Simulated events of ``hosts`` for ``ticks`` 10 s ticks ending now, produced to the raw topic
    keyed ``tenant|host``; returns (simulator, events produced)."""
    from pipeline.simulate import Simulator

    sim = Simulator(
        hosts=hosts,
        tenant=tenant,
        seed=seed,
        interval=10.0,
        start=time.time() - ticks * 10.0 - 120,
        anomaly_rate=anomaly_rate,
    )
    p = kq.producer(settings)
    n = 0
    for evs in sim.events(ticks=ticks):
        kq.produce_all(
            p, settings.topic_raw, evs, [f"{tenant}|{sim.names[i // 4]}" for i in range(len(evs))]
        )
        n += len(evs)
    kq.flush(p)
    return sim, n


def consume_all(s: Settings, topic: str, expect: int, timeout: float = 30.0) -> list:
    """Read ``expect`` records of ``topic`` from the beginning (fails on timeout)."""
    c = Consumer(
        {
            "bootstrap.servers": s.kafka_bootstrap,
            "group.id": kq.unique_group("test"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    c.subscribe([topic])
    got: list = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < expect and time.monotonic() < deadline:
            for m in c.consume(1000, 0.5):
                if not m.error():
                    got.append(m)
    finally:
        c.close()
    if len(got) < expect:
        pytest.fail(f"{topic}: got {len(got)} records, expected {expect}")
    return got


@pytest.fixture
def api_server(settings: Settings):
    """Start the API under uvicorn in a thread (``tests.integration.api_support.Api``)."""
    from tests.integration.api_support import Api

    servers: list = []

    def start(bus=None):
        srv = Api(settings, bus)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()


class SseClient:
    """Reads an SSE endpoint in a thread; ``events`` collects parsed (id, event, data) tuples."""

    def __init__(self, url: str, headers: dict | None = None) -> None:
        self.url, self.headers = url, headers or {}
        self.events: list[dict] = []
        self.error: Exception | None = None
        self.connected = threading.Event()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import httpx

        try:
            self._read()
        except httpx.HTTPError as e:  # the server went away (end of test): keep what was read
            self.error = e

    def _read(self) -> None:
        import httpx
        import orjson

        with (
            httpx.Client(timeout=httpx.Timeout(5, read=None)) as client,
            client.stream("GET", self.url, headers=self.headers) as r,
        ):
            self.status = r.status_code
            cur: dict = {}
            for line in r.iter_lines():
                if self._stop.is_set():
                    return
                if line.startswith(": connected"):
                    self.connected.set()
                elif line == "":
                    if "data" in cur:
                        cur["data"] = orjson.loads(cur["data"])
                        self.events.append(cur)
                    cur = {}
                elif ":" in line and not line.startswith(":"):
                    k, v = line.split(":", 1)
                    cur[k] = v.strip()

    def close(self) -> None:
        self._stop.set()
