"""Aliases and decision tags: which version is champion/challenger, moving them, saying why.

Training decides (``training.promotion``); this module writes the outcome, so every alias move
and every decision tag is made here:

* :func:`alias_version` -- the version an alias points at (``None``: unset, or no such model);
* :func:`move_alias` -- point an alias at a version and stamp :func:`registry.tags.set_at_tag`;
* :func:`tag_decision` -- the evaluation of a candidate, on its version;
* :func:`record_decision` -- the last decision, on the registered model;
* :func:`promote` / :func:`rollback` -- the champion moves (operator override, undo): every
  promotion is pushed on a champion stack that rollback walks back through, and every alias
  move is appended to the model's alias log (:func:`alias_log`).

``name`` is a tenant's registered model (:func:`registry.names.tenant_model`).

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
    ALIAS_LOG_KEEP,
    CHALLENGER,
    CHAMPION,
    TAG_ALIAS_LOG,
    TAG_CHAMPION_METRICS,
    TAG_CHAMPION_STACK,
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
    "alias_log",
    "alias_version",
    "champion_stack",
    "check_version",
    "move_alias",
    "promote",
    "record_decision",
    "rollback",
    "tag_decision",
]

log = logging.getLogger(__name__)

#: champion versions kept on the stack (how far rollback can walk back)
STACK_KEEP = 100


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


def _tag_list(client: MlflowClient, name: str, tag: str) -> list[Any]:
    """A JSON-list tag of registered model ``name`` (``[]`` when unset or unreadable)."""
    raw = client.get_registered_model(name).tags.get(tag)
    try:
        v = json.loads(raw) if raw else []
    except ValueError:
        return []
    return v if isinstance(v, list) else []


def alias_log(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    """The last alias moves of ``name``, oldest first (:data:`registry.tags.TAG_ALIAS_LOG`)."""
    return [e for e in _tag_list(client, name, TAG_ALIAS_LOG) if isinstance(e, dict)]


def champion_stack(client: MlflowClient, name: str) -> list[str]:
    """Champion versions in the order they became champion, newest last (rolled back: popped)."""
    return [str(v) for v in _tag_list(client, name, TAG_CHAMPION_STACK)]


def move_alias(
    client: MlflowClient,
    name: str,
    alias: str,
    version: str | int,
    *,
    action: str = "moved",
    reason: str = "",
) -> None:
    """Point ``alias`` of ``name`` at ``version``, record when (``eventops.<alias>_set_at``) and
    append the move to the alias log (read-modify-write of one tag: two writers moving aliases
    of the same tenant at the same instant may lose a log entry, never an alias move)."""
    before = alias_version(client, name, alias)
    client.set_registered_model_alias(name, alias, str(version))
    client.set_registered_model_tag(name, set_at_tag(alias), repr(time.time()))
    entry = {
        "alias": alias,
        "from": before,
        "to": str(version),
        "action": action,
        "reason": reason,
        "at": datetime.now(UTC).isoformat(),
    }
    log_ = (alias_log(client, name) + [entry])[-ALIAS_LOG_KEEP:]
    client.set_registered_model_tag(name, TAG_ALIAS_LOG, _json(log_))


def check_version(client: MlflowClient, name: str, version: str | int) -> str:
    """``str(version)`` when ``name`` has that version, else ``ValueError`` in one line naming
    the versions there are (what ``eventops models promote 99`` prints)."""
    from mlflow.exceptions import MlflowException

    v = str(version).strip().removeprefix("v")
    if v.isdigit():
        try:
            client.get_model_version(name, v)
            return v
        except MlflowException as e:
            if not is_missing(e):
                raise
    try:
        have = sorted(
            int(mv.version)
            for mv in client.search_model_versions(f"name = '{name}'", max_results=1000)
        )
    except MlflowException as e:
        if not is_missing(e):
            raise
        have = []
    if not have:
        raise ValueError(f"{name} has no registered versions (train one first: eventops train)")
    listed = ", ".join(map(str, have[-10:]))
    raise ValueError(f"{name} has no version {version!r}; its versions: {listed}")


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

    The version is pushed on the champion stack (:func:`champion_stack`) and the previous
    champion is recorded on it (``eventops.previous_champion``), so :func:`rollback` walks back
    through every promotion; a version that was challenger stops being one.  ``ValueError``
    (one line) for a version ``name`` does not have.
    """
    version = check_version(client, name, version)
    prev = alias_version(client, name, CHAMPION)
    if prev == version:
        return prev
    stack = champion_stack(client, name)
    if prev is not None and (not stack or stack[-1] != prev):
        stack.append(prev)  # a champion set before the stack existed, or by a bare alias move
    stack.append(version)
    if prev is not None:
        client.set_model_version_tag(name, version, TAG_PREVIOUS, prev)
    move_alias(client, name, CHAMPION, version, action="promoted", reason=reason)
    client.set_registered_model_tag(name, TAG_CHAMPION_STACK, _json(stack[-STACK_KEEP:]))
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
    """Restore the champion before the current one; returns ``(from, to)``.

    Walks back through the champion stack: after promotions 1, 2, 3 a rollback makes 2 the
    champion and a second one 1 (3 and 2 are popped: promoting them again pushes them again).
    Raises ``ValueError`` (one line) when there is no champion or nothing before it.
    """
    cur = alias_version(client, name, CHAMPION)
    if cur is None:
        raise ValueError(f"{name} has no champion to roll back")
    stack = champion_stack(client, name)
    if not stack:  # promoted before the stack existed: the one predecessor on the version
        prev = client.get_model_version(name, cur).tags.get(TAG_PREVIOUS)
        stack = [prev, cur] if prev else [cur]
    elif stack[-1] != cur:  # the alias was moved outside promote(): it is the newest
        stack.append(cur)
    stack.pop()
    if not stack:
        raise ValueError(f"{name} v{cur} is the first champion recorded; nothing to roll back to")
    prev = stack[-1]
    now = datetime.now(UTC).isoformat()
    move_alias(client, name, CHAMPION, prev, action="rolled_back", reason=f"rollback from v{cur}")
    client.set_registered_model_tag(name, TAG_CHAMPION_STACK, _json(stack))
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
