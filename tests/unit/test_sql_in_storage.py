"""SQL lives in storage/: the pipeline, the API, training and the CLI call its sink and
repositories (issue 9).

A statement run outside ``storage`` is found by its call (``.execute(``, ``.executemany(``,
``.copy("…``), not by guessing at SQL keywords in strings. (``registry`` creates the MLflow
stores' databases, which are not EventOps tables.)
"""

from __future__ import annotations

import re

import pytest

from core.settings import REPO_ROOT

_RUNS_SQL = re.compile(r"\.(execute|executemany)\(|\.copy\(\s*f?[\"']")


@pytest.mark.parametrize("package", ["pipeline", "notify", "serving", "training", "cli"])
def test_no_sql_outside_storage(package):
    found = [
        f"{path.relative_to(REPO_ROOT)}:{i}: {line.strip()}"
        for path in sorted((REPO_ROOT / package).rglob("*.py"))
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if _RUNS_SQL.search(line)
    ]
    assert found == []
