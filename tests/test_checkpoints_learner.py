"""The real learner's checkpoints: a Learner (real DeepSpeed, a real Redis) trains 6 steps with
``checkpoint.hf_every=2``, ``every=2``, ``keep_last=2``; the Hugging Face checkpoints of steps 4 and 6
stay (2 rotated out), each loads with transformers and gives the logits the learner's model gave at
that step, and ``pope export`` of the resumable checkpoint of a step equals its HF checkpoint."""

from __future__ import annotations

import multiprocessing
import os
import uuid

import pytest
import torch

from broker.schemas import PackedArray, Rollout, RolloutGroup, ScoredGroup
from broker.streams import Producer, ensure_groups
from pope.config import load_config

pytestmark = pytest.mark.integration
PROBE = [3, 4, 5, 6, 7, 8, 9, 10]  # the fixed input whose logits are compared
STEPS = 6


def _scored(run_id: str, index: int) -> ScoredGroup:
    completions = [[5 + index % 4, 6, 7], [9, 8 + index % 3]]
    group = RolloutGroup(
        run_id=run_id, group_id=f"g{index}", problem_id=f"p{index}", variant="unguided", answer="7",
        prompt_ids=PackedArray.of([3, 4, 5 + index % 5], "int32"), temperature=1.0, max_new_tokens=8,
        rollouts=[Rollout(completion_ids=PackedArray.of(c, "int32"), finish_reason="stop", text="",
                          behaviour_logprobs=PackedArray.of([-1.0] * len(c), "float32")) for c in completions],
        policy_version_start=0, policy_version_end=0, actor_id="t", sampled_at=0.0, generate_s=0.0,
    )  # fmt: skip
    return ScoredGroup(group=group, rewards=[1.0, 0.0], advantages=[0.5, -0.5], verdicts=["correct", "wrong"],
                       worker_id="w")  # fmt: skip


def _learner_recording_logits(settings, model_path: str, redis_url: str, run_dir: str, port: int) -> None:
    """In a process of its own (DeepSpeed keeps one learner's groups per process): the learner's run,
    its model's logits on PROBE recorded after each of its real steps (to probe_logits.pt)."""
    os.environ.update(
        RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    from learner.trainer import Learner

    learner = Learner(settings, model_path, redis_url, run_dir, [])
    real_step, logits = learner.policy.train_step, {}

    def recording_step(groups):
        metrics = real_step(groups)
        learner.policy.engine.eval()
        with torch.no_grad():
            logits[learner.policy.step_count] = learner.policy.engine(input_ids=torch.tensor([PROBE])).logits
        return metrics

    learner.policy.train_step = recording_step
    try:
        learner.run(STEPS)
    finally:
        learner.close()
    torch.save(logits, os.path.join(run_dir, "probe_logits.pt"))


def _logits(folder) -> torch.Tensor:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoTokenizer.from_pretrained(folder)  # the tokenizer travels with every checkpoint
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([PROBE])).logits


def _weights(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_hf_checkpoints_rotate_load_and_equal_the_learner_and_its_export(
    tmp_path, redis_server, redis_client, tiny_model_path
):
    from broker.embedded import free_port
    from learner.export import export_checkpoint
    from orchestrator.cli import main

    run_id = "k" + uuid.uuid4().hex[:8]
    config = load_config(None, [
        f"run.run_id={run_id}", f"run.output_dir={tmp_path}", "data.mix=hard_only", "actors.num_rollouts=2",
        "learner.groups_per_step=2", f"learner.steps={STEPS}", "learner.lr=0.01", "checkpoint.every=2",
        "checkpoint.hf_every=2", "checkpoint.keep_last=2",
    ])  # fmt: skip
    run_dir = tmp_path / run_id
    leftover = run_dir / "hf" / ".step_2.tmp-1"  # what a learner killed inside an HF write leaves
    leftover.mkdir(parents=True)
    (leftover / "config.json").write_text("{")
    ensure_groups(redis_client, run_id)
    train = Producer(redis_client, run_id, "train", max_in_flight=None, maxlen=None)
    for index in range(STEPS * 2):
        train.put(_scored(run_id, index))
    context = multiprocessing.get_context("spawn")
    args = (config.for_learner(), tiny_model_path, redis_server.url, str(run_dir), free_port())
    child = context.Process(target=_learner_recording_logits, args=args)
    child.start()
    child.join(timeout=400)
    assert child.exitcode == 0

    assert sorted(p.name for p in (run_dir / "hf").iterdir()) == [
        "step_4",
        "step_6",
    ]  # step_2 rotated, leftover gone
    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / "latest").read_text() == "step6"
    assert sorted(p.name for p in checkpoints.iterdir() if p.is_dir()) == ["model", "step4", "step6"]
    recorded = torch.load(run_dir / "probe_logits.pt")
    assert sorted(recorded) == list(range(1, STEPS + 1))
    assert (recorded[6] - recorded[4]).abs().max() > 1e-3  # the steps moved the model: the check can fail
    for step in (4, 6):
        assert torch.allclose(_logits(run_dir / "hf" / f"step_{step}"), recorded[step], rtol=0, atol=1e-5)

    # export of a step's resumable checkpoint == that step's HF checkpoint, weight for weight
    assert main(["export", str(run_dir), "--step", "4", "--out", str(tmp_path / "export4")]) == 0
    export_checkpoint(checkpoints, tmp_path / "export_latest")  # the published one: step 6
    for exported, step in ((tmp_path / "export4", 4), (tmp_path / "export_latest", 6)):
        mine, theirs = _weights(exported), _weights(run_dir / "hf" / f"step_{step}")
        assert sorted(mine) == sorted(theirs)
        assert all(torch.equal(mine[name], theirs[name]) for name in mine), step
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".export")]  # no temp dir left
    assert torch.allclose(_logits(tmp_path / "export4"), recorded[4], rtol=0, atol=1e-5)
