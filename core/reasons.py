"""Every reason code a dead letter can carry (the ``reason`` header of ``ops.dlq.v1`` and the
``reason`` column of ``dead_letters``). README's DLQ section lists the same table.

A :class:`DlqReason` is a ``str``, so ``DlqReason.BAD_JSON == "bad_json"`` and it serializes as
its value.

>>> DlqReason.BAD_JSON == "bad_json", DlqReason("ts_too_old").stage
(True, 'detect')
>>> len(DlqReason) == len({r.value for r in DlqReason})
True
"""

from __future__ import annotations

from enum import StrEnum


class DlqReason(StrEnum):
    """Reason codes, grouped by the stage that gives them (:attr:`stage`)."""

    # --- normalize: the raw bytes are not a valid event -------------------------------------
    TOO_LARGE = "too_large"  #: message larger than ``max_message_bytes``
    BAD_ENCODING = "bad_encoding"  #: not UTF-8 (invalid, overlong, surrogates, > U+10FFFF)
    BAD_JSON = "bad_json"  #: not parseable as JSON (a UTF-8 BOM included; nesting too deep)
    NOT_OBJECT = "not_object"  #: JSON, but not an object
    MISSING_FIELD = "missing_field"  #: a required field is absent or null
    BAD_TYPE = "bad_type"  #: a field has the wrong type, or ``ts_event`` is not a time
    NON_FINITE = "non_finite"  #: value NaN/±inf or beyond float64, also after unit scaling
    BAD_TEXT = "bad_text"  #: NUL, a lone surrogate or a forbidden control character
    BAD_FIELD = "bad_field"  #: tenant/host/metric empty, too long or with forbidden characters
    BAD_EVENT_ID = "bad_event_id"  #: event_id given but not a string of 1..128 characters
    TS_OUT_OF_RANGE = "ts_out_of_range"  #: timestamp too far in the future or the past
    UNKNOWN_TENANT = "unknown_tenant"  #: tenant is not registered
    BAD_TAGS = "bad_tags"  #: tags not an object of string -> scalar (ints within 64 bits)
    TAG_TOO_LARGE = "tag_too_large"  #: a tag key/value longer than ``max_tag_value_bytes``
    TOO_MANY_TAGS = "too_many_tags"  #: more than ``max_tags`` tags
    # --- later stages ----------------------------------------------------------------------
    TS_TOO_OLD = "ts_too_old"  #: detect: behind a window that is already closed
    DUPLICATE_EVENT_ID = "duplicate_event_id"  #: sink: a different event stored under this id
    STORE_REFUSED = "store_refused"  #: sink: PostgreSQL refused the row's values
    # --- any stage -------------------------------------------------------------------------
    STAGE_ERROR = "stage_error"  #: a stage raised on this one event; the rest went on
    BAD_RECORD = "bad_record"  #: an intermediate topic's record does not decode

    @property
    def stage(self) -> str:
        """The stage that gives this reason (``any`` for the last two)."""
        return _STAGE.get(self, "normalize")


_STAGE = {
    DlqReason.TS_TOO_OLD: "detect",
    DlqReason.DUPLICATE_EVENT_ID: "sink",
    DlqReason.STORE_REFUSED: "sink",
    DlqReason.STAGE_ERROR: "any",
    DlqReason.BAD_RECORD: "any",
}
