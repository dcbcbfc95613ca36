"""Checking a new channel: its kind, address and filter; a webhook's signing secret."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from notify.filters import ChannelFilter
from notify.signing import new_secret

KINDS = ("alertmanager", "webhook")


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """A channel to create: checked, with its secret (webhooks only; shown once)."""

    name: str
    kind: str
    url: str
    filter: dict[str, Any]
    secret: str | None

    @classmethod
    def check(cls, name: str, kind: str, url: str, filter_: dict | None) -> ChannelSpec:
        """``ValueError`` with the reason when a field is not valid.

        >>> ChannelSpec.check("am", "alertmanager", "http://127.0.0.1:9093", None).secret is None
        True
        >>> ChannelSpec.check("hook", "webhook", "https://example.com/h", {}).secret[:6]
        'whsec_'
        >>> ChannelSpec.check("x", "pager", "http://a", None)
        Traceback (most recent call last):
        ...
        ValueError: channel kind 'pager' is not one of alertmanager, webhook
        """
        if kind not in KINDS:
            raise ValueError(f"channel kind {kind!r} is not one of {', '.join(KINDS)}")
        if (
            not name
            or len(name) > 100
            or not name.replace("-", "").replace("_", "").replace(".", "").isalnum()
        ):
            raise ValueError(
                f"channel name {name!r} must be 1-100 letters, digits, '-', '_' or '.'"
            )
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(
                f"channel url {url!r} must be an http(s) address, e.g. http://alertmanager:9093"
            )
        if u.username or u.password:
            raise ValueError("channel url must not carry credentials (user:password@)")
        f = ChannelFilter.parse(filter_).to_dict()
        return cls(name, kind, url, f, new_secret() if kind == "webhook" else None)
