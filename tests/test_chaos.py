"""Faults, for real: a component's process is killed (SIGKILL) or frozen (SIGSTOP) mid-run, the
launcher itself killed, the learner killed inside a checkpoint write, two faults in one run; every
run completes (or resumes) with every rollout group trained exactly once or counted in flight,
none lost, none trained twice (counted by group id from the streams and the learner's log)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT, become_subreaper

pytestmark = [pytest.mark.integration, pytest.mark.slow]
POPE = str(Path(sys.executable).parent / "pope")
# The faults run on the default actor, vLLM generating continuously (several claims held at once,
# weights loaded between two decoding steps); the killed-actor test also runs on the HF engine's
# per-call loop, the fallback
CONTINUOUS = [
    "--config",
    "configs/demo_cpu.yaml",
    "actors.generation=continuous",
    "actors.engine.max_num_seqs=16",
]
PER_CALL = ["--config", "configs/demo_cpu_hf.yaml"]
FAULTS = [
    "metrics.port=0",
    "actors.max_new_tokens=24",
    "learner.groups_per_step=2",
    "learner.broadcast_timeout_s=60",
    "preprocess.claim_idle_s=5",
    "checkpoint.every=2",
    "broker.max_groups_in_flight=4",
    "actors.prompts_per_call=2",
]
COMMON = [*CONTINUOUS, *FAULTS]


def _env() -> dict:
    import os

    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    return env


def _train(tmp_path: Path, run_id: str, *args: str) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / f"{run_id}-{int(time.time() * 1000)}.log"
    handle = open(log, "w")  # noqa: SIM115 (lives as long as the process)
    proc = subprocess.Popen(
        [POPE, "train", *args], env=_env(), cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT
    )
    return proc, log


def _wait_for(log: Path, pattern: str, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if re.search(pattern, log.read_text()):
            return
        if proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) before {pattern!r}:\n{log.read_text()[-4000:]}")
        time.sleep(0.3)
    raise AssertionError(f"no {pattern!r} in {timeout_s}s:\n{log.read_text()[-4000:]}")


def _find_component(marker: str) -> psutil.Process:
    """The one Ray actor process (a descendant of this test) whose title names ``marker``."""
    for proc in psutil.Process().children(recursive=True):
        try:
            if " ".join(proc.cmdline()).startswith("ray::") and marker in " ".join(proc.cmdline()):
                return proc
        except psutil.NoSuchProcess:
            continue
    raise AssertionError(f"no process titled ray::...{marker}")


def _kill_component(marker: str) -> int:
    """SIGKILL the one Ray actor process (a descendant of this test) whose title names ``marker``."""
    for proc in psutil.Process().children(recursive=True):
        try:
            title = " ".join(proc.cmdline())
        except psutil.NoSuchProcess:
            continue
        if title.startswith("ray::") and marker in title:
            proc.send_signal(signal.SIGKILL)
            return proc.pid
    raise AssertionError(f"no process titled ray::...{marker}")


def _check_exactly_once(run_dir: Path, steps: int, groups_per_step: int) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == steps
    assert summary["groups_lost"] == 0, summary["lost_group_ids"]
    assert summary["groups_duplicated"] == 0
    assert summary["groups_trained"] == steps * groups_per_step
    # a group skipped as a duplicate was also trained: it is not another generated group
    skipped = sum(n for reason, n in summary["groups_skipped"].items() if reason != "duplicate")
    in_flight, dead = summary["groups_in_flight_at_stop"], summary["groups_dead_lettered"]
    assert summary["groups_generated"] == summary["groups_trained"] + in_flight + skipped + dead
    assert summary["group_outcomes"]["skipped"] == skipped  # the books agree with the learner's counts
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(1, steps + 1))
    ids = [g["group_id"] for m in lines for g in m["groups"]]
    assert len(ids) == len(set(ids)) == steps * groups_per_step, "a group was trained twice"
    assert sorted(ids) == summary["trained_group_ids"]
    assert summary["actor_versions"] == [summary["learner_version"]] * len(summary["actor_versions"])
    return summary


@pytest.fixture(autouse=True)
def _own_processes():
    become_subreaper()
    since = time.time()
    yield
    procs = [p for p in psutil.Process().children(recursive=True) if p.create_time() >= since]
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(procs, timeout=15)


def test_killed_actor_is_restarted(tmp_path):
    """The per-call loop (HF engine): a SIGKILLed actor comes back and redoes what it had claimed."""
    marker = "RolloutActor"
    run_id = f"chaos-{marker.lower()}"
    steps = 18
    proc, log = _train(tmp_path, run_id, *PER_CALL, *FAULTS, f"learner.steps={steps}", f"run.run_id={run_id}",
                       f"run.output_dir={tmp_path}")  # fmt: skip
    _wait_for(log, r"step 3/", proc)
    _kill_component(marker)
    assert proc.wait(timeout=600) == 0, log.read_text()[-5000:]
    text = log.read_text()
    assert "restarted and back in the run" in text
    summary = _check_exactly_once(tmp_path / run_id, steps, 2)
    incarnations = {gid.rsplit("-", 1)[0] for gid in summary["trained_group_ids"] if gid.startswith("actor")}
    assert len(incarnations) >= 3, "the restarted actor's groups (a new incarnation) were not trained"
    # group ids end with the prompt's position in the run's one sampler (actors claim positions
    # from one counter): over every actor and incarnation, each position 0..n-1 appears once. The
    # restarted actor asked exactly the positions the killed one had claimed and not written (a
    # restart from scratch repeats positions, a skip leaves a gap)
    accounted = summary["trained_group_ids"] + summary["in_flight_group_ids"]
    accounted += [
        g for reason, ids in summary["skipped_group_ids"].items() if reason != "duplicate" for g in ids
    ]
    positions = sorted(int(g.rsplit("-", 1)[1]) for g in accounted)
    assert positions == list(range(len(positions))), positions


def test_a_killed_continuous_actor_is_restarted_and_redoes_every_position_it_had_claimed(tmp_path):
    """The vLLM actor generating continuously (several claims held at once, groups written in
    position order) SIGKILLed mid-run: Ray restarts it, it redoes every position it had claimed and
    not written, and every group is trained exactly once or counted in flight. Positions never
    repeat; the only ones never written are those the actors were generating when the run stopped
    (at most, per actor, the groups in its engine and its claim: 2 + 1 + 2 here)."""
    run_id = "chaos-continuous"
    steps = 18
    proc, log = _train(tmp_path, run_id, *COMMON, f"learner.steps={steps}", f"run.run_id={run_id}",
                       f"run.output_dir={tmp_path}")  # fmt: skip
    _wait_for(log, r"step 3/", proc)
    _kill_component("RolloutActor")
    assert proc.wait(timeout=600) == 0, log.read_text()[-5000:]
    assert "restarted and back in the run" in log.read_text()
    summary = _check_exactly_once(tmp_path / run_id, steps, 2)
    accounted = summary["trained_group_ids"] + summary["in_flight_group_ids"]
    accounted += [
        g for reason, ids in summary["skipped_group_ids"].items() if reason != "duplicate" for g in ids
    ]
    positions = sorted(int(g.rsplit("-", 1)[1]) for g in accounted)
    assert len(positions) == len(set(positions)), "a position was written twice"
    missing = sorted(set(range(positions[-1] + 1)) - set(positions))
    tail = 2 * (16 // 8 + 1 + 2)
    assert all(p > positions[-1] - len(positions) // 2 for p in missing), missing  # none left early on
    assert len(missing) <= tail, missing


def _latest(checkpoints: Path) -> str:
    return (checkpoints / "latest").read_text() if (checkpoints / "latest").is_file() else ""


def _kill_during_checkpoint_write(run_dir: Path, proc: subprocess.Popen, timeout_s: float = 300) -> int:
    """SIGKILL the learner while it writes a checkpoint: when a new tag's folder appears, freeze the
    learner (SIGSTOP) and look: the folder there and ``latest`` still naming the tag before it is a
    write in progress, and the learner dies in it; a write already done is let go (SIGCONT) and the
    next is tried. Returns the step of the checkpoint ``latest`` named at the kill."""
    checkpoints, tried = run_dir / "checkpoints", set()
    learner = _find_component("Learner")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        latest = _latest(checkpoints)
        if not latest:  # the first checkpoint has none before it to resume from
            time.sleep(0.002)
            continue
        step = int(latest.removeprefix("step"))
        fresh = [d.name for d in checkpoints.glob("step*") if int(d.name[4:]) > step and d.name not in tried]
        if not fresh:
            time.sleep(0.002)
            continue
        learner.send_signal(signal.SIGSTOP)
        if _latest(checkpoints) == latest:  # caught inside the write
            learner.send_signal(signal.SIGKILL)
            return int(latest.removeprefix("step"))
        tried.update(fresh)
        learner.send_signal(signal.SIGCONT)
    raise AssertionError("never caught the learner inside a checkpoint write")


def test_a_learner_killed_while_writing_a_checkpoint_resumes_from_the_one_before(tmp_path):
    """The learner SIGKILLed in the middle of writing a checkpoint: the half-written one is never
    picked up (``latest`` is replaced only once every file of the new one is on disk); `pope train
    --resume` continues from the one before and trains each group exactly once."""
    run_id = "chaos-learner"
    steps = 16
    proc, log = _train(tmp_path, run_id, *COMMON, f"learner.steps={steps}", f"run.run_id={run_id}",
                       f"run.output_dir={tmp_path}")  # fmt: skip
    _wait_for(log, r"step 3/", proc)
    run_dir = tmp_path / run_id
    before = _kill_during_checkpoint_write(run_dir, proc)
    assert proc.wait(timeout=300) != 0
    assert "learner" in log.read_text().lower()
    assert before >= 2 and before % 2 == 0  # checkpoint.every=2
    tags = sorted(int(d.name.removeprefix("step")) for d in (run_dir / "checkpoints").glob("step*"))
    assert (
        tags[-1] > before == int(_latest(run_dir / "checkpoints").removeprefix("step"))
    )  # half-written: not picked
    resumed, log2 = _train(tmp_path, run_id, "--resume", str(run_dir))
    assert resumed.wait(timeout=600) == 0, log2.read_text()[-5000:]
    assert f"resumed from the checkpoint of step {before}" in log2.read_text()
    _check_exactly_once(run_dir, steps, 2)


def test_a_killed_launcher_leaves_nothing_holding_the_run_and_the_run_resumes(tmp_path):
    """The launcher itself SIGKILLed: its embedded redis-server dies with it (no server left holding
    the run's AOF, none for the resume to stop), the run dir's lock is free, and `pope train
    --resume` continues from the last checkpoint, each group trained exactly once."""
    run_id = "chaos-launcher"
    steps = 14
    proc, log = _train(tmp_path, run_id, *COMMON, f"learner.steps={steps}", f"run.run_id={run_id}",
                       f"run.output_dir={tmp_path}")  # fmt: skip
    _wait_for(log, r"step 5/", proc)
    run_dir = tmp_path / run_id
    server = _redis_process(run_dir)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    gone, alive = psutil.wait_procs([server], timeout=15)
    assert gone and not alive, "the run's redis-server outlived its launcher"
    resumed, log2 = _train(tmp_path, run_id, "--resume", str(run_dir))
    assert resumed.wait(timeout=600) == 0, log2.read_text()[-5000:]
    assert re.search(r"resumed from the checkpoint of step [2-9]", log2.read_text())
    _check_exactly_once(run_dir, steps, 2)


def _redis_process(run_dir: Path) -> psutil.Process:
    """The run's embedded redis-server: the descendant of this test named redis-server whose working
    directory (its ``dir``, where the AOF lives) is the run's."""
    workdir = str((run_dir / "redis").resolve())
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.name() == "redis-server" and proc.cwd() == workdir:
                return proc
        except psutil.NoSuchProcess:
            continue
    raise AssertionError(f"no redis-server working in {workdir}")


def _kill_redis(run_dir: Path) -> int:
    proc = _redis_process(run_dir)
    proc.send_signal(signal.SIGKILL)
    return proc.pid


def test_killed_redis_is_restarted_and_nothing_is_lost(tmp_path):
    """The embedded redis-server is SIGKILLed mid-run: the launcher restarts it from its AOF
    (appendfsync always), every component reconnects within broker.reconnect_timeout_s, and every
    group is trained exactly once or counted in flight; none lost."""
    run_id = "chaos-redis"
    steps = 14
    proc, log = _train(tmp_path, run_id, *COMMON, f"learner.steps={steps}", f"run.run_id={run_id}",
                       f"run.output_dir={tmp_path}", "broker.trim_every_s=2")  # fmt: skip
    _wait_for(log, r"step 2/", proc)
    _kill_redis(tmp_path / run_id)
    assert proc.wait(timeout=600) == 0, log.read_text()[-5000:]
    assert "restarted on " in log.read_text()
    summary = _check_exactly_once(tmp_path / run_id, steps, 2)
    assert summary["redis_restarts"] == 1
    assert sum(summary["stream_entries_trimmed"].values()) > 0  # acknowledged entries went away
    print(
        f"redis chaos: produced {summary['groups_generated']}, trained {summary['groups_trained']}, "
        f"duplicated {summary['groups_duplicated']}, lost {summary['groups_lost']}, in flight "
        f"{summary['groups_in_flight_at_stop']}, skipped {summary['groups_skipped']}, "
        f"trimmed {summary['stream_entries_trimmed']}"
    )


def _freeze_a_worker_holding_entries(run_dir: Path, tries: int = 40) -> psutil.Process:
    """SIGSTOP one preprocess worker at a moment it holds rollout entries: freeze it, wait past its
    keep-alive interval, and look for entries of the rollouts stream idle that long (a live
    worker's are refreshed every second); none, and it is let go (SIGCONT) and tried again."""
    from broker.streams import GROUPS, connect, stream_key

    connection = json.loads((run_dir / "connection.json").read_text())
    client = connect(connection["redis_url"], socket_timeout_s=5, reconnect_timeout_s=10)
    key = stream_key(connection["run_id"], "rollouts")
    worker = _find_component("PreprocessWorker")
    try:
        for _ in range(tries):
            worker.send_signal(signal.SIGSTOP)
            time.sleep(2.5)
            if client.xpending_range(key, GROUPS["rollouts"], "-", "+", 10, idle=2000):
                return worker
            worker.send_signal(signal.SIGCONT)
            time.sleep(0.3)
    finally:
        client.close()
    raise AssertionError(f"the worker held no entries in {tries} tries")


def test_a_frozen_worker_loses_its_entries_and_its_late_copies_are_not_trained(tmp_path):
    """A preprocess worker frozen (SIGSTOP) while it holds entries, for three times
    preprocess.claim_idle_s, then resumed (SIGCONT): while it is frozen its thread cannot keep its
    entries fresh, so the other worker claims and scores them; when it wakes it finishes its batch
    too, and the learner trains each group id once (the copies are counted, not trained). Nothing
    lost, the books add up."""
    run_id = "chaos-sigstop"
    steps = 40  # about 15 s of training: the run outlasts the freeze and the claim
    proc, log = _train(tmp_path, run_id, *COMMON, f"learner.steps={steps}", f"run.run_id={run_id}",
                       f"run.output_dir={tmp_path}", "preprocess.num_workers=2")  # fmt: skip
    _wait_for(log, r"step 3/", proc)
    worker = _freeze_a_worker_holding_entries(tmp_path / run_id)
    time.sleep(12.5)  # claim_idle_s=5: its entries are claimed meanwhile
    worker.send_signal(signal.SIGCONT)
    assert proc.wait(timeout=600) == 0, log.read_text()[-5000:]
    summary = _check_exactly_once(tmp_path / run_id, steps, 2)
    assert summary["groups_dead_lettered"] == 0, summary["dead_lettered_group_ids"]
    assert summary["groups_claimed"] >= 1  # the frozen worker's entries were taken over


def test_two_faults_in_one_run_redis_frozen_then_a_worker_killed(tmp_path):
    """Two faults in one run: the embedded redis-server frozen (SIGSTOP) for three socket timeouts,
    then resumed (every client's call times out and is retried within broker.reconnect_timeout_s,
    nothing waits forever, the supervisor leaves a frozen server alone); a few steps later a
    preprocess worker SIGKILLed (Ray restarts it, its pending entries are finished). Every group is
    trained once, counted in flight or set aside; none lost."""
    run_id = "chaos-two-faults"
    steps = 16
    proc, log = _train(tmp_path, run_id, *COMMON, f"learner.steps={steps}", f"run.run_id={run_id}",
                       f"run.output_dir={tmp_path}", "broker.socket_timeout_s=2",
                       "broker.reconnect_timeout_s=60")  # fmt: skip
    _wait_for(log, r"step 3/", proc)
    server = _redis_process(tmp_path / run_id)
    server.send_signal(signal.SIGSTOP)
    time.sleep(6)
    server.send_signal(signal.SIGCONT)
    _wait_for(log, r"step 7/", proc)
    _kill_component("PreprocessWorker")
    assert proc.wait(timeout=600) == 0, log.read_text()[-5000:]
    assert "restarted and back in the run" in log.read_text()
    summary = _check_exactly_once(tmp_path / run_id, steps, 2)
    assert summary["redis_restarts"] == 0  # frozen, not dead: the supervisor left it alone
