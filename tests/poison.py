"""The poison corpus: raw inputs that must each end stored or dead-lettered with one reason.

``tests/data/poison/corpus.json`` lists the cases; :func:`load_corpus` turns each into the exact
bytes an agent would put in a Kafka record (or a ``POST /ingest`` body). An entry holds one of

* ``"text"``: UTF-8 text. JSON escapes such as ``\\u0000`` are kept literally (the record carries
  the six characters, which a JSON decoder turns into NUL);
* ``"b64"``: arbitrary bytes, base64 (invalid UTF-8, BOMs, raw control bytes);
* ``"gen"``: a generator of :data:`GENERATORS` for inputs too big to keep in the file, with its
  arguments (``size``, ``fill``, ``count``, ``depth``, ``length``) beside it.

Placeholders in text and in generated events: ``{tenant}`` (the tenant under test), ``{now}``
(RFC 3339 UTC), ``{now_s}`` / ``{now_ms}`` (epoch seconds / milliseconds), ``{now_plus_1y}``.

``reason`` is the dead-letter reason code the pipeline must give the case, or ``None`` for a
weird-but-valid input that must be stored. The reasons assume the default limits
(``max_message_bytes`` 1,000,000, ``max_tag_value_bytes`` 1024, ``max_tags`` 64, skew 300 s /
age 7 days) and a registry of tenants that holds ``{tenant}``.
"""

from __future__ import annotations

import base64
import json
import random
import string
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

CORPUS = Path(__file__).parent / "data" / "poison" / "corpus.json"
_LETTERS = string.ascii_letters.encode()


class PoisonCase(NamedTuple):
    name: str
    raw: bytes
    #: expected dead-letter reason code; ``None``: the input must be stored
    reason: str | None
    note: str = ""


def _fill(text: str, subs: dict[str, str]) -> str:
    for k, v in subs.items():
        text = text.replace(k, v)
    return text


def _event(subs: dict[str, str], **extra: object) -> dict:
    ev = {
        "tenant_id": subs["{tenant}"],
        "host": "h-poison-gen",
        "metric": "cpu_load",
        "value": 1.5,
        "ts_event": subs["{now}"],
        "unit": "%",
        "tags": {"env": "prod"},
    }
    ev.update(extra)
    return ev


def _dump(ev: dict) -> bytes:
    return json.dumps(ev, ensure_ascii=False, separators=(",", ":")).encode()


def _padded(subs: dict[str, str], size: int, fill: str = "x", **_: object) -> bytes:
    """A valid event padded, in a field the pipeline ignores, to exactly ``size`` bytes;
    ``fill="random"`` pads with seeded random letters (compression does not shrink them, so
    the record really is that large on the broker)."""
    head = _dump(_event(subs, pad=""))
    n = size - len(head)
    pad = b"x" * n if fill == "x" else bytes(random.Random(size).choices(_LETTERS, k=n))
    out = head[:-2] + pad + head[-2:]
    assert len(out) == size
    return out


def _tag_value(subs: dict[str, str], size: int, **_: object) -> bytes:
    return _dump(_event(subs, tags={"big": "x" * size}))


def _many_tags(subs: dict[str, str], count: int, **_: object) -> bytes:
    return _dump(_event(subs, tags={f"k{i}": i for i in range(count)}))


def _deep_nesting(subs: dict[str, str], depth: int, **_: object) -> bytes:
    head = _dump(_event(subs, x=0))
    return head[:-2] + b"[" * depth + b"]" * depth + b"}"


def _deep_objects(subs: dict[str, str], depth: int, **_: object) -> bytes:
    head = _dump(_event(subs, x=0))
    return head[:-2] + b'{"a":' * depth + b"1" + b"}" * depth + b"}"


def _event_id_len(subs: dict[str, str], length: int, **_: object) -> bytes:
    eid = f"{subs['{tenant}']}-"
    eid += "x" * (length - len(eid))
    return _dump(_event(subs, host=f"h-eid-{length}", event_id=eid))


GENERATORS: dict[str, Callable[..., bytes]] = {
    "padded": _padded,
    "tag_value": _tag_value,
    "many_tags": _many_tags,
    "deep_nesting": _deep_nesting,
    "deep_objects": _deep_objects,
    "event_id_len": _event_id_len,
}


def load_corpus(tenant: str = "acme", now: float | None = None) -> list[PoisonCase]:
    """Every case of the corpus as raw bytes for ``tenant`` at time ``now`` (default: now)."""
    now = time.time() if now is None else now
    subs = {
        "{tenant}": tenant,
        "{now}": datetime.fromtimestamp(now, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "{now_s}": f"{now:.3f}",
        "{now_ms}": str(int(now * 1000)),
        "{now_plus_1y}": f"{now + 366 * 86400:.0f}",
    }
    cases = []
    for c in json.loads(CORPUS.read_text(encoding="utf-8"))["cases"]:
        if "text" in c:
            raw = _fill(c["text"], subs).encode("utf-8")
        elif "b64" in c:
            raw = _fill(base64.b64decode(c["b64"]).decode("latin-1"), subs).encode("latin-1")
        else:
            raw = GENERATORS[c["gen"]](subs, **c)
        cases.append(PoisonCase(c["name"], raw, c["reason"], c.get("note", "")))
    return cases
