"""Per-tenant models: each tenant's windows are scored by its own champion, on the real
PostgreSQL-backed MLflow store and the real pipeline; rollback walks back through history.

Versions are registered through a settings copy whose ``model_name`` is the tenant's
registered model (:func:`registry.names.tenant_model`), so these tests do not depend on how
training names its runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
from typer.testing import CliRunner

from core.settings import Settings
from pipeline.embedded import EmbeddedPipeline
from pipeline.simulate import Simulator
from registry.names import tenant_model
from storage.tenants import create_tenant
from tests.integration.conftest import nab_dir, settings_env

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def windows():
    from training import datasets

    return datasets.from_csv(
        nab_dir() / "data" / "artificialWithAnomaly", nab_dir() / "windows.json"
    )


@pytest.fixture
def reg(mlflow_settings: Settings) -> Settings:
    """The scratch MLflow store under a model-name prefix of this test's own."""
    return mlflow_settings.model_copy(update={"model_name": f"tm-{uuid.uuid4().hex[:8]}"})


def _register(s: Settings, tenant: str, windows, family: str = "robust_z", n: int = 1) -> list:
    """Register ``n`` versions of a fitted ``family`` model as ``tenant``'s."""
    from training.train import TrainConfig, fit, log_and_register

    cfg = TrainConfig(family=family, params={"n_estimators": 20} if family != "robust_z" else {})
    m = fit(windows, cfg)
    as_tenant = s.model_copy(update={"model_name": tenant_model(s, tenant)})
    return [log_and_register(as_tenant, m, cfg, windows)[0] for _ in range(n)]


def test_two_tenants_two_champions_in_the_scores(settings, conn, reg, windows):
    """Tenant A's windows carry A's champion's version, B's carry B's, C (no champion) none;
    moving B's alias swaps B's model only."""
    from registry.aliases import promote
    from registry.client import client
    from registry.watcher import TenantWatcher

    a, b, c = (f"{x}{uuid.uuid4().hex[:6]}" for x in "abc")
    for t in (a, b, c):
        create_tenant(conn, t)
    mc = client(reg)
    (va,) = _register(reg, a, windows, "robust_z")
    vb1, vb2 = _register(reg, b, windows, "isolation_forest", n=2)
    promote(mc, tenant_model(reg, a), va)
    promote(mc, tenant_model(reg, b), vb2)
    s = settings.model_copy(
        update={k: getattr(reg, k) for k in ("mlflow_database", "mlflow_artifacts", "model_name")}
    )
    w = TenantWatcher(s, poll_s=0.5).start()
    try:
        assert w.wait_for(va, 30, tenant=a), w.last_error
        assert w.wait_for(vb2, 30, tenant=b), w.last_error
        assert w.version(c) is None
        model_a = w.current()[a][1]
        pipe = EmbeddedPipeline(s, model=w.current)
        t0 = time.time() - 3600
        sims = [Simulator(hosts=2, tenant=t, seed=i, interval=10, start=t0, anomaly_rate=0.0)
                for i, t in enumerate((a, b, c))]  # fmt: skip
        for ticks in zip(*(sm.events(ticks=120) for sm in sims), strict=True):
            pipe.feed([e for evs in ticks for e in evs])
        pipe.close()
        rows = dict(
            conn.execute(
                "SELECT tenant_id, array_agg(DISTINCT coalesce(model_version, '-'))"
                " FROM scores WHERE tenant_id = ANY(%s) GROUP BY tenant_id",
                ([a, b, c],),
            ).fetchall()
        )
        assert rows == {a: [va], b: [vb2], c: ["-"]}, rows
        comps = conn.execute(
            "SELECT tenant_id, bool_and(components ? 'batch') FROM scores"
            " WHERE tenant_id = ANY(%s) GROUP BY tenant_id ORDER BY 1",
            ([a, c],),
        ).fetchall()
        assert dict(comps) == {a: True, c: False}

        # B's alias moves: B is swapped, A keeps the very same loaded model
        promote(mc, tenant_model(reg, b), vb1)
        w.poke()
        assert w.wait_for(vb1, 30, tenant=b), w.last_error
        assert w.current()[a][1] is model_a
        assert [sw.tenant for sw in w.swaps].count(a) == 1
    finally:
        w.stop()


def test_rollback_walks_back_through_history(reg, windows):
    from registry.aliases import alias_version, promote, rollback
    from registry.client import client
    from registry.status import model_status

    t = f"h{uuid.uuid4().hex[:6]}"
    name = tenant_model(reg, t)
    mc = client(reg)
    v1, v2, v3 = _register(reg, t, windows, n=3)
    for v in (v1, v2, v3):
        promote(mc, name, v)
    assert rollback(mc, name) == (v3, v2)
    assert rollback(mc, name) == (v2, v1)  # twice goes back twice, not 3 -> 2 -> 3
    assert alias_version(mc, name, "champion") == v1
    with pytest.raises(ValueError, match="first champion recorded"):
        rollback(mc, name)
    st = model_status(reg, t)
    assert [(h["from"], h["to"], h["action"]) for h in st["history"]] == [
        (None, v1, "promoted"),
        (v1, v2, "promoted"),
        (v2, v3, "promoted"),
        (v3, v2, "rolled_back"),
        (v2, v1, "rolled_back"),
    ]
    assert st["champion_stack"] == [v1]
    # promoting again after rollbacks pushes again: one rollback returns to v1
    promote(mc, name, v3)
    assert rollback(mc, name) == (v3, v1)
    with pytest.raises(ValueError, match=r"has no version '99'; its versions: 1, 2, 3"):
        promote(mc, name, "99")


def _cli_env(s: Settings) -> dict[str, str]:
    return {
        "EVENTOPS_MLFLOW_DATABASE": s.mlflow_database,
        "EVENTOPS_MODEL_NAME": s.model_name,
        "EVENTOPS_MLFLOW_ARTIFACTS": str(s.mlflow_artifacts),
        "MLFLOW_TRACKING_URI": "",
    }


def test_cli_shows_one_tenant_and_errors_in_one_line(reg, windows):
    from cli.main import app

    a, b = (f"{x}{uuid.uuid4().hex[:6]}" for x in "ab")
    va1, va2 = _register(reg, a, windows, n=2)
    _register(reg, b, windows, n=1)
    env = _cli_env(reg)
    run = CliRunner().invoke
    assert run(app, ["models", "promote", va1, "--tenant", a], env=env).exit_code == 0
    r = run(app, ["models", "promote", va2, "--tenant", a], env=env)
    assert r.exit_code == 0 and f"champion {va1} -> {va2}" in r.output, r.output
    r = run(app, ["models", "list", "--tenant", b], env=env)
    assert r.exit_code == 0 and r.output.count("\n") == 1 and "champion" not in r.output
    r = run(app, ["models", "status", "--tenant", b, "--no-shadow"], env=env)
    st = json.loads(r.stdout)
    assert st["name"] == tenant_model(reg, b) and st["champion"] is None
    r = run(app, ["models", "status", "--tenant", a, "--no-shadow"], env=env)
    assert json.loads(r.stdout)["champion"]["version"] == va2

    from cli.errors import describe

    for args in (["promote", "x1"], ["rollback"], ["rollback"]):
        r = run(app, ["models", *args, "--tenant", a], env=env)
        if args == ["rollback"] and r.exit_code == 0:
            assert f"champion {va2} -> {va1}" in r.output
            continue
        assert r.exit_code != 0, (args, r.output)
        msg, code = describe(r.exception)
        assert code != 0 and "\n" not in msg, msg
    assert "first champion recorded" in msg
    r = run(app, ["models", "list", "--tenant", "bad tenant!"], env=env)
    assert r.exit_code != 0 and "invalid tenant id" in describe(r.exception)[0]

    # as an operator runs it: one line on stderr naming the versions there are, no traceback
    p = subprocess.run(
        [sys.executable, "-m", "cli", "models", "promote", "99", "--tenant", a],
        env={**settings_env(reg), **env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "no version '99'; its versions: 1, 2" in lines[0], p.stderr


def test_api_models_is_the_callers_tenant(reg, windows):
    import asyncio

    from registry.aliases import promote
    from registry.client import client
    from serving.registry import model_status

    a, b = (f"{x}{uuid.uuid4().hex[:6]}" for x in "ab")
    (va,) = _register(reg, a, windows)
    promote(client(reg), tenant_model(reg, a), va)
    sa = asyncio.run(model_status(reg, a))
    sb = asyncio.run(model_status(reg, b))
    assert sa["tenant"] == a and sa["champion"]["version"] == va and sa["history"]
    assert sb["tenant"] == b and sb["champion"] is None and sb["history"] == []
    assert "ensemble alone" in sb["detail"]
    assert np.all([h["to"] == va for h in sa["history"]])
