"""How users run it: a two-node Ray cluster on loopback with `ray job submit`, a pool resized
while a run goes on with `pope scale`, and a real Prometheus scraping a run for every dashboard
panel's query.

Process hygiene: this module makes the test process a child subreaper (Linux), so the daemons
`ray start` leaves behind stay its descendants; each test kills exactly the descendants it
created, never anything else on the machine (no `ray stop`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT, become_subreaper

pytestmark = [pytest.mark.integration, pytest.mark.slow]
VENV_BIN = Path(sys.executable).parent


def _env() -> dict:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)
    return env


class Descendants:
    """Kills, at the end, every descendant of this process created after it began."""

    def __enter__(self):
        become_subreaper()
        self.since = time.time() - 0.5
        return self

    def mine(self) -> list[psutil.Process]:
        return [p for p in psutil.Process().children(recursive=True) if p.create_time() >= self.since]

    def __exit__(self, *exc):
        procs = self.mine()
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                continue
        _, alive = psutil.wait_procs(procs, timeout=15)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                continue
        psutil.wait_procs(alive, timeout=10)


def free_port() -> int:
    from broker.embedded import free_port as pick

    return pick()


def run_cli(*args: str, timeout: float = 600, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=_env(), cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_ray_job_submit_on_two_nodes(tmp_path):
    gcs, dashboard = free_port(), free_port()
    with Descendants():
        head = run_cli(
            "ray", "start", "--head", f"--port={gcs}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
            "--resources={\"learner_node\": 1}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={free_port()}",
            "--disable-usage-stats", timeout=180,
        )  # fmt: skip
        assert head.returncode == 0, head.stderr[-3000:]
        worker = run_cli(
            "ray", "start", f"--address=127.0.0.1:{gcs}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
            "--resources={\"actor_node\": 2}", f"--dashboard-agent-listen-port={free_port()}", timeout=180,
        )  # fmt: skip
        assert worker.returncode == 0, worker.stderr[-3000:]
        out_dir = tmp_path / "runs"
        submit = (
            "ray", "job", "submit", f"--address=http://127.0.0.1:{dashboard}", "--working-dir", ".", "--",
            "pope", "train", "--config", "configs/demo_cpu_hf.yaml", "learner.steps=3", f"run.output_dir={out_dir}",
            "actors.resources={actor_node: 1}", "learner.resources={learner_node: 1}", "learner.num_cpus=0.5",
            "metrics.port=0",
        )  # fmt: skip
        # each node's dashboard agent gets a free port (Ray's fixed default, 52365, may be taken by another
        # Ray on the machine: then no agent and "No available agent to submit job"); the job API may also
        # answer before the agent has registered on a loaded machine: retry that answer for 3 minutes
        deadline = time.monotonic() + 180
        while True:
            job = run_cli(*submit, timeout=900)
            if (
                "No available agent to submit job" not in job.stderr + job.stdout
                or time.monotonic() > deadline
            ):
                break
            time.sleep(3)
        assert job.returncode == 0, (job.stdout + job.stderr)[-5000:]
        (summary_path,) = out_dir.glob("*/summary.json")
        summary = json.loads(summary_path.read_text())
    assert summary["steps"] == 3 and summary["groups_lost"] == 0 and summary["groups_duplicated"] == 0
    placement = summary["placement"]
    actor_nodes = {placement["actor0"], placement["actor1"]}
    assert len(actor_nodes) == 1, "both actors on the actor node"
    assert placement["learner"] not in actor_nodes, "the learner kept apart from the actors"


def _start_train(tmp_path: Path, run_id: str, *overrides: str) -> subprocess.Popen:
    log = open(tmp_path / f"{run_id}.log", "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [str(VENV_BIN / "pope"), "train", "--config", "configs/demo_cpu_hf.yaml", f"run.run_id={run_id}",
         f"run.output_dir={tmp_path}", *overrides],
        env=_env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _wait_for_line(path: Path, pattern: str, proc: subprocess.Popen, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = path.read_text()
        match = re.search(pattern, text)
        if match:
            return match.group(0)
        if proc.poll() is not None:
            raise AssertionError(f"pope train exited ({proc.returncode}) before {pattern!r}:\n{text[-4000:]}")
        time.sleep(0.5)
    raise AssertionError(f"no {pattern!r} within {timeout_s}s:\n{path.read_text()[-4000:]}")


def test_scale_pools_while_training(tmp_path):
    run_id = "scale-test"
    log = tmp_path / f"{run_id}.log"
    with Descendants():
        proc = _start_train(
            tmp_path, run_id, "learner.steps=60", "actors.num_actors=1", "actors.max_new_tokens=24",
            "metrics.port=0", "learner.groups_per_step=2",
        )  # fmt: skip
        try:
            _wait_for_line(log, r"step 2/60", proc, 300)
            up = run_cli(str(VENV_BIN / "pope"), "scale", "--run", run_id, "--output-dir", str(tmp_path),
                         "actors=2", "preprocess=2")  # fmt: skip
            assert up.returncode == 0, up.stderr
            _wait_for_line(log, r"scale actors to 2: actor pool at 2", proc, 300)
            _wait_for_line(log, r"scale preprocess to 2: preprocess pool at 2", proc, 120)
            step_now = int(re.findall(r"step (\d+)/60", log.read_text())[-1])
            _wait_for_line(log, rf"step {step_now + 3}/60", proc, 300)
            down = run_cli(
                str(VENV_BIN / "pope"), "scale", "--run", run_id, "--output-dir", str(tmp_path), "actors=1"
            )
            assert down.returncode == 0, down.stderr
            _wait_for_line(log, r"scale actors to 1: actor pool at 1", proc, 300)
            assert proc.wait(timeout=600) == 0, log.read_text()[-4000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    summary = json.loads((tmp_path / run_id / "summary.json").read_text())
    assert summary["pool_sizes"] == {"actors": 1, "preprocess": 2}
    # every member the run had is placed, the added (and later removed) actor and worker included
    assert set(summary["placement"]) == {"learner", "actor0", "actor1", "preprocess0", "preprocess1"}
    assert summary["groups_lost"] == 0 and summary["groups_duplicated"] == 0
    assert summary["groups_generated"] == summary["groups_trained"] + summary["groups_in_flight_at_stop"]
    # the added actor generated with the current weights, and its groups were trained
    metrics = [json.loads(line) for line in (tmp_path / run_id / "metrics.jsonl").read_text().splitlines()]
    trained_by_new = [g for m in metrics for g in m["groups"] if g["actor_id"] == "actor1"]
    assert trained_by_new, "no group of the added actor was trained"
    first_step_of_new = min(m["step"] for m in metrics if any(g["actor_id"] == "actor1" for g in m["groups"]))
    assert min(g["policy_version"] for g in trained_by_new) >= 2 and first_step_of_new >= 3
    for m in metrics:  # every broadcast reached every actor of the pool at that time
        assert m["weights_checksum_actors"] == pytest.approx(
            [m["weights_checksum_learner"]] * len(m["weights_checksum_actors"])
        )
    assert summary["actor_versions"] == [summary["learner_version"]]


def _prom_query_range(base: str, expr: str, start: float, end: float) -> list:
    query = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": "1"})
    with urllib.request.urlopen(f"{base}/api/v1/query_range?{query}", timeout=10) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian's prometheus package is not installed")
def test_prometheus_sees_every_dashboard_panel(tmp_path):
    run_id = "prom-test"
    metrics_port, prom_port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n"
        f"  - job_name: pope\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n"
    )
    log = tmp_path / f"{run_id}.log"
    with Descendants():
        prom = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        proc = _start_train(tmp_path, run_id, "learner.steps=25", f"metrics.port={metrics_port}",
                            "actors.max_new_tokens=24", "learner.groups_per_step=2")  # fmt: skip
        start = time.time()
        assert proc.wait(timeout=600) == 0, log.read_text()[-4000:]
        end = time.time()
        time.sleep(2)
        base = f"http://127.0.0.1:{prom_port}"
        dashboard = json.loads((ROOT / "deploy" / "grafana" / "pope_dashboard.json").read_text())
        panels = [p for top in dashboard["panels"] for p in [top, *top.get("panels", [])] if p.get("targets")]
        missing = []
        for panel in panels:
            for target in panel["targets"]:
                expr = target["expr"].replace("$run_id", run_id).replace("${run_id}", run_id)
                expr = expr.replace("$__rate_interval", "5s").replace("$__interval", "1s")
                if not _prom_query_range(base, expr, start, end):
                    missing.append(f"{panel['title']}: {expr}")
        prom.terminate()
        prom.wait(timeout=30)
    assert missing == [], "panels without data:\n" + "\n".join(missing)
