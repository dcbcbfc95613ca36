"""Aliases and decision tags: which version is champion/challenger, moving them, saying why.

Training decides (``training.promotion``); this module writes the outcome, so every alias move
and every decision tag is made here:

* :func:`alias_version` -- the version an alias points at (``None``: unset, or no such model);
* :func:`move_alias` -- point an alias at a version and stamp :func:`registry.tags.set_at_tag`;
* :func:`tag_decision` -- the evaluation of a candidate, on its version;
* :func:`record_decision` -- the last decision, on the registered model;
* :func:`promote` / :func:`rollback` -- the champion moves (operator override, undo).

Tag names and formats: :mod:`registry.tags`.  MLflow is imported lazily.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from registry.client import is_missing
from registry.tags import (
    CHALLENGER,
    CHAMPION,
    TAG_CHAMPION_METRICS,
    TAG_COMPARED,
    TAG_DECIDED_AT,
    TAG_DECISION,
    TAG_LAST_DECISION,
    TAG_METRICS,
    TAG_POLICY,
    TAG_PREVIOUS,
    TAG_REASON,
    set_at_tag,
)

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

__all__ = [
    "alias_version",
    "move_alias",
    "promote",
    "record_decision",
    "rollback",
    "tag_decision",
]

log = logging.getLogger(__name__)


def _json(d: Any) -> str:
    return json.dumps(d, sort_keys=True, default=str)


def alias_version(client: MlflowClient, name: str, alias: str = CHAMPION) -> str | None:
    """Version (as ``str``) that ``alias`` points at, ``None`` when unset or no such model."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if is_missing(e):
            return None
        raise
    return str(mv.version)


def move_alias(client: MlflowClient, name: str, alias: str, version: str | int) -> None:
    """Point ``alias`` of ``name`` at ``version`` and record when (``eventops.<alias>_set_at``)."""
    client.set_registered_model_alias(name, alias, str(version))
    client.set_registered_model_tag(name, set_at_tag(alias), repr(time.time()))


def record_decision(client: MlflowClient, name: str, entry: dict[str, Any]) -> None:
    """Store ``entry`` (``action, version, previous, reason, at`` …) as the last decision."""
    client.set_registered_model_tag(name, TAG_LAST_DECISION, _json(entry))


def tag_decision(
    client: MlflowClient,
    name: str,
    version: str | int,
    *,
    action: str,
    reason: str,
    metrics: dict[str, Any],
    champion_metrics: dict[str, Any] | None,
    compared_with: str | None,
    policy: dict[str, Any],
    decided_at: str,
) -> None:
    """Write the evaluation of candidate ``version`` on it (metrics and policy as JSON)."""
    tags = {
        TAG_DECISION: action,
        TAG_REASON: reason,
        TAG_METRICS: _json(metrics),
        TAG_CHAMPION_METRICS: _json(champion_metrics),
        TAG_COMPARED: compared_with or "none",
        TAG_POLICY: _json(policy),
        TAG_DECIDED_AT: decided_at,
    }
    for k, v in tags.items():
        client.set_model_version_tag(name, str(version), k, v)


def promote(
    client: MlflowClient, name: str, version: str | int, reason: str = "manual"
) -> str | None:
    """Make ``version`` the champion (no evaluation); returns the previous champion.

    The previous champion is recorded on the new one (``eventops.previous_champion``) so
    :func:`rollback` can restore it; a version that was challenger stops being one.
    """
    version = str(version)
    prev = alias_version(client, name, CHAMPION)
    if prev == version:
        return prev
    client.get_model_version(name, version)  # raises when it does not exist
    if prev is not None:
        client.set_model_version_tag(name, version, TAG_PREVIOUS, prev)
    move_alias(client, name, CHAMPION, version)
    if alias_version(client, name, CHALLENGER) == version:
        client.delete_registered_model_alias(name, CHALLENGER)
    record_decision(
        client,
        name,
        {
            "action": "promoted",
            "version": version,
            "previous": prev,
            "reason": reason,
            "at": datetime.now(UTC).isoformat(),
        },
    )
    log.info("%s: champion %s -> %s (%s)", name, prev, version, reason)
    return prev


def rollback(client: MlflowClient, name: str) -> tuple[str, str]:
    """Restore the champion that the current one replaced; returns ``(from, to)``.

    Raises ``ValueError`` when there is no champion or it has no recorded predecessor.
    """
    cur = alias_version(client, name, CHAMPION)
    if cur is None:
        raise ValueError(f"{name} has no champion to roll back")
    prev = client.get_model_version(name, cur).tags.get(TAG_PREVIOUS)
    if not prev:
        raise ValueError(f"{name} v{cur} has no previous champion recorded")
    move_alias(client, name, CHAMPION, prev)
    now = datetime.now(UTC).isoformat()
    client.set_model_version_tag(name, cur, TAG_DECISION, "rolled_back")
    client.set_model_version_tag(name, cur, TAG_REASON, f"rolled back to v{prev} at {now}")
    record_decision(
        client,
        name,
        {
            "action": "rollback",
            "version": prev,
            "previous": cur,
            "reason": f"rollback from v{cur}",
            "at": now,
        },
    )
    log.info("%s: rolled back champion %s -> %s", name, cur, prev)
    return cur, prev
