"""Dead letters can always be produced and stored: sizes consistent with the topics, headers
bounded and valid UTF-8 whatever the detail held (issue 8)."""

from __future__ import annotations

from core.batch import DETAIL_MAX_CHARS, DeadLetter, safe_detail
from core.settings import Settings
from pipeline import kafka as kq


def test_dlq_limit_exceeds_the_largest_record_an_input_topic_accepts():
    # the issue: a 2,000,000..2,097,152-byte input whose dead letter could not be produced
    assert kq.DLQ_MAX_MESSAGE_BYTES >= kq.TOPIC_MAX_MESSAGE_BYTES + 64 * 1024
    assert kq.producer_config(Settings())["message.max.bytes"] == kq.DLQ_MAX_MESSAGE_BYTES
    raw = b"x" * kq.TOPIC_MAX_MESSAGE_BYTES
    value, headers = kq.dead_letter_record(DeadLetter(raw, "too_large", "d" * 10_000, "t", 0, 7))
    assert value == raw  # the original bytes in full
    size = len(value) + sum(len(k) + len(v) for k, v in headers) + 512  # + record framing
    assert size < kq.DLQ_MAX_MESSAGE_BYTES
    assert "raw.truncated" not in dict(headers)


def test_dead_letter_beyond_the_dlq_limit_is_truncated_and_says_so():
    raw = b"y" * (kq.DLQ_MAX_MESSAGE_BYTES + 10)
    value, headers = kq.dead_letter_record(DeadLetter(raw, "too_large", "big", "t", 1, 2))
    h = dict(headers)
    assert h["raw.truncated"] == b"1" and int(h["raw.size"]) == len(raw)
    assert raw.startswith(value) and len(value) < kq.DLQ_MAX_MESSAGE_BYTES - 8192


def test_detail_header_is_bounded_valid_utf8_without_nul():
    nasty = "\x00\ud800 é漢🔥\x1b[31m" * 1000
    d = DeadLetter(b"", "stage_error", nasty, "t\udfff", 0, 0)
    h = dict(kq.dead_letter_headers(d))
    detail = h["detail"].decode("utf-8")  # strict: raises on invalid UTF-8
    assert len(detail) <= DETAIL_MAX_CHARS and "\x00" not in detail and "\x1b" not in detail
    assert detail.startswith("\\u0000\\ud800 é漢🔥\\u001b[31m")
    h["source.topic"].decode("utf-8")
    assert {"reason", "stage", "source.topic", "source.partition", "source.offset"} <= h.keys()


def test_safe_detail_keeps_ordinary_text():
    assert safe_detail("tag 'a' value holds U+0000 at 0") == "tag 'a' value holds U+0000 at 0"
    assert safe_detail("line1\nline2\ttab") == "line1\nline2\ttab"
    assert len(safe_detail("z" * 5000)) == DETAIL_MAX_CHARS
