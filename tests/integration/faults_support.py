"""Helpers of the fault suite: a private PostgreSQL + Kafka, a steady producer, a readiness log.

:class:`PrivateServices` runs ``scripts/services.sh`` with its own state directory and free
ports, so stopping its PostgreSQL or restarting its Kafka cannot disturb any other test (or
another session sharing the machine). The broker jars are hard-linked from the session's state
directory when they are there (same pom), otherwise Maven resolves them from its local cache.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition

from core.settings import REPO_ROOT, Settings
from pipeline import kafka as kq
from storage.connect import connect
from storage.migrate import migrate

SERVICES = REPO_ROOT / "scripts" / "services.sh"

# the test's own Kafka clients say nothing while their broker is deliberately away
_quiet = logging.getLogger("tests.faults.kafka")
_quiet.setLevel(logging.CRITICAL)
_quiet.propagate = False


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 right now."""
    socks = []
    try:
        for _ in range(n):
            sk = socket.socket()
            sk.bind(("127.0.0.1", 0))
            socks.append(sk)
        return [sk.getsockname()[1] for sk in socks]
    finally:
        for sk in socks:
            sk.close()


class PrivateServices:
    """PostgreSQL + Kafka (+ Alertmanager) of :mod:`scripts/services.sh` under ``root`` on free
    ports."""

    def __init__(self, root: Path, base: Settings) -> None:
        self.root = root
        self.pg_port, self.kafka_port, self.controller_port, self.am_port, prom_port = free_ports(5)
        self.env = {
            **os.environ,
            "EVENTOPS_STATE_DIR": str(root),
            "EVENTOPS_PG_PORT": str(self.pg_port),
            "EVENTOPS_KAFKA_PORT": str(self.kafka_port),
            "EVENTOPS_KAFKA_CONTROLLER_PORT": str(self.controller_port),
            "EVENTOPS_ALERTMANAGER_PORT": str(self.am_port),
            "EVENTOPS_PROMETHEUS_PORT": str(prom_port),
            "EVENTOPS_KAFKA_HEAP": "512m",
            "PYTHON": sys.executable,
        }
        self.settings = base.model_copy(
            update={
                "pg_port": self.pg_port,
                "pg_database": "eventops",
                "kafka_bootstrap": f"127.0.0.1:{self.kafka_port}",
                "alertmanager_url": f"http://127.0.0.1:{self.am_port}",
                "state_dir": root,
            }
        )
        self._link_jars(base.state_dir)

    def _link_jars(self, state_dir: Path) -> None:
        src = state_dir / "kafka"
        pom = REPO_ROOT / "scripts" / "kafka" / "pom.xml"
        want = hashlib.sha256(pom.read_bytes()).hexdigest()
        try:
            have = (src / "libs.sha256").read_text().strip()
        except OSError:
            return
        if have != want or not (src / "libs").is_dir():
            return
        dst = self.root / "kafka"
        dst.mkdir(parents=True, exist_ok=True)

        def link(a: str, b: str) -> None:
            try:
                os.link(a, b)
            except OSError:
                shutil.copy2(a, b)

        shutil.copytree(src / "libs", dst / "libs", copy_function=link)
        (dst / "libs.sha256").write_text(want + "\n")

    def run(self, cmd: str, timeout: float = 240) -> float:
        """``services.sh <cmd>``; returns the monotonic time it completed."""
        r = subprocess.run(
            [str(SERVICES), cmd], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if r.returncode != 0:
            raise RuntimeError(f"services.sh {cmd} failed ({r.returncode}):\n{r.stderr[-3000:]}")
        return time.monotonic()

    def up(self) -> None:
        self.run("up", timeout=400)
        with connect(self.settings) as conn:
            migrate(conn)
        kq.wait_for_broker(self.settings, timeout=60)

    def reset(self) -> None:
        try:
            self.run("reset", timeout=120)
        except Exception:  # noqa: BLE001 - best effort at teardown; `down` at least
            subprocess.run([str(SERVICES), "down"], env=self.env, timeout=120)


def good_event(tenant: str, host: str, metric: str, seq: int, ts: float) -> tuple[str, bytes]:
    """A valid agent event with a deterministic id; a cpu_load spike every 97 ticks."""
    if metric == "cpu_load":
        value = 40 + 20 * math.sin(seq / 10) + (55 if seq % 97 == 13 else 0)
    else:
        value = 60 + 10 * math.cos(seq / 7)
    eid = f"{tenant}-{host}-{metric}-{seq}"
    return eid, orjson.dumps(
        {
            "event_id": eid,
            "tenant_id": tenant,
            "host": host,
            "metric": metric,
            "value": round(value, 3),
            "ts_event": ts,
            "unit": "percent",
        }
    )


@dataclass
class Delivered:
    good: dict[str, set[str]] = field(default_factory=dict)  # tenant -> acknowledged event ids
    poison: set[int] = field(default_factory=set)  # indexes of acknowledged poison cases
    failed: list[str] = field(default_factory=list)


class SteadyProducer(threading.Thread):
    """Produces every ``tick_s`` one event per (tenant, host, metric), event time = now, and
    interleaves queued poison inputs with them (``poison_per_tick`` after each tick's events).

    Records wait in the producer while Kafka is away (``message.timeout.ms=0``); only what the
    broker acknowledged counts as sent (:attr:`delivered`).
    """

    METRICS = ("cpu_load", "mem_used")

    def __init__(
        self,
        s: Settings,
        tenants: Sequence[str],
        hosts: int = 4,
        tick_s: float = 0.1,
        poison_per_tick: int = 10,
    ) -> None:
        super().__init__(daemon=True, name="steady-producer")
        self.s, self.tenants, self.hosts, self.tick_s = s, list(tenants), hosts, tick_s
        self.poison_per_tick = poison_per_tick
        self.p = kq.producer(
            s, logger=_quiet, **{"message.timeout.ms": 0, "message.max.bytes": 4_000_000}
        )
        self.delivered = Delivered(good={t: set() for t in tenants})
        self._poison: list[tuple[int, bytes, str]] = []
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self.ticks = 0
        self.error: BaseException | None = None

    def inject(self, raws: Sequence[bytes], key: str) -> None:
        with self._lock:
            self._poison += [(i, raw, key) for i, raw in enumerate(raws)]

    @property
    def poison_pending(self) -> int:
        with self._lock:
            return len(self._poison)

    def _ack(self, tenant: str | None, ident):
        def cb(err, msg) -> None:
            if err is not None:
                self.delivered.failed.append(f"{tenant or 'poison'} {ident}: {err}")
            elif tenant is None:
                self.delivered.poison.add(ident)
            else:
                self.delivered.good[tenant].add(ident)

        return cb

    def run(self) -> None:
        try:
            nxt = time.monotonic()
            while not self._halt.is_set():
                ts = time.time()
                for t in self.tenants:
                    for h in range(self.hosts):
                        host = f"host-{h}"
                        for m in self.METRICS:
                            eid, raw = good_event(t, host, m, self.ticks, ts)
                            self._produce(raw, f"{t}|{host}", self._ack(t, eid))
                with self._lock:
                    items = self._poison[: self.poison_per_tick]
                    del self._poison[: self.poison_per_tick]
                for i, raw, key in items:
                    self._produce(raw, key, self._ack(None, i))
                self.ticks += 1
                self.p.poll(0)
                nxt += self.tick_s
                self._halt.wait(max(0.0, nxt - time.monotonic()))  # the producer's pace
        except BaseException as e:  # noqa: BLE001 - reported by stop()
            self.error = e

    def _produce(self, raw: bytes, key: str, cb) -> None:
        while True:
            try:
                self.p.produce(self.s.topic_raw, raw, key, on_delivery=cb)
                return
            except BufferError:
                self.p.poll(0.05)

    def stop(self, timeout: float = 120) -> None:
        self._halt.set()
        self.join(timeout=30)
        left = self.p.flush(timeout)
        if self.error:
            raise self.error
        if left:
            raise AssertionError(f"{left} produced records never delivered")


class Readiness(threading.Thread):
    """Polls a worker's ``/readyz`` and keeps every change: ``(monotonic time, status, checks)``.

    ``down`` is recorded while nothing answers (the worker is being restarted)."""

    def __init__(self, port: int, every_s: float = 0.2) -> None:
        super().__init__(daemon=True, name="readiness")
        self.url = f"http://127.0.0.1:{port}/readyz"
        self.every_s = every_s
        self.changes: list[tuple[float, str, dict]] = []
        self._halt = threading.Event()

    def _get(self) -> tuple[str, dict]:
        gone = (
            OSError,
            ValueError,
            http.client.HTTPException,
        )  # (IncompleteRead: killed mid-answer)
        try:
            with urllib.request.urlopen(self.url, timeout=1) as r:
                body = orjson.loads(r.read())
        except urllib.error.HTTPError as e:
            try:
                body = orjson.loads(e.read())
            except gone:
                return "down", {}
        except gone:
            return "down", {}
        return body["status"], body.get("checks", {})

    def run(self) -> None:
        while not self._halt.is_set():
            status, checks = self._get()
            if not self.changes or self.changes[-1][1] != status or self.changes[-1][2] != checks:
                self.changes.append((time.monotonic(), status, checks))
            self._halt.wait(self.every_s)

    @property
    def status(self) -> str:
        return self.changes[-1][1] if self.changes else "down"

    def first(self, status: str, after: float, service: str | None = None) -> float | None:
        """Monotonic time of the first change to ``status`` after ``after`` (with ``service``
        degraded, when given)."""
        for t, st, checks in self.changes:
            if (
                t >= after
                and st == status
                and (service is None or str(checks.get(service, "")).startswith("degraded"))
            ):
                return t
        return None

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def read_topic(s: Settings, topic: str, timeout: float = 60) -> list:
    """Every record of ``topic`` from the beginning up to its current end."""
    c = Consumer(
        {
            "bootstrap.servers": s.kafka_bootstrap,
            "group.id": kq.unique_group("faults"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.max.bytes": 52_428_800,
        }
    )
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        ends = {}
        for p in md.partitions:
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if hi > lo:
                ends[p] = hi
        c.assign([TopicPartition(topic, p, 0) for p in ends])
        got: list = []
        done: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(done) < len(ends):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{topic}: read {len(got)} records, partitions {sorted(done)} "
                    f"of {sorted(ends)} at their end after {timeout}s"
                )
            for m in c.consume(1000, 0.5):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        done.add(m.partition())
                    continue
                got.append(m)
                if m.offset() + 1 >= ends[m.partition()]:
                    done.add(m.partition())
        return got
    finally:
        c.close()


def spawn(s: Settings, chain: str, log_path: Path, env: dict[str, str]) -> subprocess.Popen:
    """``eventops worker <chain>`` as a subprocess, as compose would run it."""
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "worker", chain],
        env=env,
        cwd=REPO_ROOT,
        stdout=open(log_path, "ab"),
        stderr=subprocess.STDOUT,
    )
