"""normalize over the poison corpus (tests/data/poison) and a seeded fuzz test: the stage is
total, every input ends stored xor dead-lettered once, and what it stores is safe for
PostgreSQL text/JSONB and orjson (issue 8)."""

from __future__ import annotations

import json
import math
import random
import re
import time

import numpy as np
import orjson
import pytest

from pipeline.stages.normalize import NormalizeConfig, Normalizer, suspects
from tests.poison import load_corpus

NOW = time.time()
TENANT = "acme"
CORPUS = load_corpus(TENANT, NOW)
REASONS = {
    "too_large",
    "bad_encoding",
    "bad_json",
    "not_object",
    "missing_field",
    "bad_type",
    "non_finite",
    "bad_text",
    "bad_field",
    "bad_event_id",
    "ts_out_of_range",
    "unknown_tenant",
    "bad_tags",
    "tag_too_large",
    "too_many_tags",
}
TOPIC = "ingest.raw.agent"


def normalizer(**cfg) -> Normalizer:
    return Normalizer(NormalizeConfig(**{"known_tenants": frozenset({TENANT}), **cfg}))


def good(i: int) -> bytes:
    return orjson.dumps(
        {
            "tenant_id": TENANT,
            "host": f"good-{i}",
            "metric": "cpu_load",
            "value": float(i),
            "ts_event": NOW - 1,
            "unit": "%",
            "tags": {"i": i},
        }
    )


# -- an independent statement of what a stored row may hold ---------------------------------
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@-]{0,254}\Z")


def _text_ok(s: object, free: bool) -> bool:
    if type(s) is not str:
        return False
    for ch in s:
        o = ord(ch)
        if 0xD800 <= o <= 0xDFFF or 0x7F <= o <= 0x9F:
            return False
        if o < 0x20 and not (free and ch in "\t\n\r"):
            return False
    return True


def assert_storable(b) -> None:
    """Every row survives PostgreSQL text/JSONB (no NUL, valid UTF-8) and orjson."""
    for col in (b.tenant_id, b.host, b.metric):
        for s in col:
            assert _NAME.match(s), s
    for s in b.event_id:
        assert _text_ok(s, free=False) and 0 < len(s) <= 128, s
        s.encode("utf-8")
    for s in b.unit:
        assert _text_ok(s, free=True), s
    assert np.isfinite(b.value).all() and np.isfinite(b.ts).all()
    assert b.value.dtype == np.float64
    for tg in b.tags:
        if tg is None:
            continue
        assert type(tg) is dict
        for k, v in tg.items():
            assert _text_ok(k, free=True), k
            assert v is None or type(v) in (str, int, float, bool), v
            if type(v) is str:
                assert _text_ok(v, free=True), v
            if type(v) is float:
                assert math.isfinite(v)
        orjson.loads(orjson.dumps(tg))  # raises on lone surrogates and 65-bit ints
    for e, t, h, m, u in zip(b.event_id, b.tenant_id, b.host, b.metric, b.unit, strict=True):
        orjson.dumps([e, t, h, m, u])


# -- the corpus -------------------------------------------------------------------------------


def test_corpus_covers_the_issue():
    names = {c.name for c in CORPUS}
    assert len(CORPUS) >= 40 and len(names) == len(CORPUS)
    assert len({c.raw for c in CORPUS}) == len(CORPUS), "raw bytes identify a case in the DLQ"
    assert {c.reason for c in CORPUS} - {None} <= REASONS
    assert sum(c.reason is None for c in CORPUS) >= 10
    listed = {  # the inputs issue 8 names, one case each at least
        "nul_in_unit",
        "nul_in_tag_value_short_message",
        "nul_in_tag_key",
        "nul_in_event_id",
        "nul_in_host",
        "nul_in_metric",
        "nul_in_tenant",
        "newline_suffix_host",
        "newline_suffix_metric",
        "newline_suffix_tenant",
        "lone_high_surrogate_in_unit",
        "lone_low_surrogate_in_unit",
        "lone_surrogate_in_tag_value",
        "lone_surrogate_in_event_id",
        "lone_surrogate_in_host",
        "message_2_050_000_bytes",
        "message_2_097_000_bytes",
        "value_400_digit_int",
        "value_negative_400_digit_int",
        "value_1e400",
        "value_nan_literal",
        "value_infinity_literal",
        "value_bool",
        "value_string",
        "value_null",
        "tags_nested_object",
        "tags_list",
        "too_many_tags_65",
        "tag_value_2000_bytes",
        "deep_nesting_100k",
        "invalid_utf8_in_string",
        "overlong_utf8_nul",
        "utf8_bom",
        "empty_message",
        "whitespace_only",
        "top_level_array",
        "top_level_string",
        "top_level_number",
        "ts_no_timezone",
        "ts_words",
        "ts_year_9999",
        "ts_epoch_1e20",
        "ts_huge_int",
        "unit_int",
        "event_id_int",
        "event_id_129_chars",
        "ansi_escape_in_host",
        "c1_escaped_in_host",
        "bell_in_metric",
        "unknown_tenant",
        "valid_emoji_cjk_tag_value",
        "valid_cjk_unit",
        "valid_backslash_quote_tab_in_tags",
        "valid_event_id_with_spaces",
        "valid_host_255_chars",
    }
    assert listed <= names, listed - names
    sizes = {c.name: len(c.raw) for c in CORPUS}
    assert 2_000_000 <= sizes["message_2_050_000_bytes"] <= 2_097_152
    assert 2_000_000 <= sizes["message_2_097_000_bytes"] <= 2_097_152


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_corpus_case_between_good_events(case):
    b, dead = normalizer()([good(0), case.raw, good(1)], TOPIC, [3, 3, 3], [10, 11, 12], now=NOW)
    if case.reason is None:
        assert dead == [], dead[0].detail
        assert len(b) == 3 and b.src.tolist() == [0, 1, 2]
    else:
        assert [d.reason for d in dead] == [case.reason], [d.detail for d in dead]
        d = dead[0]
        assert d.raw == case.raw and (d.topic, d.partition, d.offset) == (TOPIC, 3, 11)
        assert d.detail and len(d.detail) <= 500
        d.detail.encode("utf-8")  # no lone surrogate can reach a header or a text column
        assert "\x00" not in d.detail
        assert b.host.tolist() == ["good-0", "good-1"] and b.src.tolist() == [0, 2]
    assert_storable(b)


def test_whole_corpus_in_one_batch_each_case_once():
    raws = [r for i, c in enumerate(CORPUS) for r in (good(i), c.raw)]
    b, dead = normalizer()(raws, TOPIC, [0] * len(raws), list(range(len(raws))), now=NOW)
    got = {d.offset: d.reason for d in dead}
    assert len(got) == len(dead)
    want = {2 * i + 1: c.reason for i, c in enumerate(CORPUS) if c.reason}
    assert got == want
    stored = set(b.src.tolist())
    assert stored == set(range(len(raws))) - set(want)
    assert_storable(b)


def test_bad_text_detail_names_the_field():
    by = {c.name: c for c in CORPUS}
    n = normalizer()
    for name, field in [
        ("nul_in_unit", "unit"),
        ("nul_in_tag_key", "tag key"),
        ("nul_in_tag_value_short_message", "tag 'a' value"),
        ("nul_in_event_id", "event_id"),
        ("newline_suffix_host", "host"),
        ("lone_surrogate_in_host", "host"),
        ("nul_in_tenant", "tenant_id"),
        ("bell_in_metric", "metric"),
    ]:
        _, dead = n([by[name].raw], TOPIC, [0], [0], now=NOW)
        assert dead[0].detail.startswith(field), (name, dead[0].detail)


# -- regressions of issue 8 -------------------------------------------------------------------


def test_nul_in_tag_of_short_message_is_not_skipped_by_the_tag_fast_path():
    raw = orjson.dumps(
        {
            "tenant_id": TENANT,
            "host": "h",
            "metric": "m",
            "value": 1,
            "ts_event": NOW,
            "tags": {"a": "\x00"},
        }
    )
    assert len(raw) < 1024
    _, dead = normalizer()([raw], TOPIC, [0], [0], now=NOW)
    assert [d.reason for d in dead] == ["bad_text"]


def test_trailing_newline_in_names_is_refused_although_re_dollar_accepts_it():
    assert re.match(r"^[a-z]+$", "h\n")  # the pitfall
    for field in ("host", "metric", "tenant_id"):
        ev = {"tenant_id": TENANT, "host": "h", "metric": "m", "value": 1, "ts_event": NOW}
        ev[field] += "\n"
        n = Normalizer(NormalizeConfig(known_tenants=frozenset({TENANT, TENANT + "\n"})))
        _, dead = n([orjson.dumps(ev)], TOPIC, [0], [0], now=NOW)
        assert [d.reason for d in dead] == ["bad_text"], field


def test_400_digit_value_is_non_finite_and_spares_its_batch():
    raw = (
        b'{"tenant_id":"acme","host":"h","metric":"m","value":1'
        + b"0" * 399
        + b',"ts_event":%d}' % NOW
    )
    b, dead = normalizer()([good(0), raw, good(1)], TOPIC, [0] * 3, [0, 1, 2], now=NOW)
    assert [d.reason for d in dead] == ["non_finite"] and len(b) == 2


def test_4301_digit_value_beyond_int_str_limit_is_non_finite():
    raw = (
        b'{"tenant_id":"acme","host":"h","metric":"m","value":'
        + b"9" * 4301
        + b',"ts_event":%d}' % NOW
    )
    _, dead = normalizer()([raw], TOPIC, [0], [0], now=NOW)
    assert [d.reason for d in dead] == ["non_finite"]


def test_lone_surrogate_in_long_tag_value_does_not_raise():
    # the size check encoded the value strictly: UnicodeEncodeError took the batch down
    raw = json.dumps(
        {
            "tenant_id": TENANT,
            "host": "h",
            "metric": "m",
            "value": 1,
            "ts_event": NOW,
            "tags": {"a": "x" * 2000 + "\ud800"},
        }
    ).encode()
    b, dead = normalizer()([good(0), raw], TOPIC, [0, 0], [0, 1], now=NOW)
    assert [d.reason for d in dead] == ["tag_too_large"] and len(b) == 1


def test_ts_with_nul_is_refused_though_fromisoformat_stops_at_it():
    from datetime import datetime

    assert datetime.fromisoformat("2026-05-28T20:26:40Z\x00junk")  # the pitfall
    by = {c.name: c for c in CORPUS}
    _, dead = normalizer()([by["ts_nul_before_zone"].raw], TOPIC, [0], [0], now=NOW)
    assert [d.reason for d in dead] == ["bad_type"]


def test_decoders_refuse_raw_control_bytes_and_encoded_surrogates():
    """The premise of the cheap text check (normalize's module docstring): a forbidden
    character reaches a decoded string only through a backslash escape, a raw DEL or a raw C1."""
    n = normalizer()
    for c in range(0x20):
        raw = (
            b'{"tenant_id":"acme","host":"h","metric":"m","value":1,"ts_event":%d,"unit":"%c"}'
            % (NOW, c)
        )
        _, dead = n([raw], TOPIC, [0], [0], now=NOW)
        assert [d.reason for d in dead] == ["bad_json"], c
    for seq in (b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xc0\x80"):
        raw = (
            b'{"tenant_id":"acme","host":"h","metric":"m","value":1,"ts_event":%d,"unit":"%s"}'
            % (NOW, seq)
        )
        _, dead = n([raw], TOPIC, [0], [0], now=NOW)
        assert [d.reason for d in dead] == ["bad_encoding"], seq
    assert suspects([good(0), good(1)]) is None
    assert suspects([good(0), b'"\\u0000"', b"\x7f", "\u0085".encode()]) == [
        False,
        True,
        True,
        True,
    ]


# -- property test ----------------------------------------------------------------------------

_ALPHABET = [
    "\x00",
    "\n",
    "\t",
    "\r",
    "\x1b",
    "\x7f",
    "\x85",
    "\x9f",
    "\ud800",
    "\udfff",
    "\ud83d\udd25",
    "é",
    "漢",
    "\u2028",
    "\ufeff",
    "\\",
    '"',
    " ",
    "a",
    "Z",
    "0",
    "-",
    "/",
    ":",
    "@",
    ".",
    "_",
]
_SCALARS = [
    0,
    -1,
    1.5,
    1e308,
    -1e308,
    5e-324,
    2**63,
    2**64 - 1,
    2**64,
    -(2**63) - 1,
    10**400,
    float("nan"),
    float("inf"),
    True,
    None,
    "",
    "x" * 300,
    [],
    {},
    [1],
    {"a": 1},
]


def _mutate_text(rng: random.Random, s: str) -> str:
    k = rng.randrange(5)
    if k == 0:
        return s + rng.choice(_ALPHABET)
    if k == 1:
        i = rng.randrange(len(s) + 1)
        return s[:i] + rng.choice(_ALPHABET) + s[i:]
    if k == 2:
        return "".join(rng.choice(_ALPHABET) for _ in range(rng.randrange(1, 6)))
    if k == 3:
        return s * rng.choice([2, 50, 300])
    return ""


def _mutated_event(rng: random.Random) -> bytes:
    ev = {
        "tenant_id": TENANT,
        "host": f"h{rng.randrange(9)}",
        "metric": "cpu_load",
        "value": rng.uniform(-1e6, 1e6),
        "ts_event": NOW - rng.uniform(0, 1000),
        "unit": "ms",
        "tags": {"env": "prod", "k": "v"},
    }
    if rng.random() < 0.3:
        ev["event_id"] = f"id-{rng.randrange(10**9)}"
    for _ in range(rng.randrange(1, 4)):
        field = rng.choice(
            [
                "tenant_id",
                "host",
                "metric",
                "value",
                "ts_event",
                "unit",
                "tags",
                "event_id",
                "tagkey",
                "tagval",
            ]
        )
        if field == "tagkey":
            tags = ev["tags"] if isinstance(ev.get("tags"), dict) else {}
            tags[_mutate_text(rng, "k")] = "v"
            ev["tags"] = tags
        elif field == "tagval":
            tags = ev["tags"] if isinstance(ev.get("tags"), dict) else {}
            tags["k"] = _mutate_text(rng, "v") if rng.random() < 0.7 else rng.choice(_SCALARS)
            ev["tags"] = tags
        elif rng.random() < 0.25:
            ev[field] = rng.choice(_SCALARS)
        elif rng.random() < 0.1:
            ev.pop(field, None)
        elif isinstance(ev.get(field), str):
            ev[field] = _mutate_text(rng, ev[field])
        else:
            ev[field] = _mutate_text(rng, "x")
    # json.dumps writes lone surrogates as escapes, NaN/Infinity as literals, big ints in full
    raw = json.dumps(ev, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
    k = rng.randrange(6)
    if k == 0:  # byte-level damage
        b = bytearray(raw)
        for _ in range(rng.randrange(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        raw = bytes(b)
    elif k == 1:
        raw = raw[: rng.randrange(len(raw))]
    return raw


def _random_bytes(rng: random.Random) -> bytes:
    k = rng.randrange(3)
    if k == 0:
        return rng.randbytes(rng.randrange(0, 300))
    if k == 1:  # JSON-ish garbage
        return "".join(
            rng.choice('{}[]",:0123456789.eE-+ntrufalsNI\\u') for _ in range(rng.randrange(60))
        ).encode()
    return rng.choice(
        [b"[" * 3000, b"{" * 5000, b'{"a":' * 2000, b"\xef\xbb\xbf{}", b"\x00", b"null", b"1e999"]
    )


def test_property_total_and_each_input_once_and_rows_storable():
    rng = random.Random(20261201)
    n = normalizer()
    total = 0
    seen_reasons: set[str] = set()
    stored_n = 0
    for _ in range(25):
        raws = [
            _mutated_event(rng) if rng.random() < 0.7 else _random_bytes(rng) for _ in range(1000)
        ]
        raws += [good(i) for i in range(40)]
        rng.shuffle(raws)
        offs = list(range(total, total + len(raws)))
        b, dead = n(raws, TOPIC, [1] * len(raws), offs, now=NOW)  # must not raise
        kept = set(b.src.tolist())
        gone = [d.offset - total for d in dead]
        assert len(gone) == len(set(gone)), "an input dead-lettered twice"
        assert kept.isdisjoint(gone) and kept | set(gone) == set(range(len(raws)))
        for d in dead:
            assert d.raw == raws[d.offset - total] and d.reason in REASONS, (d.reason, d.detail)
            d.detail.encode("utf-8")
        assert_storable(b)
        seen_reasons.update(d.reason for d in dead)
        stored_n += len(b)
        total += len(raws)
    assert total >= 20_000
    # the generator reaches the interesting reasons and stores a fair share
    assert {
        "bad_text",
        "bad_json",
        "bad_encoding",
        "non_finite",
        "bad_tags",
        "bad_type",
    } <= seen_reasons
    assert stored_n > total * 0.1
