"""The learner: scored groups in, an optimizer step, new weights out to every actor.

    train stream (group "learner") ──> pack sequences (prompt | completion, loss on completion only)
        ──> DeepSpeed forward/backward (GRPO clipped surrogate) ──> optimizer step
        ──> broadcast weights v+1 to the actors ──> control: WeightsPublished, StepReport ──> XACK

Train entries are acknowledged after the step and the broadcast, so a learner that dies before
then leaves them pending (never trained twice by a later learner that resumes from a checkpoint
written after the ack; resume itself is issue F).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch

from broker.schemas import ScoredGroup, StepReport, WeightsPublished
from broker.streams import Consumer, ControlChannel, connect
from learner.loss import clipped_surrogate, token_logprobs
from pope.weight_sync import broadcast_tensors, checksum, make_group, meta_of


def pack_groups(groups: list[ScoredGroup], pad_id: int):
    """Sequences of a step as padded tensors.

    Returns input_ids [N, L], attention_mask [N, L] and, aligned with positions 1..L-1 (the
    token each position predicts): targets, loss mask (completion tokens only), behaviour
    logprobs and advantages, each [N, L-1].
    """
    rows = []
    for scored in groups:
        prompt = scored.group.prompt_ids.numpy().tolist()
        for rollout, advantage in zip(scored.group.rollouts, scored.advantages, strict=True):
            completion = rollout.completion_ids.numpy().tolist()
            behaviour = rollout.behaviour_logprobs.numpy().tolist()
            rows.append((prompt, completion, behaviour, advantage))
    length = max(len(p) + len(c) for p, c, _, _ in rows)
    n = len(rows)
    input_ids = torch.full((n, length), pad_id, dtype=torch.long)
    attention = torch.zeros((n, length), dtype=torch.long)
    mask = torch.zeros((n, length - 1))
    behaviour_lp = torch.zeros((n, length - 1))
    advantages = torch.zeros((n, length - 1))
    for i, (prompt, completion, behaviour, advantage) in enumerate(rows):
        seq = prompt + completion
        input_ids[i, : len(seq)] = torch.tensor(seq)
        attention[i, : len(seq)] = 1
        # position j predicts token j+1: completion token k sits at len(prompt)+k, predicted at len(prompt)+k-1
        start = len(prompt) - 1
        end = start + len(completion)
        mask[i, start:end] = 1.0
        behaviour_lp[i, start:end] = torch.tensor(behaviour)
        advantages[i, start:end] = advantage
    targets = input_ids[:, 1:]
    return input_ids, attention, targets, mask, behaviour_lp, advantages


class Learner:
    def __init__(self, config, model_path: str, redis_url: str, run_dir: str, actor_handles=None):
        import deepspeed
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config
        self.cfg = config.learner
        self.run_id = config.run.run_id
        self.run_dir = Path(run_dir)
        torch.set_num_threads(self.cfg.torch_threads)
        torch.manual_seed(config.run.seed)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, config.model.dtype))
        model.config.use_cache = False
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        sequences = self.cfg.groups_per_step * config.actors.num_rollouts
        self.grad_accum = math.ceil(sequences / self.cfg.micro_batch_size)
        ds_config = {
            "train_micro_batch_size_per_gpu": self.cfg.micro_batch_size,
            "gradient_accumulation_steps": self.grad_accum,
            "gradient_clipping": self.cfg.grad_clip,
            "zero_optimization": {"stage": self.cfg.zero_stage},
            "steps_per_print": 1 << 30,
            "wall_clock_breakdown": False,
        }
        if not torch.distributed.is_initialized():
            for key, value in {
                "RANK": "0",
                "LOCAL_RANK": "0",
                "WORLD_SIZE": "1",
                "MASTER_ADDR": "127.0.0.1",
            }.items():
                os.environ.setdefault(key, value)
            if "MASTER_PORT" not in os.environ:
                from broker.embedded import free_port

                os.environ["MASTER_PORT"] = str(free_port())
            deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
        self.client = connect(redis_url, config.broker.socket_timeout_s)
        self.consumer = Consumer(self.client, self.run_id, "train", "learner0")
        self.control = ControlChannel(self.client, self.run_id)
        self.actor_handles = list(actor_handles or [])
        self.version = 0
        self.step = 0
        self.group = None
        self._store = None
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.trained_group_ids: list[str] = []
        self.totals = {"data_wait_s": 0.0, "forward_backward_s": 0.0, "optimizer_s": 0.0, "broadcast_s": 0.0}

    # -- weights -------------------------------------------------------------------------------
    def named_weights(self) -> list[tuple[str, torch.Tensor]]:
        return [(name, p.detach()) for name, p in self.engine.module.named_parameters()]

    def init_weight_group(self, host: str, port: int, world_size: int) -> None:
        self.group, self._store = make_group(host, port, 0, world_size, self.cfg.broadcast_timeout_s)

    def broadcast(self) -> tuple[float, int, float, list[float]]:
        """Send the current weights to every actor.

        Returns (seconds, bytes, the learner's checksum, each actor's checksum of what it loaded)."""
        import ray

        start = time.monotonic()
        named = self.named_weights()
        metas = meta_of(named)
        timeout = self.cfg.broadcast_timeout_s
        refs = [h.update_weights.remote(self.version, metas, timeout) for h in self.actor_handles]
        for _ in broadcast_tensors(self.group, metas, [t for _, t in named], timeout):
            pass
        received = ray.get(refs, timeout=timeout)
        sent = checksum(named)
        for handle_index, value in enumerate(received):
            if not math.isclose(value, sent, rel_tol=1e-9, abs_tol=1e-6):
                raise RuntimeError(
                    f"actor{handle_index} received weights with checksum {value}, learner sent {sent}"
                )
        num_bytes = sum(t.numel() * t.element_size() for _, t in named)
        return time.monotonic() - start, num_bytes, sent, list(received)

    # -- data ------------------------------------------------------------------------------------
    def collect(self) -> list:
        """Read ``groups_per_step`` scored groups, failing loudly when the stream stays empty."""
        entries = []
        deadline = time.monotonic() + self.cfg.data_timeout_s
        while len(entries) < self.cfg.groups_per_step:
            got = self.consumer.read(self.cfg.groups_per_step - len(entries), self.config.broker.block_ms)
            entries.extend(e for e in got if isinstance(e.message, ScoredGroup))
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"learner: no scored groups on stream pope:{self.run_id}:train for {self.cfg.data_timeout_s}s "
                    f"(have {len(entries)} of {self.cfg.groups_per_step}); are the actors and preprocess workers alive?"
                )
        return entries

    # -- one step ----------------------------------------------------------------------------------
    def train_step(self, groups: list[ScoredGroup]) -> dict[str, float]:
        temperature = self.config.actors.temperature
        input_ids, attention, targets, mask, behaviour_lp, advantages = pack_groups(
            groups, self.tokenizer.pad_token_id
        )
        total_tokens = mask.sum().clamp(min=1.0)
        mb = self.cfg.micro_batch_size
        stats = {"loss": 0.0, "clip_low": 0.0, "clip_high": 0.0, "ratio": 0.0, "entropy": 0.0}
        start = time.monotonic()
        self.engine.train()
        for k in range(self.grad_accum):
            rows = slice(k * mb, (k + 1) * mb)
            if input_ids[rows].shape[0] == 0:
                continue
            logits = self.engine(input_ids=input_ids[rows], attention_mask=attention[rows]).logits[:, :-1]
            logp = token_logprobs(logits, targets[rows], temperature)
            terms = clipped_surrogate(
                logp, behaviour_lp[rows], advantages[rows], mask[rows], self.cfg.eps_low, self.cfg.eps_high
            )
            # DeepSpeed divides by the accumulation steps; undo it so the step's gradient is the token mean
            self.engine.backward(terms.loss_sum / total_tokens * self.grad_accum)
            with torch.no_grad():
                probs = torch.softmax(logits.float() / temperature, -1)
                entropy = -(probs * torch.log(probs.clamp_min(1e-30))).sum(-1)
                stats["entropy"] += float((entropy * mask[rows]).sum())
            stats["loss"] += float(terms.loss_sum)
            stats["clip_low"] += float(terms.clipped_low)
            stats["clip_high"] += float(terms.clipped_high)
            stats["ratio"] += float(terms.ratio_sum)
            if k < self.grad_accum - 1:
                self.engine.step()  # DeepSpeed's accumulation bookkeeping: no update before the boundary
        forward_backward_s = time.monotonic() - start
        start = time.monotonic()
        self.engine.step()
        optimizer_s = time.monotonic() - start
        grad_norm = self.engine.get_global_grad_norm()
        n = float(total_tokens)
        rewards = [r for g in groups for r in g.rewards]
        lags = [self.version - g.group.policy_version_start for g in groups]
        return {
            "loss": stats["loss"] / n,
            "clip_frac_low": stats["clip_low"] / n,
            "clip_frac_high": stats["clip_high"] / n,
            "ratio_mean": stats["ratio"] / n,
            "entropy": stats["entropy"] / n,
            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "tokens_trained": n,
            "reward_mean": sum(rewards) / len(rewards),
            "policy_lag_min": float(min(lags)),
            "policy_lag_mean": sum(lags) / len(lags),
            "policy_lag_max": float(max(lags)),
            "forward_backward_s": forward_backward_s,
            "optimizer_s": optimizer_s,
        }

    def run(self, steps: int) -> dict:
        """Train ``steps`` steps; each ends with a broadcast, a version bump and an acknowledgement."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a", encoding="utf-8") as log:
            for _ in range(steps):
                start = time.monotonic()
                entries = self.collect()
                data_wait_s = time.monotonic() - start
                groups = [e.message for e in entries]
                metrics = self.train_step(groups)
                self.step += 1
                self.version += 1
                broadcast_s, num_bytes, sent, received = self.broadcast()
                self.control.publish(
                    WeightsPublished(
                        version=self.version, step=self.step, broadcast_s=broadcast_s, num_bytes=num_bytes
                    )
                )
                self.consumer.ack([e.entry_id for e in entries])
                group_ids = [g.group.group_id for g in groups]
                self.trained_group_ids.extend(group_ids)
                metrics.update(
                    data_wait_s=data_wait_s, broadcast_s=broadcast_s, step_s=time.monotonic() - start
                )
                for key in self.totals:
                    self.totals[key] += metrics[key]
                by_variant: dict[str, list[float]] = {}
                for g in groups:
                    by_variant.setdefault(g.group.variant, []).extend(g.rewards)
                for variant, values in by_variant.items():
                    metrics[f"reward_mean_{variant}"] = sum(values) / len(values)
                line = {
                    "step": self.step,
                    "learner_version": self.version,
                    "time": time.time(),
                    **metrics,
                    "weights_checksum_learner": sent,
                    "weights_checksum_actors": received,
                    "groups": [
                        {
                            "group_id": g.group.group_id,
                            "problem_id": g.group.problem_id,
                            "variant": g.group.variant,
                            "prefix_units": g.group.prefix_units,
                            "prefix_tokens": g.group.prefix_tokens,
                            "policy_version": g.group.policy_version_start,
                            "actor_id": g.group.actor_id,
                            "rewards": g.rewards,
                            "verdicts": g.verdicts,
                        }
                        for g in groups
                    ],
                }
                log.write(json.dumps(line) + "\n")
                log.flush()
                self.control.publish(
                    StepReport(step=self.step, metrics={k: float(v) for k, v in metrics.items()})
                )
        return {
            "steps": self.step,
            "learner_version": self.version,
            "trained_group_ids": self.trained_group_ids,
            **self.totals,
        }

    # -- checks and output -------------------------------------------------------------------------
    @torch.no_grad()
    def logprobs_of(self, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
        """Logprobs (temperature 1) of ``completion_ids`` after ``prompt_ids`` under the current weights."""
        self.engine.eval()
        ids = torch.tensor([prompt_ids + completion_ids])
        logits = self.engine(input_ids=ids).logits[:, len(prompt_ids) - 1 : -1]
        return token_logprobs(logits, torch.tensor([completion_ids]))[0].tolist()

    def weights_checksum(self) -> float:
        return checksum(self.named_weights())

    def save_hf(self, path: str) -> str:
        out = Path(path)
        self.engine.module.save_pretrained(out, safe_serialization=True)
        self.tokenizer.save_pretrained(out)
        return str(out)

    def close(self) -> None:
        self.client.close()
