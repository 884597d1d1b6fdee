"""deploy/: the Grafana dashboard against deploy/metrics.md, and the Prometheus, Grafana and
KubeRay files parsed as their tools would (promtool itself when it is on PATH)."""

import json
import re
import shlex
import shutil
import subprocess
from itertools import combinations
from pathlib import Path

import pytest
import yaml

from pope.config import load_config

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "pope_dashboard.json"
METRICS_DOC = DEPLOY / "metrics.md"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
ROWS = ["Buffer lag", "Staleness", "Throughput", "Learning", "Learner time", "Verifier"]
DATASOURCE_REFS = {"${datasource}", "$datasource"}
METRIC_NAME = re.compile(r"pope_[a-z_]+")
HISTOGRAM_SERIES = re.compile(r"_(bucket|sum|count)$")
GRID_WIDTH = 24


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _all_panels(dashboard: dict) -> list[dict]:
    """Every panel, rows included, and the panels a collapsed row holds."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def _query_panels(dashboard: dict) -> list[dict]:
    return [p for p in _all_panels(dashboard) if p["type"] != "row"]


def _exprs(dashboard: dict) -> list[str]:
    return [t["expr"] for p in _query_panels(dashboard) for t in p.get("targets", []) if t.get("expr")]


def _uid(ref) -> str:
    """A panel's or target's data source: a {type, uid} object, or a plain string in older schemas."""
    return ref.get("uid", "") if isinstance(ref, dict) else (ref or "")


def _documented_metrics() -> set[str]:
    """Names that have their own table row in deploy/metrics.md."""
    return set(re.findall(r"^\| `(pope_[a-z_]+)` \|", METRICS_DOC.read_text(), flags=re.MULTILINE))


# -- the dashboard ----------------------------------------------------------------------------------


def test_dashboard_is_a_grafana_dashboard(dashboard):
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] and dashboard["title"]
    assert _query_panels(dashboard)


def test_dashboard_has_datasource_and_run_id_variables(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    run_id = variables["run_id"]
    query = run_id["query"]["query"] if isinstance(run_id["query"], dict) else run_id["query"]
    assert query == "label_values(pope_broker_consumer_lag_entries, run_id)"
    assert _uid(run_id["datasource"]) in DATASOURCE_REFS


def test_every_panel_uses_the_datasource_variable(dashboard):
    for panel in _query_panels(dashboard):
        assert _uid(panel.get("datasource")) in DATASOURCE_REFS, panel["title"]
        for target in panel["targets"]:
            if "datasource" in target:
                assert _uid(target["datasource"]) in DATASOURCE_REFS, panel["title"]


def test_rows_start_with_buffer_lag(dashboard):
    rows = [p for p in dashboard["panels"] if p["type"] == "row"]
    assert rows[0]["title"] == "Buffer lag"
    assert [r["title"] for r in rows] == ROWS
    assert [r["gridPos"]["y"] for r in rows] == sorted(r["gridPos"]["y"] for r in rows)
    assert dashboard["panels"][0] is rows[0], "the first row must be the top of the dashboard"


def test_every_panel_has_a_query_filtered_by_run(dashboard):
    for panel in _query_panels(dashboard):
        exprs = [t.get("expr", "").strip() for t in panel.get("targets", [])]
        assert any(exprs), f"panel {panel['title']!r} has no query"
        for expr in filter(None, exprs):
            assert expr.count("pope_") == expr.count('run_id="$run_id"'), (
                f"panel {panel['title']!r}: every metric must be filtered by run_id: {expr}"
            )


def test_every_metric_on_the_dashboard_is_documented(dashboard):
    documented = _documented_metrics()
    assert len(documented) >= 20, "deploy/metrics.md lost its tables"
    used = {
        HISTOGRAM_SERIES.sub("", name) for expr in _exprs(dashboard) for name in METRIC_NAME.findall(expr)
    }
    assert used, "no pope_ metric found in the dashboard's queries"
    assert used - documented == set(), "used on the dashboard but not in deploy/metrics.md"


def _layout_groups(dashboard: dict) -> list[list[dict]]:
    """Panels Grafana lays out together: the top level, and the panels of each collapsed row."""
    groups = [dashboard["panels"]]
    groups += [p["panels"] for p in dashboard["panels"] if p["type"] == "row" and p.get("panels")]
    return groups


def test_panels_have_grid_positions_that_do_not_overlap(dashboard):
    for group in _layout_groups(dashboard):
        boxes = []
        for panel in group:
            grid = panel["gridPos"]
            x, y, w, h = (grid[k] for k in ("x", "y", "w", "h"))
            assert all(isinstance(v, int) for v in (x, y, w, h)), panel["title"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= GRID_WIDTH, panel["title"]
            boxes.append((panel["title"], x, y, w, h))
        for (a, ax, ay, aw, ah), (b, bx, by, bw, bh) in combinations(boxes, 2):
            apart = ax + aw <= bx or bx + bw <= ax or ay + ah <= by or by + bh <= ay
            assert apart, f"panels {a!r} and {b!r} overlap"


def test_dashboard_promql_parses(dashboard, tmp_path):
    """promtool parses each query as a recording rule (Grafana's variables filled in)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not on PATH (Debian: apt-get install prometheus)")
    fill = {"$run_id": "r", "$__rate_interval": "1m", "$__interval": "5s", "$__range": "1h"}
    rules = []
    for i, expr in enumerate(_exprs(dashboard)):
        for variable, value in fill.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard_expr_{i}", "expr": expr})
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# -- Prometheus and Grafana provisioning ------------------------------------------------------------


def _job(config: dict, name: str) -> dict:
    return next(j for j in config["scrape_configs"] if j["job_name"] == name)


def test_prometheus_scrapes_ray_discovery_and_the_pope_exporter():
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert config["global"]["scrape_interval"] == "5s"
    ray_files = [f for sd in _job(config, "ray")["file_sd_configs"] for f in sd["files"]]
    assert "/tmp/ray/prom_metrics_service_discovery.json" in ray_files
    pope = _job(config, "pope")
    assert pope.get("metrics_path", "/metrics") == "/metrics"
    pope_files = [PROMETHEUS.parent / f for sd in pope["file_sd_configs"] for f in sd["files"]]
    assert pope_files == [DEPLOY / "prometheus" / "pope_targets.json"]
    targets = [t for group in json.loads(pope_files[0].read_text()) for t in group["targets"]]
    assert targets == ["localhost:9464"]


def test_promtool_accepts_the_prometheus_config():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not on PATH (Debian: apt-get install prometheus)")
    result = subprocess.run([promtool, "check", "config", str(PROMETHEUS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_provisioning():
    provisioning = DEPLOY / "grafana" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert sources["apiVersion"] == 1
    assert [s["type"] for s in sources["datasources"]] == ["prometheus"]
    dashboards = yaml.safe_load((provisioning / "dashboards" / "pope.yml").read_text())
    assert dashboards["apiVersion"] == 1
    (provider,) = dashboards["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"]


# -- KubeRay ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> list[dict]:
    docs = []
    for path in sorted((DEPLOY / "kuberay").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _kuberay_resources(value: str) -> dict:
    """rayStartParams.resources in KubeRay's format '"{\\"name\\": 1}"', decoded as Ray's autoscaler does."""
    return json.loads(value.strip().strip('"').replace('\\"', '"'))


def test_rayjob_runs_pope_train_on_actor_and_learner_groups(manifests):
    (job,) = [d for d in manifests if d["kind"] == "RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    entrypoint = job["spec"]["entrypoint"]
    assert entrypoint.startswith("pope train")
    assert "broker.redis_url=redis://:$(REDIS_PASSWORD)@pope-redis:6379/0" in entrypoint
    # The command line as the driver gets it (Kubernetes fills in the password) is a valid config.
    words = shlex.split(entrypoint.replace("$(REDIS_PASSWORD)", "secret"))
    config_path = words[words.index("--config") + 1]
    overrides = words[words.index("--config") + 2 :]
    config = load_config(ROOT / config_path, overrides)
    assert config.broker.redis_url == "redis://:secret@pope-redis:6379/0"

    submitter_env = job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["env"]
    password = next(e for e in submitter_env if e["name"] == "REDIS_PASSWORD")
    assert password["valueFrom"]["secretKeyRef"]["name"] == "pope-redis"

    cluster = job["spec"]["rayClusterSpec"]
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"actors", "learner"}
    actor_slots = _kuberay_resources(groups["actors"]["rayStartParams"]["resources"])
    learner_slots = _kuberay_resources(groups["learner"]["rayStartParams"]["resources"])
    assert actor_slots == {"actor_node": 1} and learner_slots == {"learner_node": 1}
    # The config asks for exactly these resources, and the pods offer enough of them.
    assert config.actors.resources == {"actor_node": 1}
    assert config.learner.resources == {"learner_node": 1}
    assert groups["actors"]["replicas"] * actor_slots["actor_node"] >= config.actors.num_actors
    assert groups["learner"]["replicas"] >= 1

    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in groups.values()]
    images = {c["image"] for pod in pods for c in pod["spec"]["containers"]}
    assert images == {"ghcr.io/OWNER/pope:latest"}
    head_ports = {
        p["containerPort"] for p in cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert {6379, 8265, 9464} <= head_ports


def test_redis_has_a_secret_password_and_persistence(manifests):
    (deployment,) = [
        d for d in manifests if d["kind"] == "Deployment" and d["metadata"]["name"] == "pope-redis"
    ]
    (service,) = [d for d in manifests if d["kind"] == "Service" and d["metadata"]["name"] == "pope-redis"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    env = {e["name"]: e for e in container["env"]}
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "pope-redis"
    assert [p["port"] for p in service["spec"]["ports"]] == [6379]
