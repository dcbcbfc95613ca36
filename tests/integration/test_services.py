"""The local service scripts and the compose file that mirrors them.

* ``docker-compose.yml`` validates with Debian's ``docker-compose`` 1.29 (installed by
  ``make setup``; no Docker engine is needed for ``config``), lists every service of the stack,
  builds every app service from the one ``Dockerfile`` and publishes ports on loopback only.
* ``scripts/services.sh`` (which ``make test`` runs before the suite) is idempotent: ``up`` on
  running services exits 0 quickly and ``status`` reports both services up. The services are
  never stopped here: other tests and the developer's session use them.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
import yaml
from confluent_kafka.admin import AdminClient

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
SERVICES_SH = REPO / "scripts" / "services.sh"

APP_SERVICES = {
    "topics-init": ["topics", "create"],
    "migrate": ["db", "migrate"],
    "mlflow": None,  # runs `mlflow server` from the app image (entrypoint override)
    "worker-normalize": ["worker", "normalize"],
    "worker-enrich": ["worker", "enrich"],
    "worker-detect": ["worker", "detect"],
    "worker-sink": ["worker", "sink"],
    "worker-notify": ["worker", "notify"],
    "api": ["api", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"],
}
INFRA_SERVICES = {"redpanda", "postgres", "ui", "alertmanager"}
APP_ENV = (
    "EVENTOPS_PG_HOST",
    "EVENTOPS_PG_PORT",
    "EVENTOPS_KAFKA_BOOTSTRAP",
    "MLFLOW_TRACKING_URI",
)

PG_PORT = int(os.environ.get("EVENTOPS_PG_PORT", "55432"))
KAFKA_PORT = int(os.environ.get("EVENTOPS_KAFKA_PORT", "59092"))


def run(args: list[str], timeout: float, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout, **kw)


def compose(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    # Debian's docker-compose 1.29 (`apt-get install docker-compose`, done by `make setup`)
    return run(["docker-compose", "-f", str(COMPOSE_FILE), *args], timeout=timeout)


@pytest.fixture(scope="module")
def resolved_compose() -> dict:
    """The compose file as docker-compose resolves it (anchors/merge keys expanded)."""
    r = compose("config")
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)


# --------------------------------------------------------------------------------------------
# docker-compose.yml
# --------------------------------------------------------------------------------------------
def test_compose_config_is_valid_for_docker_compose_1_29():
    r = compose("config", "-q")
    assert r.returncode == 0, f"docker-compose config -q failed:\n{r.stdout}\n{r.stderr}"
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    assert "name" not in raw, "docker-compose 1.29 rejects a top-level `name:`"
    assert str(raw.get("version", "")).startswith("3"), 'use a version: "3.x" file'


def test_compose_lists_every_service(resolved_compose: dict):
    services = set(resolved_compose["services"])
    missing = (set(APP_SERVICES) | INFRA_SERVICES) - services
    assert not missing, f"services missing from docker-compose.yml: {sorted(missing)}"


def test_app_services_share_one_image_built_from_the_dockerfile(resolved_compose: dict):
    svcs = resolved_compose["services"]
    images = set()
    for name, command in APP_SERVICES.items():
        svc = svcs[name]
        build = svc.get("build")
        assert build, f"{name}: no build section"
        assert Path(build["context"]).resolve() == REPO, f"{name}: build context {build['context']}"
        assert build.get("dockerfile", "Dockerfile") == "Dockerfile", name
        images.add(svc.get("image"))
        if command is not None:
            assert svc.get("command") == command, f"{name}: command {svc.get('command')}"
        env = svc.get("environment") or {}
        for k in APP_ENV:
            assert k in env, f"{name}: env {k} missing"
        assert env["EVENTOPS_PG_HOST"] == "postgres"
        assert str(env["EVENTOPS_PG_PORT"]) == "5432"
        assert env["EVENTOPS_KAFKA_BOOTSTRAP"] == "redpanda:9092"
    assert len(images) == 1, f"app services use different images: {images}"

    mlflow = svcs["mlflow"]
    assert mlflow.get("entrypoint") == ["mlflow"]
    cmd = mlflow["command"]
    assert cmd[0] == "server"
    assert "postgresql+psycopg://eventops:eventops@postgres:5432/mlflow" in cmd
    assert cmd[cmd.index("--workers") + 1] == "1"


def test_compose_dependencies_wait_for_health_and_one_shot_jobs(resolved_compose: dict):
    svcs = resolved_compose["services"]

    def cond(svc: str, dep: str) -> str:
        return svcs[svc]["depends_on"][dep]["condition"]

    assert cond("topics-init", "redpanda") == "service_healthy"
    assert cond("migrate", "postgres") == "service_healthy"
    for w in ("worker-normalize", "worker-enrich", "worker-detect", "worker-sink"):
        assert cond(w, "topics-init") == "service_completed_successfully"
        assert cond(w, "migrate") == "service_completed_successfully"
    assert cond("api", "migrate") == "service_completed_successfully"
    for name in ("redpanda", "postgres", "mlflow", "api"):
        assert svcs[name].get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
    assert "/healthz" in " ".join(svcs["api"]["healthcheck"]["test"])
    assert svcs["postgres"]["image"].startswith("postgres:16")
    assert svcs["redpanda"]["image"].startswith("docker.redpanda.com/redpandadata/redpanda")


def test_compose_publishes_ports_on_loopback_only(resolved_compose: dict):
    published = 0
    for name, svc in resolved_compose["services"].items():
        for p in svc.get("ports", []):
            # 1.29 prints either "127.0.0.1:8000:8000" or a long-syntax dict
            host_ip = p.get("host_ip") if isinstance(p, dict) else str(p).rsplit(":", 2)[0]
            assert host_ip == "127.0.0.1", f"{name}: port {p} is not bound to loopback"
            published += 1
    assert published >= 4


def test_dockerfile_installs_the_project_as_non_root_with_eventops_entrypoint():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"pip install .*\.(\s|$)", text)
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and not user[-1].startswith(("root", "0")), "image must run as a non-root user"
    assert re.search(r'^ENTRYPOINT \["eventops"\]', text, re.M)


def test_nginx_conf_and_postgres_init_exist():
    conf = (REPO / "docker" / "nginx.conf").read_text()
    assert "proxy_pass http://" in conf and "proxy_buffering off" in conf
    init = "\n".join(p.read_text() for p in (REPO / "docker" / "postgres-init").glob("*.sql"))
    assert re.search(r"CREATE DATABASE mlflow", init, re.I)


# --------------------------------------------------------------------------------------------
# scripts/services.sh against the running services
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def services_up() -> None:
    """The test run starts the services (make test); `up` here is a no-op when they run."""
    r = run(["bash", str(SERVICES_SH), "up"], timeout=300)
    assert r.returncode == 0, f"services.sh up failed:\n{r.stdout}\n{r.stderr}"


def test_services_up_is_idempotent_and_fast(services_up):
    t0 = time.monotonic()
    r = run(["bash", str(SERVICES_SH), "up"], timeout=60)
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, f"second `up` failed:\n{r.stdout}\n{r.stderr}"
    assert "already up" in r.stderr, r.stderr
    assert "starting" not in r.stderr, f"`up` restarted something:\n{r.stderr}"
    assert elapsed < 10, f"`up` on running services took {elapsed:.1f}s"


def test_services_status_reports_both_up(services_up):
    r = run(["bash", str(SERVICES_SH), "status"], timeout=30)
    assert r.returncode == 0, f"status:\n{r.stdout}\n{r.stderr}"
    assert re.search(rf"^postgres:\s+up\s+127\.0\.0\.1:{PG_PORT}\b", r.stdout, re.M), r.stdout
    assert re.search(rf"^kafka:\s+up\s+127\.0\.0\.1:{KAFKA_PORT}\b", r.stdout, re.M), r.stdout
    assert re.search(r"^alertmanager:\s+up\s+127\.0\.0\.1:\d+\b", r.stdout, re.M), r.stdout


def test_services_accept_the_documented_credentials(services_up):
    for dbname in ("eventops", "mlflow"):
        with psycopg.connect(
            host="127.0.0.1",
            port=PG_PORT,
            user="eventops",
            password="eventops",
            dbname=dbname,
            connect_timeout=10,
        ) as conn:
            row = conn.execute(
                "SELECT current_database(), current_setting('fsync'), "
                "current_setting('synchronous_commit')"
            ).fetchone()
            assert row == (dbname, "on", "on"), row
    md = AdminClient({"bootstrap.servers": f"127.0.0.1:{KAFKA_PORT}"}).list_topics(timeout=15)
    assert md.brokers, "Kafka answered without brokers"


def test_topics_are_created_and_deleted(base_settings):
    """create_topics makes every topic with its partitions; delete_topics really removes them
    (an admin client dropped while its requests are in flight never resolves them)."""
    import uuid

    from pipeline import kafka as kq
    from tests.integration.conftest import wait_for

    sfx = uuid.uuid4().hex[:8]
    s = base_settings.model_copy(
        update={
            **{
                f"topic_{k}": f"td-{sfx}-{k}"
                for k in ("raw", "metric", "enriched", "score", "alert", "dlq")
            },
            "topic_partitions": 2,
        }
    )
    names = kq.all_topics(s)
    a = AdminClient({"bootstrap.servers": s.kafka_bootstrap})
    assert sorted(kq.create_topics(s)) == sorted(names)
    md = a.list_topics(timeout=15).topics
    assert all(len(md[t].partitions) == 2 for t in names)
    assert kq.create_topics(s) == []  # idempotent
    assert kq.delete_topics(s, names) == []
    wait_for(lambda: not set(names) & set(a.list_topics(timeout=15).topics), 30, what="topics gone")
    assert kq.delete_topics(s, names[:1]) == []  # already gone: not an error
