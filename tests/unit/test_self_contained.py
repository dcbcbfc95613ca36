"""`make test` needs nothing beside the repository: no test reads the shared datasets.

Labelled series for tests come from the simulator or ``training.synthetic`` (NAB's layout);
NAB-style evaluation on outside data is ``make eval DATA=...``, a benchmark.
"""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
OUTSIDE = ("shared/datasets", 'shared" / "datasets', "nab-dev")


def test_no_test_reads_data_from_outside_the_repository():
    hits = [
        f"{p.relative_to(TESTS.parent)}: {needle}"
        for p in sorted(TESTS.rglob("*.py"))
        if p.resolve() != Path(__file__).resolve()
        for needle in OUTSIDE
        if needle in p.read_text(encoding="utf-8")
    ]
    assert not hits, f"tests reading data from outside the repository: {hits}"
