"""Promotion by replay, out of sample, on the real PostgreSQL-backed MLflow store: a first
model must beat the ensemble alone; a model better in sample than out of sample is rejected;
the decision is an MLflow run with its table, plot and datasets."""

from __future__ import annotations

import json
import uuid

import pytest

from registry.names import tenant_model
from tests.unit.test_replay import events

pytestmark = pytest.mark.integration


@pytest.fixture
def reg(mlflow_settings):
    return mlflow_settings.model_copy(update={"model_name": f"rp-{uuid.uuid4().hex[:8]}"})


def _alias(s, tenant, alias="champion"):
    from registry.aliases import alias_version
    from registry.client import client

    return alias_version(client(s), tenant_model(s, tenant), alias)


def test_first_model_that_adds_nothing_to_the_ensemble_is_rejected(reg):
    from training.promotion import PromotionPolicy
    from training.train import TrainConfig, train_and_judge

    # an IsolationForest calibrated at its 99.5 % quantile never reaches the batch threshold
    # on these series: the candidate arm equals the ensemble alone
    j = train_and_judge(reg, "t", events(n=1500), TrainConfig(params={"n_estimators": 20}),
                        PromotionPolicy(margin=1.0))  # fmt: skip
    assert not j.decision.promoted and j.action == "rejected"
    assert "vs ensemble alone" in j.decision.reason, j.decision.reason
    assert j.report.arms["candidate"]["nab_standard"] == j.report.arms["ensemble"]["nab_standard"]
    assert _alias(reg, "t") is None


def test_better_in_sample_worse_out_of_sample_is_rejected(reg):
    """The newer part is a noisier regime: fitted on the older part, the robust z-score looks
    better than the ensemble in sample and is worse out of sample -- rejected, both shown."""
    from training.promotion import PromotionPolicy
    from training.train import TrainConfig, train_and_judge

    policy = PromotionPolicy(margin=1.0, max_alerts_per_series_day=50)
    j = train_and_judge(reg, "t", events(n=2400, hosts=4, shift=True),
                        TrainConfig(family="robust_z"), policy)  # fmt: skip
    arms, ins = j.report.arms, j.report.in_sample
    assert ins["candidate"]["nab_standard"] > ins["ensemble"]["nab_standard"]  # in sample: better
    assert arms["candidate"]["nab_standard"] < arms["ensemble"]["nab_standard"] + 1.0
    assert not j.decision.promoted, j.decision.reason
    assert j.decision.reason.startswith("not better out of sample")
    assert f"in sample {ins['candidate']['nab_standard']}" in j.decision.reason
    assert _alias(reg, "t") is None


def test_good_candidate_is_promoted_and_the_decision_is_an_mlflow_run(reg, tmp_path):
    import mlflow

    from registry.client import client
    from training.promotion import PromotionPolicy
    from training.train import TrainConfig, train_and_judge

    policy = PromotionPolicy(margin=1.0, max_alerts_per_series_day=20)
    ev = events(n=2400, hosts=3)
    # promote=False: evaluated, registered, never moves an alias
    j0 = train_and_judge(reg, "t", ev, TrainConfig(family="robust_z"), policy, promote=False)
    assert j0.action == "would_promote" and not j0.decision.promoted, j0.decision.reason
    assert _alias(reg, "t") is None and _alias(reg, "t", "challenger") is None

    j = train_and_judge(reg, "t", ev, TrainConfig(family="robust_z"), policy,
                        artifacts_dir=tmp_path)  # fmt: skip
    assert j.decision.promoted and j.action == "promoted", j.decision.reason
    assert j.decision.reason.startswith("better out of sample") and "ensemble alone" in (
        j.decision.reason
    )
    assert _alias(reg, "t") == j.version
    c = client(reg)
    run = c.get_run(j.run_id)
    assert run.info.run_name.startswith("robust_z-t-")
    assert run.data.tags["eventops.decision"] == "promoted"
    assert (
        run.data.metrics["oos_candidate_nab_standard"] == j.report.arms["candidate"]["nab_standard"]
    )
    assert "oos_ensemble_nab_standard" in run.data.metrics
    assert "ins_candidate_nab_standard" in run.data.metrics
    arts = {a.path for a in c.list_artifacts(j.run_id, "evaluation")}
    assert arts == {"evaluation/evaluation.csv", "evaluation/replay.png"}
    assert (tmp_path / "replay.png").stat().st_size > 10_000
    ctx = sorted(i.tags[0].value for i in run.inputs.dataset_inputs)
    assert ctx == ["evaluation", "training"]
    mv = c.get_model_version(tenant_model(reg, "t"), j.version)
    assert mv.tags["eventops.decision"] == "promoted"
    assert json.loads(mv.tags["eventops.champion_metrics"])["arms"]["ensemble"]
    mlflow.set_tracking_uri(None)

    # a second round is judged against the champion now
    j2 = train_and_judge(reg, "t", ev, TrainConfig(family="robust_z"), policy)
    assert "vs champion" in j2.decision.reason and not j2.decision.promoted
    assert set(j2.report.arms) == {"ensemble", "champion", "candidate"}
