"""Which channels an alert transition goes to, and whether a silence mutes it.

A channel's filter is ``{"min_severity": "warning"|"critical", "matchers": [...]}`` (both
optional; matchers as :mod:`core.silences`, over the same labels). An ``open`` or ``escalate``
passes when its severity is at least ``min_severity`` and every matcher matches; a
``deescalate`` or ``resolve`` passes whenever an earlier transition of the same alert went to
the channel, so a channel that was told an alert fires is always told it ended.

>>> f = ChannelFilter.parse({"min_severity": "critical", "matchers": ["env=prod"]})
>>> labels = {"host": "web-1", "severity": "critical", "env": "prod"}
>>> f.passes("open", labels, told=False), f.passes("open", {**labels, "env": "dev"}, False)
(True, False)
>>> f.passes("resolve", {**labels, "severity": "warning"}, told=True)
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.records import SEVERITIES
from core.silences import Matcher, parse_matcher


@dataclass(frozen=True, slots=True)
class ChannelFilter:
    min_severity: str = "warning"
    matchers: tuple[Matcher, ...] = ()

    @classmethod
    def parse(cls, d: Mapping[str, Any] | None) -> ChannelFilter:
        """From the stored/API form; ``ValueError`` with the reason when it is not valid."""
        d = d or {}
        unknown = set(d) - {"min_severity", "matchers"}
        if unknown:
            raise ValueError(
                f"unknown filter field(s) {', '.join(sorted(unknown))}; a filter has"
                " min_severity and matchers"
            )
        sev = d.get("min_severity") or "warning"
        if sev not in SEVERITIES:
            raise ValueError(f"min_severity {sev!r} is not one of {', '.join(SEVERITIES)}")
        return cls(sev, tuple(parse_matcher(m) for m in d.get("matchers") or ()))

    def to_dict(self) -> dict[str, Any]:
        return {"min_severity": self.min_severity, "matchers": [m.to_dict() for m in self.matchers]}

    def passes(self, kind: str, labels: Mapping[str, str], told: bool) -> bool:
        """``told``: an earlier transition of this alert went to the channel."""
        if kind in ("deescalate", "resolve"):
            return told
        if SEVERITIES.index(labels.get("severity", "warning")) < SEVERITIES.index(
            self.min_severity
        ):
            return False
        return all(m.matches(labels) for m in self.matchers)
