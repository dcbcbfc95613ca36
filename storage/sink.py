"""The sink: the only writer of pipeline rows (metrics, features, scores, shadow scores, alerts,
alert events, dead letters of the embedded runner, checkpoints).

Every statement is parameterized. Metric rows are COPYed straight into ``metrics``; when that
hits an already-stored event id, the batch goes through a temporary staging table and
``INSERT … ON CONFLICT DO NOTHING`` instead, so a replayed batch writes nothing twice.
``metrics``, ``features``, ``scores`` and ``shadow_scores`` are time-partitioned
(:mod:`storage.partitions`); the column lists are :mod:`storage.schema`'s.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

import numpy as np
import orjson
import psycopg
from psycopg.types.json import Jsonb

from core.batch import DeadLetter, MetricBatch
from core.records import AlertEvent
from storage.checkpoints import Checkpoint, save_checkpoints
from storage.partitions import Partitions
from storage.schema import (
    CROSS_COLUMNS,
    FEATURE_COLUMNS,
    METRIC_COLUMNS,
    SCORE_COLUMN_TYPES,
    SCORE_COLUMNS,
    WINDOW_FEATURE_COLUMNS,
    WINDOW_KEY,
    feature_type,
)

log = logging.getLogger(__name__)


_STAGE_METRICS = """
CREATE TEMP TABLE IF NOT EXISTS metrics_stage (
    idx int4, event_id text, tenant_id text, host text, metric text,
    value float8, ts text, unit text, tags text
) ON COMMIT DELETE ROWS
"""
#: ``windows_stage`` columns after (tenant_id, host, metric, ws, we) and their binary COPY types
#: (JSON is staged as text and cast by the INSERT)
_STAGE_WINDOW_TYPES: tuple[tuple[str, str], ...] = (
    *((k, feature_type(k)) for k in FEATURE_COLUMNS),
    *((k, "text" if t == "jsonb" else t) for k, t in SCORE_COLUMN_TYPES),
    *((k, feature_type(k)) for k in CROSS_COLUMNS),
)
_STAGE_WINDOWS = (
    "CREATE TEMP TABLE IF NOT EXISTS windows_stage (tenant_id text, host text, metric text,"
    " ws float8, we float8, "
    + ", ".join(f"{k} {t}" for k, t in _STAGE_WINDOW_TYPES)
    + ") ON COMMIT DELETE ROWS"
)
_COPY_TYPES = ["int4", "text", "text", "text", "text", "float8", "text", "text", "text"]


_UNSAFE = re.compile(r"[\\\t\n\r]")

_METRIC_COLS = ", ".join(METRIC_COLUMNS)
_FEATURES_COLS = ", ".join(WINDOW_KEY + WINDOW_FEATURE_COLUMNS)
_SCORES_COLS = ", ".join(WINDOW_KEY + SCORE_COLUMNS)
_STAGE_COLS = "tenant_id, host, metric, ws, we, " + ", ".join(k for k, _ in _STAGE_WINDOW_TYPES)
_STAGE_COPY_TYPES = [
    "text",
    "text",
    "text",
    "float8",
    "float8",
    *(t for _, t in _STAGE_WINDOW_TYPES),
]
_COPY_WINDOWS_STAGE = f"COPY windows_stage ({_STAGE_COLS}) FROM STDIN (FORMAT BINARY)"
_INSERT_FEATURES = (
    f"INSERT INTO features ({_FEATURES_COLS}) SELECT tenant_id, host, metric, to_timestamp(ws),"
    f" to_timestamp(we), {', '.join(WINDOW_FEATURE_COLUMNS)} FROM windows_stage"
    " ON CONFLICT DO NOTHING"
)
_INSERT_SCORES = (
    f"INSERT INTO scores ({_SCORES_COLS}) SELECT tenant_id, host, metric, to_timestamp(ws),"
    " to_timestamp(we), "
    + ", ".join(f"{k}::jsonb" if t == "jsonb" else k for k, t in SCORE_COLUMN_TYPES)
    + " FROM windows_stage ON CONFLICT DO NOTHING"
)


def _optional_column(w, k: str) -> list[float | None]:
    """Column ``k`` of window rows ``w`` as floats, ``None`` for NaN or a missing column."""
    col = w.features.get(k)
    if col is None:
        return [None] * len(w)
    return [None if x != x else x for x in np.asarray(col, np.float64).tolist()]


_NULL = "\\N"


def _nullable(x: np.ndarray) -> list[float | None]:
    """float64 values as floats, ``None`` for NaN."""
    return [None if v != v else v for v in np.asarray(x, np.float64).tolist()]


def _score_values(w, dumps=orjson.dumps) -> dict[str, list]:
    """The ``scores`` columns of window rows ``w`` (:data:`SCORE_COLUMNS`), as Python values
    (``None``: NULL; JSON as text)."""
    return {
        "score": w.score.tolist(),
        "severity": list(w.severity),
        "components": [dumps(c).decode() for c in w.components],
        "actual": w.features["mean"].tolist(),
        "expected": _nullable(w.expected),
        "explanation": [dumps(e).decode() for e in w.explanation],
        "model_version": list(w.model_version),
        "typical_deviation": _nullable(w.scale),
        "confidence": _nullable(w.confidence),
        "warming": w.warming,
    }


def _copy_text(kind: str, xs: list) -> list[str]:
    """Values of a column of COPY type ``kind`` in COPY text format (NULL for None)."""
    if kind == "float8":
        return [_num(x) for x in xs]
    if kind == "bool":
        return [_NULL if x is None else "t" if x else "f" for x in xs]
    out = [_NULL if x is None else x for x in xs]
    # JSON text has no raw tab/newline (orjson escapes them), only backslashes to double
    if kind == "jsonb" and "\\" in "".join(out):
        out = [x.replace("\\", "\\\\") for x in out]
    return out


def _num(x: float | int | None) -> str:
    """A number in COPY text format (NULL for None/NaN)."""
    if x is None or x != x:
        return _NULL
    return repr(x)


def _iso_us(ts: np.ndarray) -> list[str]:
    """Epoch seconds (float64) as ISO-8601 UTC text truncated to microseconds.

    Both metric write paths store exactly these instants, so a replay compares equal.
    """
    return [
        d + "Z"
        for d in np.datetime_as_string((ts * 1e6).astype("datetime64[us]"), unit="us").tolist()
    ]


def _copy_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


#: errors that a row's values cause (not an outage): a refused row is isolated and dead-lettered
_ROW_ERRORS = (
    psycopg.errors.DataError,
    psycopg.errors.IntegrityError,
    psycopg.errors.ProgramLimitExceeded,
)


class Sink:
    """Writes batches in one transaction per call: metrics, alerts, alert events (outbox).

    Event ids are unique per tenant (within a partition of ``metrics``, see migration 008). A
    row whose tenant already stored the *same* event under its id (a replay: same host, metric,
    value and ts_event) is dropped; one whose tenant stored a *different* event under that id
    is not stored either, and its index in the batch is left in :attr:`collided` for the runner
    to dead-letter with reason ``duplicate_event_id``.
    """

    def __init__(self, conn: psycopg.Connection, partitions: Partitions | None = None) -> None:
        self.conn = conn
        self.partitions = partitions or Partitions()
        #: indices into the last written batch of rows refused as ``duplicate_event_id`` (int64)
        self.collided = np.empty(0, np.int64)
        #: indices into the last written batch of rows PostgreSQL itself refused (``store_refused``)
        self.refused = np.empty(0, np.int64)
        conn.execute(_STAGE_METRICS)
        conn.execute(_STAGE_WINDOWS)
        conn.commit()

    def ensure_partitions(self, batch: MetricBatch, windows=None) -> None:
        """Partitions for the time range of a batch's metrics and windows (no-op when known).

        :meth:`write` calls it too; a runner that wraps the write in a transaction of its own
        calls it before, so that partition DDL commits in a short transaction of its own.
        """
        p, conn = self.partitions, self.conn
        p.ensure(conn, "metrics", batch.ts)
        if windows is not None and len(windows):
            p.ensure(conn, "features", windows.start)
            p.ensure(conn, "scores", windows.start)
            shadow = windows.shadow_idx()
            if shadow.size:
                p.ensure(conn, "shadow_scores", windows.start[shadow])

    def write(
        self,
        batch: MetricBatch,
        alert_events: Iterable[AlertEvent] = (),
        windows=None,
        checkpoints: Iterable[Checkpoint] = (),
    ) -> tuple[int, list[AlertEvent]]:
        """Store a batch; returns (new metric rows, alert events newly stored with their ``seq``).

        Runs in one transaction: metrics, window features and scores, the challenger's shadow
        scores, alert transitions and the detect state checkpoints (with their offsets) are
        stored together or not at all.
        """
        alert_events, checkpoints = list(alert_events), list(checkpoints)
        self.collided = np.empty(0, np.int64)
        self.refused = np.empty(0, np.int64)
        self.ensure_partitions(batch, windows)
        try:
            return self._write_either(batch, alert_events, windows, checkpoints)
        except _ROW_ERRORS as e:
            # normalize makes every row storable; should one still be refused, it costs that
            # row (dead-lettered by the runner), not the batch and not the worker
            bad = self._refused_rows(batch) if len(batch) else np.empty(0, np.int64)
            if not bad.size:
                raise  # not a metric row: the windows or alerts of the batch
            log.error(
                "PostgreSQL refused %d of %d metric rows (%s); storing the others",
                bad.size,
                len(batch),
                str(e).strip().splitlines()[0][:200],
            )
            keep = np.ones(len(batch), bool)
            keep[bad] = False
            out = self._write_either(batch.take(keep), alert_events, windows, checkpoints)
            self.collided = np.flatnonzero(keep)[self.collided]
            self.refused = bad
            return out

    def _write_either(
        self, batch, alert_events, windows, checkpoints
    ) -> tuple[int, list[AlertEvent]]:
        try:
            # fast path: plain COPY into metrics; a replayed event violates the unique key ...
            return self._write(batch, alert_events, windows, checkpoints, fresh=True)
        except psycopg.errors.UniqueViolation:
            # ... and the whole batch is written again, skipping rows already stored
            log.info("replayed events in a batch of %d: writing with ON CONFLICT", len(batch))
            return self._write(batch, alert_events, windows, checkpoints, fresh=False)

    def _refused_rows(self, b: MetricBatch) -> np.ndarray:
        """Indices of the rows of ``b`` PostgreSQL refuses, found by bisection in a transaction
        that is rolled back (``k`` bad rows cost ``O(k log n)`` staging writes)."""
        bad: list[int] = []

        def probe(idx: np.ndarray) -> None:
            try:
                with self.conn.transaction():  # a savepoint per probe
                    self._write_metrics(b.take(idx))
            except _ROW_ERRORS:
                if idx.size == 1:
                    bad.append(int(idx[0]))
                    return
                h = idx.size // 2
                probe(idx[:h])
                probe(idx[h:])

        with self.conn.transaction(force_rollback=True):
            probe(np.arange(len(b)))
        self.collided = np.empty(0, np.int64)
        return np.asarray(sorted(bad), dtype=np.int64)

    def _write(
        self, batch, alert_events, windows, checkpoints, fresh: bool
    ) -> tuple[int, list[AlertEvent]]:
        with self.conn.transaction():
            if not len(batch):
                inserted = 0
            elif fresh:
                inserted = self._copy_metrics(batch)
            else:
                inserted = self._write_metrics(batch)
            if windows is not None and len(windows):
                if fresh:
                    self._copy_windows(windows)
                else:
                    self._write_windows(windows)
                shadow = windows.shadow_idx()
                if shadow.size:
                    self._write_shadow(windows, shadow, fresh)
            stored = self._write_alerts(alert_events) if alert_events else []
            save_checkpoints(self.conn, checkpoints)
        return inserted, stored

    def _copy_metrics(self, b: MetricBatch) -> int:
        """COPY (text) straight into ``metrics``; fails on the first already-stored event id."""
        ts = _iso_us(b.ts)
        dumps = orjson.dumps
        tags = ["{}" if not g else dumps(g).decode() for g in b.tags]
        eid, unit = b.event_id.tolist(), b.unit.tolist()
        # escaping is needed only for agent-given ids/units with tabs, newlines or backslashes
        # (tenant/host/metric are validated), checked once per batch, not per row
        if _UNSAFE.search("".join(eid)):
            eid = [_copy_escape(e) for e in eid]
        if _UNSAFE.search("".join(unit)):
            unit = [_copy_escape(u) for u in unit]
        if "\\" in "".join(tags):
            tags = [t.replace("\\", "\\\\") for t in tags]
        buf = "".join(
            [
                f"{e}\t{t}\t{h}\t{m}\t{v!r}\t{d}\t{u}\t{g}\n"
                for e, t, h, m, v, d, u, g in zip(
                    eid,
                    b.tenant_id,
                    b.host,
                    b.metric,
                    b.value.tolist(),
                    ts,
                    unit,
                    tags,
                    strict=True,
                )
            ]
        )
        with self.conn.cursor().copy(f"COPY metrics ({_METRIC_COLS}) FROM STDIN") as cp:
            cp.write(buf)
        return len(b)

    def _copy_windows(self, w) -> None:
        """COPY (text) straight into ``features`` and ``scores``; fails on an already-stored
        window."""
        ws = np.datetime_as_string((w.start * 1e6).astype("datetime64[us]"), unit="us").tolist()
        we = np.datetime_as_string((w.end * 1e6).astype("datetime64[us]"), unit="us").tolist()
        cols = [w.features[k].tolist() for k in FEATURE_COLUMNS]
        # nullable columns (migration 007): windows without them store NULL
        cols += [_optional_column(w, k) for k in CROSS_COLUMNS]
        keys = [
            f"{t}\t{h}\t{m}\t{a}Z\t{b}Z"
            for t, h, m, a, b in zip(w.tenant_id, w.host, w.metric, ws, we, strict=True)
        ]
        feats = "".join(
            [
                k + "".join(["\t" + _num(x) for x in vals]) + "\n"
                for k, vals in zip(keys, zip(*cols, strict=True), strict=True)
            ]
        )
        vals = _score_values(w)
        cols = [_copy_text(t, vals[k]) for k, t in SCORE_COLUMN_TYPES]
        scores = "".join(["\t".join(row) + "\n" for row in zip(keys, *cols, strict=True)])
        cur = self.conn.cursor()
        with cur.copy(f"COPY features ({_FEATURES_COLS}) FROM STDIN") as cp:
            cp.write(feats)
        with cur.copy(f"COPY scores ({_SCORES_COLS}) FROM STDIN") as cp:
            cp.write(scores)

    def _write_windows(self, w) -> None:
        """``features`` and ``scores`` rows of closed windows (idempotent on the window key)."""
        cur = self.conn.cursor()
        base = [
            np.asarray(
                w.features[k], np.int64 if feature_type(k) == "int4" else np.float64
            ).tolist()
            for k in FEATURE_COLUMNS
        ]
        start, end = w.start.tolist(), w.end.tolist()
        vals = _score_values(w)
        scores = [vals[k] for k in SCORE_COLUMNS]
        cross = [_optional_column(w, k) for k in CROSS_COLUMNS]
        with cur.copy(_COPY_WINDOWS_STAGE) as cp:
            cp.set_types(_STAGE_COPY_TYPES)
            for i in range(len(w)):
                cp.write_row(
                    (
                        w.tenant_id[i],
                        w.host[i],
                        w.metric[i],
                        start[i],
                        end[i],
                        *(c[i] for c in base),
                        *(c[i] for c in scores),
                        *(c[i] for c in cross),
                    )
                )
        cur.execute(_INSERT_FEATURES)
        cur.execute(_INSERT_SCORES)
        cur.execute("TRUNCATE windows_stage")

    def _write_shadow(self, w, idx: np.ndarray, fresh: bool) -> None:
        """``shadow_scores`` rows of the windows ``idx`` (COPY; ``ON CONFLICT`` on a replay).

        The champion's side of the comparison is the window's ``batch`` score component.
        """
        version = [w.shadow_version[i] for i in idx.tolist()]
        comp = [w.components[i] for i in idx.tolist()]
        champ_v = [w.model_version[i] for i in idx.tolist()]
        champ = [c.get("batch") for c in comp]
        score, raw = w.shadow_score[idx].tolist(), w.shadow_raw[idx].tolist()
        tenant, host, metric = w.tenant_id[idx], w.host[idx], w.metric[idx]
        cols = (
            "tenant_id, model_version, window_start, host, metric, window_end, score, raw,"
            " champion_version, champion_score"
        )
        cur = self.conn.cursor()
        if not fresh:
            nul = [None if x != x else x for x in raw]
            cur.execute(
                f"INSERT INTO shadow_scores ({cols}) SELECT t, v, to_timestamp(ws), h, m,"
                " to_timestamp(we), sc, r, cv, cs FROM unnest(%s::text[], %s::text[], %s::float8[],"
                " %s::text[], %s::text[], %s::float8[], %s::float8[], %s::float8[], %s::text[],"
                " %s::float8[]) AS u(t, v, ws, h, m, we, sc, r, cv, cs) ON CONFLICT DO NOTHING",
                (
                    tenant.tolist(),
                    version,
                    w.start[idx].tolist(),
                    host.tolist(),
                    metric.tolist(),
                    w.end[idx].tolist(),
                    score,
                    nul,
                    champ_v,
                    champ,
                ),
            )
            return
        ws = np.datetime_as_string(
            (w.start[idx] * 1e6).astype("datetime64[us]"), unit="us"
        ).tolist()
        we = np.datetime_as_string((w.end[idx] * 1e6).astype("datetime64[us]"), unit="us").tolist()
        if _UNSAFE.search("".join(version) + "".join(v or "" for v in champ_v)):
            version = [_copy_escape(v) for v in version]
            champ_v = [None if v is None else _copy_escape(v) for v in champ_v]
        buf = "".join(
            [
                f"{t}\t{v}\t{a}Z\t{h}\t{m}\t{b}Z\t{_num(sc)}\t{_num(r)}\t"
                f"{_NULL if cv is None else cv}\t{_num(cs)}\n"
                for t, v, a, h, m, b, sc, r, cv, cs in zip(
                    tenant, version, ws, host, metric, we, score, raw, champ_v, champ, strict=True
                )
            ]
        )
        with cur.copy(f"COPY shadow_scores ({cols}) FROM STDIN") as cp:
            cp.write(buf)

    def _write_metrics(self, b: MetricBatch) -> int:
        """Staging COPY + ``INSERT … ON CONFLICT DO NOTHING``; sets :attr:`collided`.

        No conflict target: the arbiter is the leaf partition's unique index on
        (tenant_id, event_id) (a partitioned table has no such index of its own). Rows go in
        batch order, so of two rows of one batch with one id the first is stored.
        """
        cur = self.conn.cursor()
        tags = [b"{}" if t is None else orjson.dumps(t) for t in b.tags]
        with cur.copy(
            "COPY metrics_stage (idx, event_id, tenant_id, host, metric, value, ts, unit, tags) "
            "FROM STDIN (FORMAT BINARY)"
        ) as cp:
            cp.set_types(_COPY_TYPES)
            for row in zip(
                range(len(b)),
                b.event_id,
                b.tenant_id,
                b.host,
                b.metric,
                b.value.tolist(),
                _iso_us(b.ts),
                b.unit,
                (t.decode() for t in tags),
                strict=True,
            ):
                cp.write_row(row)
        cur.execute(
            f"INSERT INTO metrics ({_METRIC_COLS}) "
            "SELECT event_id, tenant_id, host, metric, value, ts::timestamptz, unit, tags::jsonb "
            "FROM metrics_stage ORDER BY idx ON CONFLICT DO NOTHING"
        )
        n = cur.rowcount
        if n < len(b):
            self.collided = self._collisions(cur)
        cur.execute("TRUNCATE metrics_stage")
        return n

    @staticmethod
    def _collisions(cur) -> np.ndarray:
        """Staged rows with no stored twin: their tenant stored another event under their id.

        A twin has the same tenant, id, host, metric and value and a ts_event within 1 µs (rows
        written before migration 008 by ``to_timestamp`` may differ in the last microsecond). Tags
        are not compared: enrichment may have changed them between an event and its replay.
        The LATERAL … LIMIT 1 makes it one index probe per row (the leaf unique index, its
        partition found at run time from ts_event), whatever the planner thinks of the staging
        table's size.
        """
        rows = cur.execute(
            "SELECT s.idx FROM metrics_stage s LEFT JOIN LATERAL ("
            " SELECT 1 AS hit FROM metrics m WHERE m.tenant_id = s.tenant_id"
            " AND m.event_id = s.event_id AND m.host = s.host AND m.metric = s.metric"
            " AND m.value = s.value"
            " AND m.ts_event BETWEEN s.ts::timestamptz - interval '1 microsecond'"
            " AND s.ts::timestamptz + interval '1 microsecond' LIMIT 1) x ON true"
            " WHERE x.hit IS NULL ORDER BY s.idx"
        ).fetchall()
        return np.asarray([r[0] for r in rows], dtype=np.int64)

    def _write_alerts(self, events: list[AlertEvent]) -> list[AlertEvent]:
        """Store transitions (``alert_events`` + their ``alerts`` row); returns the new ones
        with their ``seq``. ``payload`` is :meth:`AlertEvent.to_dict`."""
        cur = self.conn.cursor()
        stored: list[AlertEvent] = []
        for ev in events:
            row = cur.execute(
                "INSERT INTO alert_events (event_key, alert_id, tenant_id, kind, payload) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (event_key) DO NOTHING RETURNING seq",
                (ev.event_key, ev.alert_id, ev.tenant_id, ev.kind, Jsonb(ev.to_dict())),
            ).fetchone()
            if row is None:
                continue  # replayed transition: already stored (and published)
            stored.append(ev.stored(row[0]))
            ts_event = ev.ts_event
            if ev.kind == "open":
                cur.execute(
                    "INSERT INTO alerts (alert_id, tenant_id, host, metric, value, severity,"
                    " ts_event, state, rule, threshold, message, score, explanation,"
                    " model_version,"
                    " opened_at, updated_at) VALUES (%s,%s,%s,%s,%s,%s,%s,'open',%s,%s,%s,%s,%s,%s,"
                    " to_timestamp(%s), %s) ON CONFLICT (alert_id) DO NOTHING",
                    (
                        ev.alert_id,
                        ev.tenant_id,
                        ev.host,
                        ev.metric,
                        ev.value,
                        ev.severity,
                        ts_event,
                        ev.rule,
                        ev.threshold,
                        ev.message,
                        ev.score,
                        Jsonb(ev.explanation),
                        ev.model_version,
                        ev.opened_at,
                        ts_event,
                    ),
                )
            else:
                cur.execute(
                    "UPDATE alerts SET severity = %s, value = %s, message = %s, score = %s,"
                    " threshold = %s, explanation = %s, updated_at = %s, state = %s,"
                    " resolved_at = CASE WHEN %s::text = 'resolved' THEN %s::timestamptz END"
                    " WHERE alert_id = %s AND updated_at <= %s",
                    (
                        ev.severity,
                        ev.value,
                        ev.message,
                        ev.score,
                        ev.threshold,
                        Jsonb(ev.explanation),
                        ts_event,
                        ev.state,
                        ev.state,
                        ts_event,
                        ev.alert_id,
                        ts_event,
                    ),
                )
        return stored

    def write_dead_letters(self, dead: Iterable[DeadLetter]) -> None:
        """Dead letters into ``dead_letters`` (the embedded runner's DLQ), in the caller's
        transaction."""
        with self.conn.cursor().copy(
            "COPY dead_letters (reason, detail, stage, source, raw) FROM STDIN"
        ) as cp:
            for d in dead:
                cp.write_row(
                    (d.reason, d.detail, d.stage, f"{d.topic}:{d.partition}:{d.offset}", d.raw)
                )

    def unpublished(self, limit: int = 10_000) -> list[AlertEvent]:
        """Alert events stored but not yet confirmed on the alert topic (outbox), with ``seq``."""
        rows = self.conn.execute(
            "SELECT seq, payload FROM alert_events WHERE published_at IS NULL"
            " ORDER BY seq LIMIT %s",
            (limit,),
        ).fetchall()
        self.conn.commit()
        return [AlertEvent.from_dict(p).stored(s) for s, p in rows]

    def mark_published(self, seqs: list[int]) -> None:
        if not seqs:
            return
        self.conn.execute(
            "UPDATE alert_events SET published_at = now() WHERE seq = ANY(%s)", (seqs,)
        )
        self.conn.commit()
