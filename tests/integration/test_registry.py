"""Model lifecycle on the real Postgres-backed MLflow store.

One scratch MLflow database per session (``CREATE DATABASE … TEMPLATE`` of a migrated template,
~0.1 s) and a temporary artifact root; nothing touches the `mlflow` database of the stack.
"""

from __future__ import annotations

import json
import time
import uuid

import numpy as np
import pytest

from core.settings import Settings
from registry.names import tenant_model
from tests.integration.conftest import nab_dir, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def labelled():
    """6 labelled NAB series (5-min samples, 30-min windows) + 3 injected spikes per series."""
    from training import datasets

    ds = datasets.from_csv(nab_dir() / "data" / "artificialWithAnomaly", nab_dir() / "windows.json")
    return datasets.inject_anomalies(ds, per_series=3, seed=0, kinds=("spike",))


def _own_model(s: Settings) -> Settings:
    return s.model_copy(update={"model_name": f"test-{uuid.uuid4().hex[:8]}"})


def test_lifecycle_champion_promotion_rejection_rollback(mlflow_settings, labelled):
    from registry.aliases import alias_version, rollback
    from registry.client import client
    from registry.status import model_status
    from registry.tags import CHALLENGER, CHAMPION
    from training.promotion import PromotionPolicy
    from training.train import TrainConfig, train_and_register

    s = _own_model(mlflow_settings)
    c = client(s)
    policy = PromotionPolicy(margin=1.0)
    name = tenant_model(s, "t")

    # v1: first model that passes the guardrails becomes champion
    r1 = train_and_register(s, labelled, TrainConfig(family="robust_z"), policy, tenant="t")
    assert r1.decision.promoted, r1.decision.reason
    assert r1.decision.reason.startswith("first model")
    assert alias_version(c, name, CHAMPION) == r1.version

    # v2: better on the same labelled set by more than the margin -> promoted
    r2 = train_and_register(
        s, labelled, TrainConfig(params={"n_estimators": 50}), policy, tenant="t"
    )
    assert r2.decision.promoted, r2.decision.reason
    assert r2.metrics["nab_standard"] >= r1.metrics["nab_standard"] + policy.margin
    assert r2.decision.champion_version == r1.version
    assert alias_version(c, name, CHAMPION) == r2.version
    t2 = c.get_model_version(name, r2.version).tags
    assert t2["eventops.decision"] == "promoted"
    assert t2["eventops.previous_champion"] == r1.version
    # the champion was re-evaluated on the same set: same metrics as when it was trained
    assert json.loads(t2["eventops.champion_metrics"])["nab_standard"] == pytest.approx(
        r1.metrics["nab_standard"]
    )

    # v3: worse -> rejected with a reason tag, champion unchanged, becomes the challenger
    r3 = train_and_register(
        s, labelled, TrainConfig(params={"n_estimators": 2, "max_samples": 4}), policy, tenant="t"
    )
    assert not r3.decision.promoted
    t3 = c.get_model_version(name, r3.version).tags
    assert t3["eventops.decision"] == "rejected"
    assert t3["eventops.reason"].startswith("not better by margin"), t3["eventops.reason"]
    assert t3["eventops.compared_with"] == r2.version
    assert json.loads(t3["eventops.metrics"])["nab_standard"] < r2.metrics["nab_standard"]
    assert alias_version(c, name, CHAMPION) == r2.version
    assert alias_version(c, name, CHALLENGER) == r3.version

    st = model_status(s, "t")
    assert st["champion"]["version"] == r2.version
    assert st["challenger"]["version"] == r3.version
    assert st["last_decision"]["action"] == "rejected"
    assert st["champion"]["metrics"]["nab_standard"] == r2.metrics["nab_standard"]
    assert st["versions"] == 3

    # rollback restores the previous champion
    assert rollback(c, name) == (r2.version, r1.version)
    assert alias_version(c, name, CHAMPION) == r1.version
    assert c.get_model_version(name, r2.version).tags["eventops.decision"] == "rolled_back"
    assert model_status(s, "t")["last_decision"]["action"] == "rollback"
    with pytest.raises(ValueError, match="first champion recorded"):
        rollback(c, name)  # v1 was the first champion


def test_guardrail_rejects_first_model(mlflow_settings, labelled):
    from registry.aliases import alias_version
    from registry.client import client
    from registry.tags import CHAMPION
    from training.promotion import PromotionPolicy
    from training.train import TrainConfig, train_and_register

    s = _own_model(mlflow_settings)
    policy = PromotionPolicy(max_alerts_per_series_day=1e-6)
    r = train_and_register(s, labelled, TrainConfig(family="robust_z"), policy)
    assert not r.decision.promoted and not r.decision.challenger
    assert r.decision.reason.startswith("guardrail: alerts_per_series_day")
    assert alias_version(client(s), s.model_name, CHAMPION) is None


def test_logged_model_round_trip(mlflow_settings, labelled):
    """Signature, input example, params and the skops model load back as a BatchModel."""
    from mlflow.models import Model

    from registry.client import client
    from registry.loading import load_version
    from training.train import TrainConfig, fit, log_and_register

    s = _own_model(mlflow_settings)
    cfg = TrainConfig(params={"n_estimators": 20})
    local = fit(labelled, cfg)
    version, run_id = log_and_register(s, local, cfg, labelled, {"nab_standard": 1.0})
    c = client(s)
    run = c.get_run(run_id)
    assert run.data.params["family"] == "isolation_forest"
    assert run.data.metrics["nab_standard"] == 1.0
    loaded = load_version(c, s.model_name, version)
    assert loaded.version == version and loaded.features == cfg.features
    X = labelled.take(np.arange(500))
    np.testing.assert_allclose(loaded.score_many(X), local.score_many(X))
    import mlflow.artifacts

    path = mlflow.artifacts.download_artifacts(
        c.get_model_version_download_uri(s.model_name, version)
    )
    m = Model.load(path)
    assert m.signature.inputs.input_names() == list(cfg.features)
    assert m.saved_input_example_info is not None
    assert str(path).startswith(str(s.mlflow_artifacts))  # explicit artifact location


def test_champion_watcher_picks_up_alias_change(mlflow_settings, labelled):
    from registry.aliases import promote
    from registry.client import client
    from registry.watcher import ChampionWatcher, measure_swap_delay
    from training.train import TrainConfig, fit, log_and_register

    s = _own_model(mlflow_settings)
    c = client(s)
    cfg = TrainConfig(family="robust_z")
    m = fit(labelled, cfg)
    v1, _ = log_and_register(s, m, cfg, labelled)
    v2, _ = log_and_register(s, m, cfg, labelled)
    w = ChampionWatcher(s, poll_s=2.0).start()
    try:
        assert w.current() == (None, None)
        wait_for(lambda: w.checks >= 1, 30, what="first alias check")
        assert w.current() == (None, None) and w.last_error is None  # no champion yet
        promote(c, s.model_name, v1)
        assert w.wait_for(v1, timeout=10), w.last_error
        version, model = w.current()
        assert version == v1 and model.version == v1
        assert model.score_many(labelled.take(np.arange(10))).shape == (10,)
        delay = measure_swap_delay(w, c, v2, timeout=10)
        assert delay < 10
        assert w.current()[0] == v2
        assert w.swaps[-1].delay_s is not None and w.swaps[-1].delay_s < 10
        c.delete_registered_model_alias(s.model_name, "champion")
        w.poke()
        assert w.wait_for(None, timeout=10)
    finally:
        w.stop()


def test_dataset_from_postgres_features_and_feedback(base_settings, test_db):
    """features rows + feedback labels joined through alerts (tenant/host/metric/time)."""
    from storage.connect import connect
    from training.datasets import from_postgres, inject_anomalies

    s = base_settings.model_copy(update={"pg_database": test_db})
    tenant = f"tr{uuid.uuid4().hex[:8]}"
    t0 = 1_700_000_000.0
    rng = np.random.default_rng(0)
    with connect(s) as conn:
        for host in ("h1", "h2"):
            rows = []
            for k in range(200):
                m = 50 + rng.normal()
                rows.append(
                    (
                        tenant,
                        host,
                        "cpu",
                        t0 + 60 * k,
                        t0 + 60 * (k + 1),
                        6,
                        m,
                        1.0,
                        m - 2,
                        m + 2,
                        m,
                        0.0,
                        rng.normal(),
                        0.0,
                    )
                )
            conn.cursor().executemany(
                "INSERT INTO features VALUES (%s,%s,%s,to_timestamp(%s),to_timestamp(%s),"
                "%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                rows,
            )
        for aid, host, k, label in (
            ("a1", "h1", 150, "false_positive"),
            ("a2", "h2", 120, "true_positive"),
            ("a1", "h1", 150, "true_positive"),
        ):  # a1 corrected to TP
            conn.execute(
                "INSERT INTO alerts (alert_id, tenant_id, host, metric, value, severity, ts_event,"
                " opened_at, updated_at) VALUES (%s,%s,%s,'cpu',1,'warning',to_timestamp(%s),"
                " to_timestamp(%s), now()) ON CONFLICT (alert_id) DO NOTHING",
                (f"{tenant}-{aid}", tenant, host, t0 + 60 * k, t0 + 60 * k),
            )
            conn.execute(
                "INSERT INTO feedback (tenant_id, alert_id, label) VALUES (%s,%s,%s)",
                (tenant, f"{tenant}-{aid}", label),
            )
        conn.commit()
    ds = from_postgres(s, tenant=tenant, label_pad_s=120)
    assert ds.names == [f"{tenant}/h1/cpu", f"{tenant}/h2/cpu"]
    assert len(ds) == 400
    assert ds.labels == {
        0: [(t0 + 60 * 150 - 120, t0 + 60 * 150 + 120)],
        1: [(t0 + 60 * 120 - 120, t0 + 60 * 120 + 120)],
    }
    assert ds.window_s == {0: 60.0, 1: 60.0}
    assert 0 < ds.is_anomalous().sum() <= 10
    inj = inject_anomalies(ds, per_series=2, seed=3)
    assert sum(map(len, inj.labels.values())) == 2 + 4
    assert not np.array_equal(inj.X["max"], ds.X["max"]) or not np.array_equal(
        inj.X["count"], ds.X["count"]
    )


def test_cli_models_commands(mlflow_settings, labelled, tmp_path):
    from typer.testing import CliRunner

    from cli.main import app
    from registry.client import client
    from training.train import TrainConfig, fit, log_and_register

    s = _own_model(mlflow_settings)
    cfg = TrainConfig(family="robust_z")
    m = fit(labelled, cfg)
    v1, _ = log_and_register(s, m, cfg, labelled, tenant="t")
    v2, _ = log_and_register(s, m, cfg, labelled, tenant="t")
    env = {
        "EVENTOPS_MLFLOW_DATABASE": s.mlflow_database,
        "EVENTOPS_MODEL_NAME": s.model_name,
        "EVENTOPS_MLFLOW_ARTIFACTS": str(s.mlflow_artifacts),
        "MLFLOW_TRACKING_URI": "",
    }
    run = CliRunner().invoke
    r = run(app, ["models", "promote", v1, "--tenant", "t"], env=env)
    assert r.exit_code == 0, r.output
    r = run(app, ["models", "promote", v2, "--tenant", "t"], env=env)
    assert f"champion {v1} -> {v2}" in r.output
    r = run(app, ["models", "list", "--tenant", "t"], env=env)
    assert r.exit_code == 0 and f"v{v2}" in r.output and "champion" in r.output
    r = run(app, ["models", "rollback", "--tenant", "t"], env=env)
    assert r.exit_code == 0 and f"champion {v2} -> {v1}" in r.output, r.output
    r = run(app, ["models", "status", "--tenant", "t", "--no-shadow"], env=env)
    assert json.loads(r.stdout)["champion"]["version"] == v1
    champ = client(s).get_model_version_by_alias(tenant_model(s, "t"), "champion")
    assert champ.version in (v1, int(v1))

    # eventops train on CSV series: fitted on the older 70 %, judged by replay on the rest
    csv = nab_dir() / "data" / "artificialWithAnomaly" / "art_daily_jumpsup.csv"
    s2 = _own_model(mlflow_settings)
    env2 = {**env, "EVENTOPS_MODEL_NAME": s2.model_name}
    t = time.perf_counter()
    r = run(
        app,
        [
            "train",
            "--source",
            "csv",
            "--csv",
            str(csv),
            "--family",
            "robust_z",
            "--inject",
            "3",
            "--tenant",
            "t",
        ],
        env=env2,
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["version"] == "1" and out["tenant"] == "t"
    d = out["decision"]
    assert d["action"] in ("promoted", "rejected") and "out of sample" in d["reason"], d
    assert set(out["out_of_sample"]) == {"ensemble", "candidate"}
    assert out["out_of_sample"]["candidate"]["labelled"] >= 3
    assert time.perf_counter() - t < 60
