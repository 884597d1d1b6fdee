"""Runs PolicyTrainer on a fixed batch; used by tests/test_learner.py (under torchrun for ZeRO).

    python tests/scripts/learner_step.py OUT.json MODEL_DIR --zero 2 [--checkpoint DIR --mode save|resume]

Writes (rank 0) the loss of each step and a float64 checksum and a few values of the weights after.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from broker.schemas import PackedArray, Rollout, RolloutGroup, ScoredGroup
from learner.policy import PolicyTrainer
from pope.config import load_config


def fixed_batch(seed: int, groups: int, rollouts: int, vocab: int) -> list[ScoredGroup]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for g in range(groups):
        prompt = torch.randint(
            3, vocab, (int(torch.randint(4, 9, (1,), generator=gen)),), generator=gen
        ).tolist()
        items = []
        for _ in range(rollouts):
            length = int(torch.randint(2, 7, (1,), generator=gen))
            items.append(
                Rollout(
                    completion_ids=PackedArray.of(
                        torch.randint(3, vocab, (length,), generator=gen).tolist(), "int32"
                    ),
                    behaviour_logprobs=PackedArray.of(
                        (-torch.rand(length, generator=gen) * 4).tolist(), "float32"
                    ),
                    text="",
                    finish_reason="stop",
                )
            )
        rewards = (torch.rand(rollouts, generator=gen) < 0.5).float().tolist()
        mean = sum(rewards) / len(rewards)
        group = RolloutGroup(
            run_id="t", group_id=f"g{seed}-{g}", problem_id="p", variant="unguided", answer="1",
            prompt_ids=PackedArray.of(prompt, "int32"), rollouts=items, temperature=1.0,
            max_new_tokens=64, policy_version_start=0,
            policy_version_end=0, actor_id="a", sampled_at=0.0, generate_s=0.0,
        )  # fmt: skip
        out.append(ScoredGroup(group=group, rewards=rewards, advantages=[r - mean for r in rewards],
                               verdicts=["wrong"] * rollouts, worker_id="w"))  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("model")
    parser.add_argument("--zero", type=int, default=0)
    parser.add_argument("--checkpoint")
    parser.add_argument("--mode", choices=["plain", "save", "resume", "nan", "moves"], default="plain")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    config = load_config(None, [
        f"learner.zero_stage={args.zero}", "learner.groups_per_step=2", "actors.num_rollouts=4",
        "learner.micro_batch_size=2", "learner.lr=0.01", "run.seed=0", *args.overrides,
    ])  # fmt: skip
    trainer = PolicyTrainer(config.for_learner(), args.model)
    vocab = trainer.engine.module.config.vocab_size
    batch_a, batch_b = fixed_batch(1, 2, 4, vocab), fixed_batch(2, 2, 4, vocab)
    losses = []
    if args.mode == "nan":  # step 1 normal, step 2 on a batch whose behaviour logprobs are NaN
        losses.append(trainer.train_step(batch_a)["loss"])
        before = {n: t.clone() for n, t in trainer.iter_weights()}
        bad = [g.model_copy(update={"group": g.group.model_copy(update={"rollouts": [
            r.model_copy(update={"behaviour_logprobs": PackedArray.of([float("nan")] * len(r.completion_ids), "float32")})
            for r in g.group.rollouts]})}) for g in batch_b]  # fmt: skip
        metrics = trainer.train_step(bad)
        after_bad = dict(trainer.iter_weights())
        unchanged = all(torch.equal(before[n], after_bad[n]) for n in before)
        losses.append(trainer.train_step(batch_b)["loss"])
        extra = {
            "nonfinite": metrics["nonfinite"],
            "unchanged_after_nan": unchanged,
            "steps": trainer.step_count,
        }
    elif args.mode == "moves":  # how far each update moves the weights, and the rate it reports
        moves, rates = [], []
        for batch in (batch_a, batch_b, batch_a):
            before = {n: t.double().clone() for n, t in trainer.iter_weights()}
            rates.append(trainer.train_step(batch)["lr"])
            moves.append(max(float((t.double() - before[n]).abs().max()) for n, t in trainer.iter_weights()))
        extra = {"max_abs_moves": moves, "lrs": rates}
    elif args.mode == "resume":
        trainer.load_checkpoint(args.checkpoint)
        losses.append(trainer.train_step(batch_b)["loss"])
    else:
        first = trainer.train_step(batch_a)
        losses.append(first["loss"])
        if args.mode == "save":
            trainer.save_checkpoint(args.checkpoint)
        second = trainer.train_step(batch_b)
        losses.append(second["loss"])
        extra = {"grad_norms": [first["grad_norm"], second["grad_norm"]]}
    weights = (
        dict(trainer.iter_weights()) if args.zero != 3 else {n: t.clone() for n, t in trainer.iter_weights()}
    )
    result = {
        "losses": losses,
        "checksum": float(sum(t.double().sum().item() for t in weights.values())),
        "abs_checksum": float(sum(t.double().abs().sum().item() for t in weights.values())),
        "sample": weights["model.layers.0.mlp.up_proj.weight"].reshape(-1)[:8].double().tolist(),
        "world_size": trainer.world_size,
        "shm_comm_op_loaded": __import__("deepspeed").comm.comm.cdb.shm_comm_op is not None,
        **(extra if args.mode in ("nan", "plain", "save", "moves") else {}),
    }
    if int(os.environ.get("RANK", "0")) == 0:
        with open(args.out, "w") as f:
            json.dump(result, f)
    trainer.close()


if __name__ == "__main__":
    main()
