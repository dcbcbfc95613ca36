"""Helpers shared by the benchmarks: result files and throwaway databases/topics."""

from __future__ import annotations

import json
import statistics
import uuid
from contextlib import contextmanager
from pathlib import Path

from core.settings import Settings
from pipeline import kafka as kq
from storage.connect import connect
from storage.migrate import migrate

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, rows: list[dict]) -> Path:
    """Write ``[{"name","value","unit","baseline","ratio"}, …]`` and print it as a table."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(rows, indent=2) + "\n")
    for r in rows:
        base = (
            f"  baseline {r['baseline']:,.0f}  ratio {r['ratio']:.1f}x" if r.get("baseline") else ""
        )
        print(f"{r['name']:<48} {r['value']:>14,.0f} {r['unit']}{base}")
    print(f"-> {path}")
    return path


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


@contextmanager
def scratch(settings: Settings, partitions: int = 6):
    """A fresh migrated database and fresh topics, dropped afterwards."""
    sfx = uuid.uuid4().hex[:8]
    name = f"eventops_bench_{sfx}"
    admin = connect(settings, autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    s = settings.model_copy(
        update={
            "pg_database": name,
            "consumer_group_prefix": f"bench-{sfx}",
            **{
                f"topic_{k}": f"bench-{sfx}-{k}"
                for k in ("raw", "metric", "enriched", "score", "alert", "dlq")
            },
            "topic_partitions": partitions,
        }
    )
    try:
        with connect(s) as conn:
            migrate(conn)
        kq.create_topics(s)
        yield s
    finally:
        kq.delete_topics(s, kq.all_topics(s))
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
