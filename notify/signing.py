"""Webhook signatures per the Standard Webhooks specification (standardwebhooks.com).

A secret is ``whsec_`` + base64 of 32 random bytes. Each message carries three headers:
``webhook-id`` (the same on every retry and replay of one delivery, so a receiver drops
duplicates by it), ``webhook-timestamp`` (integer epoch seconds of the attempt) and
``webhook-signature``: ``v1,`` + base64 of HMAC-SHA256 over ``"{id}.{timestamp}.{body}"``
keyed with the secret's decoded bytes.

>>> secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
>>> headers("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}', secret)
... # doctest: +NORMALIZE_WHITESPACE
{'webhook-id': 'msg_p5jXN8AQM9LWM0D4loKWxJek', 'webhook-timestamp': '1614265330',
 'webhook-signature': 'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE='}
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

PREFIX = "whsec_"


def new_secret() -> str:
    """A fresh signing secret (shown once when a channel is created)."""
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(PREFIX))


def signature(msg_id: str, timestamp: int, body: bytes, secret: str) -> str:
    content = f"{msg_id}.{timestamp}.".encode() + body
    mac = hmac.new(_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def headers(msg_id: str, timestamp: int, body: bytes, secret: str) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp)),
        "webhook-signature": signature(msg_id, int(timestamp), body, secret),
    }
