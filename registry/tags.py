"""Names the project writes into the MLflow registry: aliases, and every ``eventops.*`` tag.

One module so that the writer (training's promotion, ``eventops models``) and the readers (the
champion watcher, the API's ``/models``, ``eventops models list``) cannot drift apart.  The
values are a public contract: operators read them in the MLflow UI and tests pin them.

Aliases of a tenant's registered model (:func:`registry.names.tenant_model`):

* :data:`CHAMPION` -- the version every detect worker scores with;
* :data:`CHALLENGER` -- a version that passed the guardrails but did not win; scored in shadow.

Model-version tags (one version):

* :data:`TAG_FEATURES` -- JSON list of the window-feature columns the model reads, in order;
* :data:`TAG_FAMILY` -- estimator family (``isolation_forest``, ``robust_z`` …);
* :data:`TAG_DECISION` -- ``promoted``, ``rejected`` or ``rolled_back``;
* :data:`TAG_REASON` -- why, in one line;
* :data:`TAG_METRICS`, :data:`TAG_CHAMPION_METRICS` -- JSON of the candidate's and the
  champion's backtest metrics on the same labelled set;
* :data:`TAG_COMPARED` -- the champion version it was compared with (``none``: no champion);
* :data:`TAG_POLICY` -- JSON of the promotion policy applied;
* :data:`TAG_DECIDED_AT` -- ISO 8601 time of the decision;
* :data:`TAG_PREVIOUS` -- on a promoted version: the champion it replaced (what rollback restores).

Registered-model tags:

* :data:`TAG_LAST_DECISION` -- JSON ``{"action", "version", "previous", "reason", "at", …}``;
* :data:`TAG_SET_AT` -- ``eventops.<alias>_set_at``: epoch seconds of the alias's last move
  (:func:`set_at_tag`), from which the watcher reports the alias-to-swap delay;
* :data:`TAG_CHAMPION_STACK` -- JSON list of the champion versions in the order they became
  champion (newest last, rolled-back ones popped): what ``rollback`` walks back through;
* :data:`TAG_ALIAS_LOG` -- JSON list of the last :data:`ALIAS_LOG_KEEP` alias moves
  ``{"alias", "from", "to", "action", "reason", "at"}`` (newest last).

This module imports nothing: any layer may read the names for free.
"""

from __future__ import annotations

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "ALIAS_LOG_KEEP",
    "TAG_ALIAS_LOG",
    "TAG_CHAMPION_METRICS",
    "TAG_CHAMPION_STACK",
    "TAG_COMPARED",
    "TAG_DECIDED_AT",
    "TAG_DECISION",
    "TAG_FAMILY",
    "TAG_FEATURES",
    "TAG_LAST_DECISION",
    "TAG_METRICS",
    "TAG_POLICY",
    "TAG_PREVIOUS",
    "TAG_REASON",
    "TAG_SET_AT",
    "set_at_tag",
]

CHAMPION = "champion"
CHALLENGER = "challenger"

# --- model-version tags
TAG_FEATURES = "eventops.features"
TAG_FAMILY = "eventops.family"
TAG_DECISION = "eventops.decision"
TAG_REASON = "eventops.reason"
TAG_METRICS = "eventops.metrics"
TAG_CHAMPION_METRICS = "eventops.champion_metrics"
TAG_COMPARED = "eventops.compared_with"
TAG_POLICY = "eventops.policy"
TAG_DECIDED_AT = "eventops.decided_at"
TAG_PREVIOUS = "eventops.previous_champion"

# --- registered-model tags
TAG_LAST_DECISION = "eventops.last_decision"
TAG_CHAMPION_STACK = "eventops.champion_stack"
TAG_ALIAS_LOG = "eventops.alias_log"
#: alias moves kept in :data:`TAG_ALIAS_LOG`
ALIAS_LOG_KEEP = 50
#: ``TAG_SET_AT.format(alias=...)``; prefer :func:`set_at_tag`
TAG_SET_AT = "eventops.{alias}_set_at"


def set_at_tag(alias: str) -> str:
    """The registered-model tag holding when ``alias`` last moved.

    >>> set_at_tag(CHAMPION)
    'eventops.champion_set_at'
    """
    return TAG_SET_AT.format(alias=alias)
