"""PostgreSQL for the pipeline: migrations, inventory/tenants snapshots and the sink's writes.

This is the only pipeline module that writes to PostgreSQL. Every statement is parameterized.
Metric rows go through ``COPY`` (binary) into a temporary staging table and then
``INSERT … ON CONFLICT (event_id) DO NOTHING``, so a replayed batch writes nothing twice.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import orjson
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from features.cross import CROSS_FEATURES
from pipeline.batch import MetricBatch
from pipeline.errors import ServiceError
from pipeline.settings import Settings

log = logging.getLogger(__name__)


def connect(settings: Settings, database: str | None = None, autocommit: bool = False) -> psycopg.Connection:
    try:
        return psycopg.connect(settings.pg_dsn(database), autocommit=autocommit, connect_timeout=10)
    except psycopg.OperationalError as e:
        raise ServiceError(
            f"PostgreSQL at {settings.pg_host}:{settings.pg_port} is not reachable "
            "(run `make services-up`)"
        ) from e


# --- migrations -----------------------------------------------------------------------------

def migrations() -> list[tuple[str, str]]:
    """(version, sql) of every migration shipped with the package, in order."""
    files = sorted(
        (p for p in resources.files("pipeline.migrations").iterdir() if p.name.endswith(".sql")),
        key=lambda p: p.name,
    )
    return [(p.name.removesuffix(".sql"), p.read_text()) for p in files]


def migrate(conn: psycopg.Connection) -> list[str]:
    """Apply the migrations not yet applied; returns their versions. Safe to run concurrently."""
    applied: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(727274)")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
        for version, text in migrations():
            if version in done:
                continue
            conn.execute(text)
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            applied.append(version)
    return applied


# --- reference data ---------------------------------------------------------------------------

def load_inventory(conn: psycopg.Connection) -> dict[tuple[str, str], dict]:
    rows = conn.execute("SELECT tenant_id, source_id, tags FROM inventory").fetchall()
    conn.commit()
    return {(t, s): tags for t, s, tags in rows}


def set_inventory(conn: psycopg.Connection, tenant: str, source: str, tags: dict, replace: bool = False) -> dict:
    """Upsert one inventory entry; merges into existing tags unless ``replace``."""
    merge = "EXCLUDED.tags" if replace else "inventory.tags || EXCLUDED.tags"
    row = conn.execute(
        "INSERT INTO inventory (tenant_id, source_id, tags) VALUES (%s, %s, %s) "
        f"ON CONFLICT (tenant_id, source_id) DO UPDATE SET tags = {merge}, updated_at = now() "
        "RETURNING tags",
        (tenant, source, Jsonb(tags)),
    ).fetchone()
    conn.commit()
    return row[0]


def delete_inventory(conn: psycopg.Connection, tenant: str, source: str) -> bool:
    n = conn.execute(
        "DELETE FROM inventory WHERE tenant_id = %s AND source_id = %s", (tenant, source)
    ).rowcount
    conn.commit()
    return n > 0


def load_tenants(conn: psycopg.Connection) -> frozenset[str]:
    rows = conn.execute("SELECT tenant_id FROM tenants").fetchall()
    conn.commit()
    return frozenset(r[0] for r in rows)


def create_tenant(conn: psycopg.Connection, tenant: str, name: str = "") -> bool:
    n = conn.execute(
        "INSERT INTO tenants (tenant_id, name) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        (tenant, name),
    ).rowcount
    conn.commit()
    return n > 0


def load_open_alerts(conn: psycopg.Connection) -> list[dict]:
    rows = conn.execute(
        "SELECT alert_id, tenant_id, host, metric, severity, "
        " extract(epoch FROM opened_at)::float8, extract(epoch FROM updated_at)::float8, rule "
        "FROM alerts WHERE state = 'open'"
    ).fetchall()
    conn.commit()
    return [
        dict(alert_id=a, tenant_id=t, host=h, metric=m, severity=s, opened_at=o, last_ts=u, rule=r)
        for a, t, h, m, s, o, u, r in rows
    ]


# --- sink -----------------------------------------------------------------------------------

_STAGE_METRICS = """
CREATE TEMP TABLE IF NOT EXISTS metrics_stage (
    event_id text, tenant_id text, host text, metric text,
    value float8, ts float8, unit text, tags text
) ON COMMIT DELETE ROWS
"""
_STAGE_WINDOWS = """
CREATE TEMP TABLE IF NOT EXISTS windows_stage (
    tenant_id text, host text, metric text, ws float8, we float8, count int4,
    mean float8, std float8, min float8, max float8, last float8, slope float8, change float8,
    gap float8, score float8, severity text, components text, actual float8, expected float8,
    explanation text, model_version text, host_metrics float8, host_deviating float8,
    host_max_z float8, host_mean_z float8
) ON COMMIT DELETE ROWS
"""
_COPY_TYPES = ["text", "text", "text", "text", "float8", "float8", "text", "text"]


_UNSAFE = re.compile(r"[\\\t\n\r]")


_FEATURE_COLS = ("count", "mean", "std", "min", "max", "last", "slope", "change", "gap")
#: nullable columns of ``features`` (migration 007); windows without them store NULL
_CROSS_COLS = CROSS_FEATURES


def _optional_column(w, k: str) -> list[float | None]:
    """Column ``k`` of window rows ``w`` as floats, ``None`` for NaN or a missing column."""
    col = w.features.get(k)
    if col is None:
        return [None] * len(w)
    return [None if x != x else x for x in np.asarray(col, np.float64).tolist()]


_NULL = "\\N"


def _num(x: float | int | None) -> str:
    """A number in COPY text format (NULL for None/NaN)."""
    if x is None or x != x:
        return _NULL
    return repr(x)


def _copy_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Detect state of one input partition and the offset it is valid up to (exclusive)."""

    group: str
    topic: str
    partition: int
    next_offset: int
    state: bytes


def save_checkpoints(conn: psycopg.Connection, cps: Iterable[Checkpoint]) -> None:
    for c in cps:
        conn.execute(
            "INSERT INTO checkpoints (consumer_group, topic, partition, next_offset, state, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, now()) ON CONFLICT (consumer_group, topic, partition)"
            " DO UPDATE SET next_offset = EXCLUDED.next_offset, state = EXCLUDED.state,"
            " updated_at = now()",
            (c.group, c.topic, c.partition, c.next_offset, c.state),
        )


def load_checkpoints(conn: psycopg.Connection, group: str, topic: str) -> dict[int, tuple[int, bytes]]:
    """partition -> (next offset, state) of a consumer group's checkpoints on a topic."""
    rows = conn.execute(
        "SELECT partition, next_offset, state FROM checkpoints WHERE consumer_group = %s AND topic = %s",
        (group, topic),
    ).fetchall()
    conn.commit()
    return {p: (o, bytes(st) if st is not None else None) for p, o, st in rows}


class Sink:
    """Writes batches in one transaction per call: metrics, alerts, alert events (outbox)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        conn.execute(_STAGE_METRICS)
        conn.execute(_STAGE_WINDOWS)
        conn.commit()

    def write(
        self, batch: MetricBatch, alert_events: Iterable[dict] = (), windows=None,
        checkpoints: Iterable[Checkpoint] = (),
    ) -> tuple[int, list[dict]]:
        """Store a batch; returns (new metric rows, alert events newly stored with their ``seq``).

        Runs in one transaction: metrics, window features and scores, the challenger's shadow
        scores, alert transitions and the detect state checkpoints (with their offsets) are
        stored together or not at all.
        """
        alert_events, checkpoints = list(alert_events), list(checkpoints)
        try:
            # fast path: plain COPY into metrics; a replayed event violates the unique key ...
            return self._write(batch, alert_events, windows, checkpoints, fresh=True)
        except psycopg.errors.UniqueViolation:
            # ... and the whole batch is written again, skipping rows already stored
            log.info("replayed events in a batch of %d: writing with ON CONFLICT", len(batch))
            return self._write(batch, alert_events, windows, checkpoints, fresh=False)

    def _write(self, batch, alert_events, windows, checkpoints, fresh: bool) -> tuple[int, list[dict]]:
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
        ts = np.datetime_as_string((b.ts * 1e6).astype("datetime64[us]"), unit="us").tolist()
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
        buf = "".join([
            f"{e}\t{t}\t{h}\t{m}\t{v!r}\t{d}Z\t{u}\t{g}\n"
            for e, t, h, m, v, d, u, g in zip(eid, b.tenant_id, b.host, b.metric, b.value.tolist(),
                                              ts, unit, tags, strict=True)
        ])
        with self.conn.cursor().copy(
            "COPY metrics (event_id, tenant_id, host, metric, value, ts_event, unit, tags) FROM STDIN"
        ) as cp:
            cp.write(buf)
        return len(b)

    def _copy_windows(self, w) -> None:
        """COPY (text) straight into ``features`` and ``scores``; fails on an already-stored window."""
        ws = np.datetime_as_string((w.start * 1e6).astype("datetime64[us]"), unit="us").tolist()
        we = np.datetime_as_string((w.end * 1e6).astype("datetime64[us]"), unit="us").tolist()
        cols = [w.features[k].tolist() for k in _FEATURE_COLS]
        cols += [_optional_column(w, k) for k in _CROSS_COLS]
        keys = [f"{t}\t{h}\t{m}\t{a}Z\t{b}Z" for t, h, m, a, b in
                zip(w.tenant_id, w.host, w.metric, ws, we, strict=True)]
        feats = "".join([
            k + "".join(["\t" + _num(x) for x in vals]) + "\n"
            for k, vals in zip(keys, zip(*cols, strict=True), strict=True)
        ])
        dumps = orjson.dumps
        comp = [dumps(c).decode() for c in w.components]
        expl = [dumps(e).decode() for e in w.explanation]
        if "\\" in "".join(comp) or "\\" in "".join(expl):
            comp = [c.replace("\\", "\\\\") for c in comp]
            expl = [e.replace("\\", "\\\\") for e in expl]
        mean = w.features["mean"].tolist()
        version = [_NULL if v is None else v for v in w.model_version]
        scores = "".join([
            f"{k}\t{_num(sc)}\t{sev}\t{c}\t{_num(a)}\t{_num(x)}\t{e}\t{v}\n"
            for k, sc, sev, c, a, x, e, v in zip(keys, w.score.tolist(), w.severity, comp, mean,
                                                 w.expected.tolist(), expl, version, strict=True)
        ])
        cur = self.conn.cursor()
        with cur.copy("COPY features (tenant_id, host, metric, window_start, window_end, "
                      + ", ".join(_FEATURE_COLS + _CROSS_COLS) + ") FROM STDIN") as cp:
            cp.write(feats)
        with cur.copy("COPY scores (tenant_id, host, metric, window_start, window_end, score, severity,"
                      " components, actual, expected, explanation, model_version) FROM STDIN") as cp:
            cp.write(scores)

    def _write_windows(self, w) -> None:
        """``features`` and ``scores`` rows of closed windows (idempotent on the window key)."""
        cur = self.conn.cursor()
        f = {k: w.features[k].tolist() for k in ("count", "mean", "std", "min", "max", "last",
                                                 "slope", "change", "gap")}
        start, end = w.start.tolist(), w.end.tolist()
        expected = [None if x != x else x for x in w.expected.tolist()]
        cross = [_optional_column(w, k) for k in _CROSS_COLS]
        xcols = ", ".join(_CROSS_COLS)
        dumps = orjson.dumps
        with cur.copy(
            "COPY windows_stage (tenant_id, host, metric, ws, we, count, mean, std, min, max, last,"
            " slope, change, gap, score, severity, components, actual, expected, explanation,"
            f" model_version, {xcols}) FROM STDIN (FORMAT BINARY)"
        ) as cp:
            cp.set_types(["text", "text", "text", "float8", "float8", "int4"] + ["float8"] * 8
                         + ["float8", "text", "text", "float8", "float8", "text", "text"]
                         + ["float8"] * len(_CROSS_COLS))
            for i in range(len(w)):
                cp.write_row((
                    w.tenant_id[i], w.host[i], w.metric[i], start[i], end[i], int(f["count"][i]),
                    f["mean"][i], f["std"][i], f["min"][i], f["max"][i], f["last"][i],
                    f["slope"][i], f["change"][i], float(f["gap"][i]), float(w.score[i]),
                    w.severity[i], dumps(w.components[i]).decode(), f["mean"][i], expected[i],
                    dumps(w.explanation[i]).decode(), w.model_version[i],
                    *(c[i] for c in cross),
                ))
        cur.execute(
            "INSERT INTO features (tenant_id, host, metric, window_start, window_end, count, mean,"
            f" std, min, max, last, slope, change, gap, {xcols}) SELECT tenant_id, host, metric,"
            " to_timestamp(ws), to_timestamp(we), count, mean, std, min, max, last, slope, change,"
            f" gap, {xcols} FROM windows_stage ON CONFLICT DO NOTHING"
        )
        cur.execute(
            "INSERT INTO scores (tenant_id, host, metric, window_start, window_end, score, severity,"
            " components, actual, expected, explanation, model_version) SELECT tenant_id, host,"
            " metric, to_timestamp(ws), to_timestamp(we), score, severity, components::jsonb,"
            " actual, expected, explanation::jsonb, model_version FROM windows_stage"
            " ON CONFLICT DO NOTHING"
        )
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
        cols = ("tenant_id, model_version, window_start, host, metric, window_end, score, raw,"
                " champion_version, champion_score")
        cur = self.conn.cursor()
        if not fresh:
            nul = [None if x != x else x for x in raw]
            cur.execute(
                f"INSERT INTO shadow_scores ({cols}) SELECT t, v, to_timestamp(ws), h, m,"
                " to_timestamp(we), sc, r, cv, cs FROM unnest(%s::text[], %s::text[], %s::float8[],"
                " %s::text[], %s::text[], %s::float8[], %s::float8[], %s::float8[], %s::text[],"
                " %s::float8[]) AS u(t, v, ws, h, m, we, sc, r, cv, cs) ON CONFLICT DO NOTHING",
                (tenant.tolist(), version, w.start[idx].tolist(), host.tolist(), metric.tolist(),
                 w.end[idx].tolist(), score, nul, champ_v, champ),
            )
            return
        ws = np.datetime_as_string((w.start[idx] * 1e6).astype("datetime64[us]"), unit="us").tolist()
        we = np.datetime_as_string((w.end[idx] * 1e6).astype("datetime64[us]"), unit="us").tolist()
        if _UNSAFE.search("".join(version) + "".join(v or "" for v in champ_v)):
            version = [_copy_escape(v) for v in version]
            champ_v = [None if v is None else _copy_escape(v) for v in champ_v]
        buf = "".join([
            f"{t}\t{v}\t{a}Z\t{h}\t{m}\t{b}Z\t{_num(sc)}\t{_num(r)}\t"
            f"{_NULL if cv is None else cv}\t{_num(cs)}\n"
            for t, v, a, h, m, b, sc, r, cv, cs in zip(tenant, version, ws, host, metric, we, score,
                                                       raw, champ_v, champ, strict=True)
        ])
        with cur.copy(f"COPY shadow_scores ({cols}) FROM STDIN") as cp:
            cp.write(buf)

    def _write_metrics(self, b: MetricBatch) -> int:
        cur = self.conn.cursor()
        tags = [b"{}" if t is None else orjson.dumps(t) for t in b.tags]
        with cur.copy(
            "COPY metrics_stage (event_id, tenant_id, host, metric, value, ts, unit, tags) "
            "FROM STDIN (FORMAT BINARY)"
        ) as cp:
            cp.set_types(_COPY_TYPES)
            value = b.value.tolist()
            ts = b.ts.tolist()
            for row in zip(b.event_id, b.tenant_id, b.host, b.metric, value, ts, b.unit,
                           (t.decode() for t in tags), strict=True):
                cp.write_row(row)
        cur.execute(
            "INSERT INTO metrics (event_id, tenant_id, host, metric, value, ts_event, unit, tags) "
            "SELECT event_id, tenant_id, host, metric, value, to_timestamp(ts), unit, tags::jsonb "
            "FROM metrics_stage ON CONFLICT (event_id) DO NOTHING"
        )
        n = cur.rowcount
        cur.execute("TRUNCATE metrics_stage")
        return n

    def _write_alerts(self, events: list[dict]) -> list[dict]:
        cur = self.conn.cursor()
        stored: list[dict] = []
        for ev in events:
            payload = {k: v for k, v in ev.items() if k not in ("ts",)}
            row = cur.execute(
                "INSERT INTO alert_events (event_key, alert_id, tenant_id, kind, payload) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (event_key) DO NOTHING RETURNING seq",
                (ev["event_key"], ev["alert_id"], ev["tenant_id"], ev["kind"], Jsonb(payload)),
            ).fetchone()
            if row is None:
                continue  # replayed transition: already stored (and published)
            ev = {**payload, "seq": row[0]}
            stored.append(ev)
            if ev["kind"] == "open":
                cur.execute(
                    "INSERT INTO alerts (alert_id, tenant_id, host, metric, value, severity, ts_event,"
                    " state, rule, threshold, message, score, explanation, model_version,"
                    " opened_at, updated_at) VALUES (%s,%s,%s,%s,%s,%s,%s,'open',%s,%s,%s,%s,%s,%s,"
                    " to_timestamp(%s), %s) ON CONFLICT (alert_id) DO NOTHING",
                    (ev["alert_id"], ev["tenant_id"], ev["host"], ev["metric"], ev["value"],
                     ev["severity"], ev["ts_event"], ev["rule"], ev["threshold"], ev["message"],
                     ev["score"], Jsonb(ev["explanation"]), ev["model_version"], ev["opened_at"],
                     ev["ts_event"]),
                )
            else:
                cur.execute(
                    "UPDATE alerts SET severity = %s, value = %s, message = %s, score = %s,"
                    " threshold = %s, explanation = %s, updated_at = %s, state = %s,"
                    " resolved_at = CASE WHEN %s::text = 'resolved' THEN %s::timestamptz END"
                    " WHERE alert_id = %s AND updated_at <= %s",
                    (ev["severity"], ev["value"], ev["message"], ev["score"], ev["threshold"],
                     Jsonb(ev["explanation"]), ev["ts_event"], ev["state"], ev["state"],
                     ev["ts_event"], ev["alert_id"], ev["ts_event"]),
                )
        return stored

    def unpublished(self, limit: int = 10_000) -> list[dict]:
        """Alert events stored but not yet confirmed on the alert topic (outbox)."""
        rows = self.conn.execute(
            "SELECT seq, payload FROM alert_events WHERE published_at IS NULL ORDER BY seq LIMIT %s",
            (limit,),
        ).fetchall()
        self.conn.commit()
        return [{**p, "seq": s} for s, p in rows]

    def mark_published(self, seqs: list[int]) -> None:
        if not seqs:
            return
        self.conn.execute(
            "UPDATE alert_events SET published_at = now() WHERE seq = ANY(%s)", (seqs,)
        )
        self.conn.commit()


def count_rows(conn: psycopg.Connection, table: str, where: str = "", params: Any = ()) -> int:
    q = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
    if where:
        q = q + sql.SQL(" WHERE ") + sql.SQL(where)
    n = conn.execute(q, params).fetchone()[0]
    conn.commit()
    return int(n)

