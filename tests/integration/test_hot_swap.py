"""A running Kafka detect worker swaps in a new champion without a restart, losing nothing."""

from __future__ import annotations

import time
import uuid

import pytest

from pipeline import kafka as kq
from pipeline.simulate import Simulator
from registry.names import tenant_model
from storage.connect import count_rows
from tests.integration.conftest import nab_dir, wait_for

CHAIN = "normalize,enrich,detect,sink"


@pytest.fixture(scope="module")
def store(mlflow_settings):
    return mlflow_settings.model_copy(update={"model_name": f"swap-{uuid.uuid4().hex[:8]}"})


def test_detect_worker_swaps_champion_within_10s_without_losing_events(
    settings, conn, tenant, store, start_worker
):
    from registry.aliases import promote
    from registry.client import client
    from training import datasets
    from training.train import TrainConfig, train_and_register

    ds = datasets.from_csv(nab_dir() / "data" / "artificialWithAnomaly", nab_dir() / "windows.json")
    v1 = train_and_register(
        store, ds, TrainConfig(params={"n_estimators": 30}), promote=False, tenant=tenant
    ).version
    v2 = train_and_register(
        store, ds, TrainConfig(family="robust_z"), promote=False, tenant=tenant
    ).version
    c = client(store)
    name = tenant_model(store, tenant)
    promote(c, name, v1, reason="test: first champion")

    s = settings.model_copy(
        update={
            "pg_database": settings.pg_database,
            "mlflow_database": store.mlflow_database,
            "model_name": store.model_name,
            "champion_poll_s": 0.5,
            "window_s": 20.0,
            "allowed_lateness_s": 0.0,
        }
    )
    w = start_worker(CHAIN, s)
    assert w.worker.watcher.wait_for(v1, 30, tenant=tenant), w.worker.watcher.last_error

    sim = Simulator(hosts=5, tenant=tenant, seed=2, interval=10.0, start=time.time() - 3000)
    p = kq.producer(s)
    sent = 0

    def send(ticks: int) -> float:
        nonlocal sent
        last = 0.0
        for evs in sim.events(ticks=sim.tick + ticks):
            kq.produce_all(
                p, s.topic_raw, evs, [f"{tenant}|{sim.names[i // 4]}" for i in range(len(evs))]
            )
            sent += len(evs)
            last = sim.start + (sim.tick - 1) * sim.interval
        kq.flush(p)
        return last

    def versions_after(t: float) -> set:
        return {
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT model_version FROM scores"
                " WHERE tenant_id = %s AND window_start >= to_timestamp(%s)",
                (tenant, t),
            )
        }

    send(100)
    wait_for(
        lambda: count_rows(conn, "metrics", "tenant_id = %s", (tenant,)) == sent,
        60,
        what="first half",
    )
    assert versions_after(0) == {v1}

    t_alias = time.monotonic()
    promote(c, name, v2, reason="test: swap")
    assert w.worker.watcher.wait_for(v2, 10, tenant=tenant), (
        "the worker did not pick up the new champion within 10 s"
    )
    swap_s = time.monotonic() - t_alias
    boundary = sim.start + sim.tick * sim.interval  # windows from here on are scored after the swap
    send(100)
    wait_for(
        lambda: count_rows(conn, "metrics", "tenant_id = %s", (tenant,)) == sent,
        60,
        what="second half",
    )
    wait_for(lambda: versions_after(boundary + 40) == {v2}, 30, what="scores by the new champion")
    before = conn.execute(
        "SELECT DISTINCT model_version FROM scores"
        " WHERE tenant_id = %s AND window_end <= to_timestamp(%s)",
        (tenant, boundary - 20),
    ).fetchall()
    assert {r[0] for r in before} == {v1}
    total, distinct = conn.execute(
        "SELECT count(*), count(DISTINCT event_id) FROM metrics WHERE tenant_id = %s", (tenant,)
    ).fetchone()
    assert total == distinct == sent
    assert w.thread.is_alive() and w.error is None
    print(f"alias change -> swap in the running worker: {swap_s:.2f} s")

    # the API's /models view of the same registry: champion, its predecessor, the last decision
    from serving.registry import ModelStatus, _query

    st = ModelStatus(**_query(s, tenant))
    assert st.champion is not None and st.champion.version == v2
    assert st.champion.previous_champion == v1
    assert st.last_decision and st.last_decision.get("version") == v2


def test_a_starting_worker_scores_its_first_windows_with_the_champion(
    settings, conn, tenant, store, tmp_path
):
    """Input already waiting when the worker starts: it consumes only once the champion is
    loaded, so no window is scored without it (as none would be in an uninterrupted run)."""
    import signal

    from registry.aliases import promote
    from registry.client import client
    from tests.integration.conftest import produce_sim, spawn_worker
    from training import datasets
    from training.train import TrainConfig, train_and_register

    st = store.model_copy(update={"model_name": f"start-{uuid.uuid4().hex[:8]}"})
    ds = datasets.from_csv(nab_dir() / "data" / "artificialWithAnomaly", nab_dir() / "windows.json")
    v1 = train_and_register(
        st, ds, TrainConfig(params={"n_estimators": 30}), promote=False, tenant=tenant
    ).version
    promote(client(st), tenant_model(st, tenant), v1, reason="test: champion before the start")
    s = settings.model_copy(
        update={
            "mlflow_database": st.mlflow_database,
            "mlflow_artifacts": st.mlflow_artifacts,
            "model_name": st.model_name,
            "champion_poll_s": 0.5,
            "window_s": 20.0,
            "allowed_lateness_s": 0.0,
        }
    )
    _, sent = produce_sim(s, tenant, hosts=5, ticks=150, seed=4)

    log = tmp_path / "worker.log"
    w = spawn_worker(s, CHAIN, log)
    try:
        wait_for(
            lambda: (
                count_rows(conn, "metrics", "tenant_id = %s", (tenant,)) == sent
                or w.poll() is not None
            ),
            90,
            what="all rows",
        )
        assert w.poll() is None, log.read_text()[-3000:]
        # 150 ticks of 10 s = 75 windows of 20 s per series, all but the open last one closed
        wait_for(
            lambda: (
                count_rows(conn, "scores", "tenant_id = %s", (tenant,)) >= 5 * 4 * 74
                or w.poll() is not None
            ),
            60,
            what="scores",
        )
    finally:
        w.send_signal(signal.SIGTERM)
        w.wait(30)
    versions = {
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT model_version FROM scores WHERE tenant_id = %s", (tenant,)
        )
    }
    assert versions == {v1}, log.read_text()[-2000:]
