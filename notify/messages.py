"""What each kind of channel receives for one alert transition.

**Alertmanager** (``POST /api/v2/alerts``, a JSON list): labels ``tenant``, ``host``,
``metric``, ``severity``, ``alertname``; annotations ``summary`` (the message), ``description``
(expected vs actual), ``score``, ``model_version``, ``alert_id``, ``rule`` and ``dashboard``
(also the ``generatorURL``); ``startsAt`` the alert's opening. A firing alert's ``endsAt`` is
``now + valid_for`` and it is sent again before that (as Prometheus does, with 4 re-send
intervals), so Alertmanager resolves it by itself only if EventOps stops telling it; a
resolution is sent with ``endsAt`` at the resolution. Severity is a label, so an escalation
ends the alert of the old severity in the same request.

**Webhooks**: one JSON object per transition, ``{"type": "alert.<kind>", "timestamp",
"data": {...the alert event..., "labels", "dashboard"}}``, signed by :mod:`notify.signing`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from core.records import AlertEvent, iso_z
from core.silences import alertname

#: the labels sent to Alertmanager
AM_LABELS = ("tenant", "host", "metric", "severity", "alertname")


def dashboard_link(base: str, alert_id: str) -> str:
    return f"{base.rstrip('/')}/#alert={alert_id}"


def _am_labels(ev: AlertEvent, severity: str) -> dict[str, str]:
    return {
        "tenant": ev.tenant_id,
        "host": ev.host,
        "metric": ev.metric,
        "severity": severity,
        "alertname": alertname(ev.rule),
    }


def description(ev: AlertEvent) -> str:
    """Expected vs actual, in words."""
    expected = (ev.explanation or {}).get("expected")
    if expected is not None:
        return f"actual {ev.value:g}, expected ~{float(expected):g}"
    if not ev.rule.startswith("anomaly"):
        return f"actual {ev.value:g}, threshold {ev.threshold:g}"
    return f"actual {ev.value:g}"


def alertmanager_alerts(
    ev: AlertEvent, now: float, valid_for_s: float, dashboard: str, *, resend: bool = False
) -> list[dict[str, Any]]:
    """The Alertmanager alerts of one transition; ``resend``: the alert as it fires now (the
    periodic re-send of a firing alert)."""
    link = dashboard_link(dashboard, ev.alert_id)
    opened = min(ev.opened_at, now)
    ann = {
        "summary": ev.message,
        "description": description(ev),
        "score": f"{ev.score:.3f}",
        "model_version": ev.model_version or "",
        "alert_id": ev.alert_id,
        "rule": ev.rule,
        "dashboard": link,
    }
    sev = ev.severity
    if ev.kind == "resolve":
        return [_am(ev, sev, ann, opened, max(ev.ts, opened + 0.001), link)]
    out = [_am(ev, sev, ann, opened, now + valid_for_s, link)]
    if ev.kind in ("escalate", "deescalate") and not resend:
        old = "warning" if sev == "critical" else "critical"
        out.append(_am(ev, old, ann, opened, max(now, opened + 0.001), link))
    return out


def _am(ev, severity, ann, start, end, link) -> dict[str, Any]:
    return {
        "labels": _am_labels(ev, severity),
        "annotations": ann,
        "startsAt": iso_z(start, "milliseconds"),
        "endsAt": iso_z(end, "milliseconds"),
        "generatorURL": link,
    }


def webhook_body(ev: AlertEvent, labels: Mapping[str, str], now: float, dashboard: str) -> bytes:
    """The signed body of one webhook message."""
    data = ev.to_dict()
    data["labels"] = dict(labels)
    data["dashboard"] = dashboard_link(dashboard, ev.alert_id)
    return orjson.dumps(
        {"type": f"alert.{ev.kind}", "timestamp": iso_z(now, "seconds"), "data": data}
    )
