"""The compose stack's Prometheus and Grafana configuration (docker/prometheus, docker/grafana).

* ``docker/grafana/dashboards/eventops.json`` is a dashboard Grafana loads: unique panel ids,
  grid positions inside the 24 columns without overlaps, every query on the provisioned
  datasource (uid ``eventops-prometheus``), and every PromQL expression names only metrics
  EventOps exports (``KNOWN_METRICS``).
* ``docker/prometheus/prometheus.yml`` parses, and scrapes only services ``docker-compose.yml``
  defines, on the ports they serve; the scores job sends a key from the mounted secrets directory.
* the Grafana provisioning files point at the prometheus service and the mounted dashboards.
"""

from __future__ import annotations

import json
import re
from itertools import combinations
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "docker" / "grafana" / "dashboards" / "eventops.json"
PROMETHEUS_YML = REPO / "docker" / "prometheus" / "prometheus.yml"
PROVISIONING = REPO / "docker" / "grafana" / "provisioning"
COMPOSE_FILE = REPO / "docker-compose.yml"
DATASOURCE_UID = "eventops-prometheus"


# The metric names EventOps exposes: the health metrics defined in core.telemetry (the
# workers' /metrics and /prometheus/metrics), and the four /prometheus/scores builds per scrape.
def _health_metrics() -> dict[str, str]:
    from prometheus_client.metrics import MetricWrapperBase

    from core import telemetry

    out = {}
    for obj in vars(telemetry).values():
        if isinstance(obj, MetricWrapperBase):
            name = obj._name + ("_total" if obj._type == "counter" else "")
            out[name] = obj._type
    return out


SCORE_METRICS = frozenset(
    {
        "eventops_anomaly_score",
        "eventops_alert_open",
        "eventops_alerts_open",
        "eventops_anomaly_score_series_truncated",
    }
)
KNOWN_METRICS = frozenset(_health_metrics()) | SCORE_METRICS
HISTOGRAMS = frozenset(n for n, t in _health_metrics().items() if t == "histogram")
# the series names a query may use: histograms only through their _bucket/_sum/_count series
SERIES = (KNOWN_METRICS - HISTOGRAMS) | {
    h + suffix for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")
}

# PromQL words that are not metric names (functions, aggregations, operators, modifiers)
PROMQL_WORDS = frozenset(
    """sum min max avg count stddev stdvar topk bottomk quantile count_values group
    rate irate increase delta idelta deriv histogram_quantile abs ceil floor round clamp
    clamp_min clamp_max label_replace label_join vector scalar time timestamp absent
    absent_over_time avg_over_time max_over_time min_over_time sum_over_time count_over_time
    last_over_time changes resets sort sort_desc
    by without on ignoring group_left group_right bool and or unless offset""".split()
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_WORD = re.compile(r"(?<![\w.$])[A-Za-z_:][\w:]*")


def metric_names(expr: str) -> set[str]:
    """The series names an expression reads (label matchers, ranges and groupings removed)."""
    bare = _STRING.sub('""', expr)
    bare = _MATCHERS.sub("", bare)
    bare = _RANGE.sub("", bare)
    bare = _GROUPING.sub("", bare)
    return {w for w in _WORD.findall(bare) if w not in PROMQL_WORDS}


def test_metric_names_helper():
    expr = (
        "histogram_quantile(0.99, sum by (route, le) (rate(eventops_http_request_seconds_bucket"
        '{route="/x", job=~"a|b"}[$__rate_interval])))'
    )
    assert metric_names(expr) == {"eventops_http_request_seconds_bucket"}
    assert metric_names('topk(20, eventops_anomaly_score{tenant=~"$tenant"})') == {
        "eventops_anomaly_score"
    }
    assert metric_names("up == 1 offset 5m") == {"up"}


def load_yaml(path: Path) -> dict:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path}: not a YAML mapping"
    return data


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose() -> dict:
    # PyYAML resolves the file's anchors and `<<` merge keys like docker-compose does
    return load_yaml(COMPOSE_FILE)


def all_panels(dash: dict) -> list[dict]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # a collapsed row holds its panels
    return out


# --------------------------------------------------------------------------------------------
# the dashboard
# --------------------------------------------------------------------------------------------
def test_dashboard_identity_and_tenant_variable(dashboard: dict):
    assert dashboard["uid"] == "eventops-overview"
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    tenant = variables["tenant"]
    assert tenant["type"] == "query"
    assert tenant["datasource"]["uid"] == DATASOURCE_UID
    query = tenant["query"]["query"] if isinstance(tenant["query"], dict) else tenant["query"]
    assert query == "label_values(eventops_anomaly_score, tenant)"


def test_panels_have_unique_ids_and_grid_positions_that_do_not_overlap(dashboard: dict):
    panels = all_panels(dashboard)
    ids = [p.get("id") for p in panels]
    assert all(isinstance(i, int) for i in ids), ids
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    boxes = []
    for p in panels:
        pos = p["gridPos"]
        assert {"h", "w", "x", "y"} <= set(pos), f"panel {p['id']}: gridPos {pos}"
        assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] >= 0 and pos["y"] >= 0
        assert pos["x"] + pos["w"] <= 24, f"panel {p['id']} ends beyond column 24"
        boxes.append((p["id"], pos))
    for (i, a), (j, b) in combinations(boxes, 2):
        apart = (
            a["x"] + a["w"] <= b["x"]
            or b["x"] + b["w"] <= a["x"]
            or a["y"] + a["h"] <= b["y"]
            or b["y"] + b["h"] <= a["y"]
        )
        assert apart, f"panels {i} and {j} overlap"


def test_every_query_uses_the_provisioned_datasource_and_known_metrics(dashboard: dict):
    queried: set[str] = set()
    for p in all_panels(dashboard):
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == DATASOURCE_UID, f"panel {p['id']}"
        assert p["targets"], f"panel {p['id']} ({p['title']}) has no query"
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), f"panel {p['id']}: refIds {ref_ids}"
        for t in p["targets"]:
            assert t["datasource"]["uid"] == DATASOURCE_UID, f"panel {p['id']} {t['refId']}"
            names = metric_names(t["expr"])
            assert names, f"panel {p['id']}: {t['expr']!r} reads no metric"
            unknown = names - SERIES
            assert not unknown, f"panel {p['id']} ({p['title']}): unknown {sorted(unknown)}"
            queried |= names
    # the counters are shown as rates, not as raw totals
    for p in all_panels(dashboard):
        for t in p.get("targets", []):
            for name in metric_names(t["expr"]):
                if name.endswith(("_total", "_bucket")):
                    assert re.search(rf"\b(?:rate|increase)\(\s*{name}\b", t["expr"]), t["expr"]
    # every metric EventOps exports is on the dashboard (the histograms through _bucket)
    shown = {n.removesuffix("_bucket") for n in queried}
    assert KNOWN_METRICS <= shown, f"not on the dashboard: {sorted(KNOWN_METRICS - shown)}"


# --------------------------------------------------------------------------------------------
# Prometheus
# --------------------------------------------------------------------------------------------
def compose_mounts(service: dict) -> dict[str, str]:
    """container path -> host path of a service's bind mounts (`${VAR:-default}` -> default)."""
    out = {}
    for v in service.get("volumes", []):
        src, dst = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", v).split(":")[:2]
        out[dst] = src
    return out


def test_prometheus_yml_scrapes_services_of_the_compose_file(compose: dict):
    prom = load_yaml(PROMETHEUS_YML)
    services = compose["services"]
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert len(jobs) == len(prom["scrape_configs"]), "duplicate job_name"
    for name, job in jobs.items():
        for sc in job["static_configs"]:
            for target in sc["targets"]:
                host, port = target.rsplit(":", 1)
                if host == "localhost":
                    continue  # Prometheus itself
                assert host in services, f"job {name}: {host} is not a compose service"
                svc = services[host]
                env = svc.get("environment") or {}
                command = svc.get("command") or []
                if "EVENTOPS_WORKER_HEALTH_PORT" in env:
                    assert str(env["EVENTOPS_WORKER_HEALTH_PORT"]) == port, f"job {name}"
                    # reachable from the prometheus container, not only inside the worker's
                    assert env.get("EVENTOPS_WORKER_HEALTH_HOST") == "0.0.0.0", host
                    assert job.get("metrics_path", "/metrics") == "/metrics"
                else:
                    assert command[:1] == ["api"], f"job {name}: {host} is not the API"
                    assert command[command.index("--port") + 1] == port, f"job {name}"

    assert jobs["eventops-api"]["metrics_path"] == "/prometheus/metrics"
    workers = {
        t.split(":")[0] for sc in jobs["eventops-workers"]["static_configs"] for t in sc["targets"]
    }
    health = {
        n
        for n, s in services.items()
        if "EVENTOPS_WORKER_HEALTH_PORT" in (s.get("environment") or {})
    }
    assert workers == health, "every worker with a health port is scraped"

    scores = jobs["eventops-scores"]
    assert scores["metrics_path"] == "/prometheus/scores"
    key_file = scores["authorization"]["credentials_file"]
    assert "credentials" not in scores["authorization"], "keys live in the mounted file"
    mounts = compose_mounts(services["prometheus"])
    assert str(Path(key_file).parent) in mounts, f"{key_file} is not in a mounted directory"
    assert mounts["/etc/prometheus/prometheus.yml"] == "./docker/prometheus/prometheus.yml"
    secrets = REPO / mounts[str(Path(key_file).parent)]
    assert (secrets / ".gitignore").read_text().splitlines().count("*") == 1, "keys uncommitted"


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards(compose: dict):
    ds = load_yaml(PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    (prom,) = [d for d in ds if d["uid"] == DATASOURCE_UID]
    assert prom["type"] == "prometheus" and prom["url"] == "http://prometheus:9090"
    assert any(str(p).endswith(":9090") for p in compose["services"]["prometheus"]["ports"])

    (provider,) = load_yaml(PROVISIONING / "dashboards" / "eventops.yml")["providers"]
    path = provider["options"]["path"]
    assert path == "/var/lib/grafana/dashboards"
    mounts = compose_mounts(compose["services"]["grafana"])
    assert (REPO / mounts[path]).resolve() == DASHBOARD.parent
    assert (REPO / mounts["/etc/grafana/provisioning"]).resolve() == PROVISIONING


def test_added_ports_are_published_on_loopback_without_clashes(compose: dict):
    host_ports = []
    for name, svc in compose["services"].items():
        for p in svc.get("ports", []):
            ip, host_port, _ = str(p).split(":")
            assert ip == "127.0.0.1", f"{name}: {p}"
            host_ports.append(host_port)
    assert len(host_ports) == len(set(host_ports)), f"host ports clash: {sorted(host_ports)}"
