"""`eventops channels|silences|notify`: what an operator types, and one-line errors."""

from __future__ import annotations

import pytest

from tests.integration.conftest import settings_env
from tests.integration.test_cli_errors import eventops, one_line_error

pytestmark = pytest.mark.integration


def test_channels_silences_and_replay_from_the_cli(settings, tenant):
    env = settings_env(settings)
    r = eventops(
        [
            "channels",
            "add",
            "--tenant",
            tenant,
            "hook",
            "--kind",
            "webhook",
            "--url",
            "https://example.com/h",
            "--min-severity",
            "critical",
            "--match",
            "host=~web-.*",
        ],
        env,
    )
    assert r.code == 0, str(r)
    secret = r.out.strip().splitlines()[-1]
    assert secret.startswith("whsec_") and "not shown again" in r.err
    r = eventops(["channels", "list", "--tenant", tenant], env)
    assert "hook\twebhook" in r.out and secret not in r.out
    one_line_error(
        eventops(
            ["channels", "add", "--tenant", tenant, "hook", "--url", "https://example.com/h"], env
        ),
        2,
        "already has a channel",
    )
    one_line_error(
        eventops(["channels", "add", "--tenant", tenant, "x", "--url", "ftp://x"], env),
        2,
        "http(s)",
    )
    one_line_error(
        eventops(
            ["channels", "add", "--tenant", "nosuch-tenant", "x", "--url", "https://example.com"],
            env,
        ),
        2,
        "no tenant",
    )

    r = eventops(
        [
            "silences",
            "add",
            "--tenant",
            tenant,
            "--match",
            "host=web-1",
            "--duration",
            "2h",
            "--comment",
            "deploy",
        ],
        env,
    )
    assert r.code == 0 and "\tsilence\tactive\t" in r.out, str(r)
    sid = r.out.split("\t")[0]
    r = eventops(
        ["silences", "add", "--tenant", tenant, "--schedule", "0 2 * * 6", "--duration", "3h"], env
    )
    assert r.code == 0 and "\tmaintenance\t" in r.out, str(r)
    one_line_error(
        eventops(
            ["silences", "add", "--tenant", tenant, "--schedule", "nightly", "--duration", "1h"],
            env,
        ),
        2,
        "cron",
    )
    one_line_error(
        eventops(
            ["silences", "add", "--tenant", tenant, "--match", "host=~((", "--duration", "1h"], env
        ),
        2,
        "regex",
    )
    one_line_error(eventops(["silences", "add", "--tenant", tenant], env), 2, "needs an end")
    r = eventops(["silences", "list", "--tenant", tenant], env)
    assert sid in r.out and "deploy" in r.out
    assert eventops(["silences", "expire", "--tenant", tenant, sid], env).code == 0
    one_line_error(
        eventops(["silences", "expire", "--tenant", tenant, sid], env), 2, "no active silence"
    )
    r = eventops(["notify", "replay", "--tenant", tenant], env)
    assert r.code == 0 and "0 deliveries queued again" in r.out
    one_line_error(
        eventops(["notify", "replay", "--tenant", tenant, "--since", "yesterday"], env),
        2,
        "ISO 8601",
    )
