"""Fixtures of the browser tests: a scratch database and the system Chromium (never downloaded)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.settings import REPO_ROOT, Settings
from storage.connect import connect
from storage.migrate import migrate

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
OUTPUT = REPO_ROOT / "tests" / "output"


@pytest.fixture(scope="session")
def e2e_settings() -> Iterator[Settings]:
    base = Settings()
    name = f"eventops_e2e_{uuid.uuid4().hex[:8]}"
    try:
        admin = connect(base, autocommit=True)
    except Exception as e:  # pragma: no cover
        pytest.fail(f"PostgreSQL not running ({e}); `make test` starts it")
    admin.execute(f'CREATE DATABASE "{name}"')
    s = base.model_copy(update={"pg_database": name, "sse_heartbeat_s": 1.0})
    with connect(s) as conn:
        migrate(conn)
    yield s
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(scope="module")
def browser():
    """Playwright's sync API runs an event loop in this thread while open: module scope only."""
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed (apt-get install chromium; `make setup` does it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def output_dir() -> Path:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    return OUTPUT
