"""The policy under training: a DeepSpeed engine and one GRPO step on a batch of scored groups.

No streams and no Ray here: ``PolicyTrainer`` is what the learner runs, what the ZeRO
equivalence test runs under torchrun, and what the checkpoint test restores.

Data parallel: with W ranks each rank trains on rows rank, rank + W, ... of the step's sequences.
The loss is normalised by step-wide totals (tokens, sequences) all-reduced over ranks, and scaled
by W and by the accumulation steps, which DeepSpeed divides by, so the update equals that of one
rank on the whole batch.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from broker.schemas import ScoredGroup
from learner.loss import (
    AGGREGATIONS,
    StepNorm,
    clipped_surrogate,
    effective_sample_size,
    token_entropy,
    token_logprobs,
)
from pope.config import LearnerSettings
from pope.devices import check_ds_accelerator, dist_backend, ds_precision, learner_device


def pack_groups(groups: list[ScoredGroup], pad_id: int):
    """Sequences of a step as padded tensors.

    Returns input_ids [N, L], attention_mask [N, L] and, aligned with positions 0..L-2 (position
    j predicts token j+1): targets, loss mask (completion tokens only), behaviour logprobs and
    advantages, each [N, L-1]. Prompt tokens, the oracle prefix among them, have mask 0.
    """
    rows = []
    for scored in groups:
        prompt = scored.group.prompt_ids.numpy().tolist()
        for rollout, advantage in zip(scored.group.rollouts, scored.advantages, strict=True):
            rows.append(
                (
                    prompt,
                    rollout.completion_ids.numpy().tolist(),
                    rollout.behaviour_logprobs.numpy(),
                    advantage,
                )
            )
    length = max(len(p) + len(c) for p, c, _, _ in rows)
    n = len(rows)
    input_ids = torch.full((n, length), pad_id, dtype=torch.long)
    attention = torch.zeros((n, length), dtype=torch.long)
    mask = torch.zeros((n, length - 1))
    behaviour = torch.zeros((n, length - 1))
    advantages = torch.zeros((n, length - 1))
    for i, (prompt, completion, behaviour_lp, advantage) in enumerate(rows):
        seq = prompt + completion
        input_ids[i, : len(seq)] = torch.tensor(seq)
        attention[i, : len(seq)] = 1
        start, end = len(prompt) - 1, len(prompt) - 1 + len(completion)
        mask[i, start:end] = 1.0
        behaviour[i, start:end] = torch.from_numpy(behaviour_lp.astype(np.float32))
        advantages[i, start:end] = advantage
    return input_ids, attention, input_ids[:, 1:], mask, behaviour, advantages


def normalize_batch_advantages(groups: list[ScoredGroup], mode: str) -> list[list[float]]:
    """Advantages after batch-level normalisation: 'none'; 'batch_std' divides the group-centred
    advantages by their std over the whole step; 'batch_mean_std' also subtracts the step mean."""
    flat = np.array([a for g in groups for a in g.advantages], dtype=np.float64)
    if mode == "none" or flat.size < 2:
        return [list(g.advantages) for g in groups]
    centre = flat.mean() if mode == "batch_mean_std" else 0.0
    scale = flat.std() + 1e-6
    out, i = [], 0
    for g in groups:
        out.append([(a - centre) / scale for a in flat[i : i + len(g.advantages)]])
        i += len(g.advantages)
    return out


def ds_config(cfg, sequences_per_step: int, world_size: int, dtype: str = "float32") -> dict:
    """``dtype``: model.dtype; bf16/fp16 add DeepSpeed's precision section (``pope.devices.ds_precision``)."""
    local = math.ceil(sequences_per_step / world_size)
    grad_accum = math.ceil(local / cfg.micro_batch_size)
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": cfg.micro_batch_size * grad_accum * world_size,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
        **ds_precision(dtype),
    }


def init_distributed(backend: str = "gloo") -> None:
    """One-rank default group when not launched by torchrun (DeepSpeed needs one, and the rank
    variables). A vLLM engine in the same process (bench/sync.py) may have made the group already.
    ``backend``: ``pope.devices.dist_backend`` of the learner's device."""
    import deepspeed

    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(key, value)
    if dist.is_initialized():
        return
    if "MASTER_PORT" not in os.environ:
        from broker.embedded import free_port

        os.environ["MASTER_PORT"] = str(free_port())
    if int(os.environ["WORLD_SIZE"]) == 1:
        skip_shm_comm_op()
    deepspeed.init_distributed(dist_backend=backend)


def skip_shm_comm_op() -> None:
    """Keep DeepSpeed's CPU backend from building its shared-memory all-reduce op, which only a
    learner of several ranks on one host uses: its first build compiles C++ for about 40 s on 2 cores
    (a third of the demo's setup on a fresh machine). DeepSpeed builds the op only when its
    compatibility table (probed once per process, 0.1 s) marks it compatible; this marks it not."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        deepspeed.ops.__compatible_ops__[builder.NAME] = False


def step_temperature(groups: list[ScoredGroup]) -> float:
    """The temperature the step's rollouts were sampled at (it travels on each group); the learner's
    logprobs of logits / T then match the actors'. One step, one temperature."""
    temperatures = {g.group.temperature for g in groups}
    if len(temperatures) != 1:
        raise ValueError(
            f"one learner step holds groups sampled at temperatures {sorted(temperatures)}: "
            "every actor of a run must sample at the same actors.temperature"
        )
    return temperatures.pop()


SUMS = ("loss", "clip_low", "clip_high", "ratio", "entropy", "kl", "abs_logprob_diff", "tokens", "padded")


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_steps(directory: str | Path, prefix: str = "step") -> list[tuple[int, str]]:
    """(N, name) of the ``<prefix><N>`` folders in ``directory``, by N; a temp dir being written
    (``.<name>.tmp-<pid>``) is not one."""
    n = len(prefix)
    if not Path(directory).is_dir():
        return []
    return sorted(
        (int(p.name[n:]), p.name)
        for p in Path(directory).iterdir()
        if p.is_dir() and p.name.startswith(prefix) and p.name[n:].isdigit()
    )


def rotate_checkpoints(directory: str, latest: str, keep: int, prefix: str = "step") -> list[str]:
    """Delete all but the ``keep`` newest ``<prefix><N>`` checkpoints (by N) in ``directory``, never
    ``latest`` (the tag a resume loads) nor one newer than it (being written); returns the tags deleted."""
    newest = int(latest.removeprefix(prefix))
    tags = [(step, name) for step, name in checkpoint_steps(directory, prefix) if step <= newest]
    doomed = [name for _, name in tags[:-keep] if name != latest]
    for name in doomed:
        shutil.rmtree(Path(directory, name))
    return doomed


def _fsync_tree(path: str | Path) -> None:
    for root, _, files in os.walk(path):
        for name in files:
            _fsync(os.path.join(root, name))
        _fsync(root)


def publish_checkpoint(directory: str, tag: str) -> None:
    """Make ``tag`` the checkpoint a resume loads: its files durable first, then ``latest`` replaced
    in one rename (a reader sees the old tag or the new, never a torn name or a half-written tag)."""
    _fsync_tree(os.path.join(directory, tag))
    pointer = os.path.join(directory, "latest")
    with open(pointer + ".tmp", "w", encoding="utf-8") as handle:
        handle.write(tag)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(pointer + ".tmp", pointer)
    _fsync(directory)


def write_dir_atomically(target: str | Path, write, leftovers: str | None = None) -> Path:
    """``write(folder)`` fills a temp folder beside ``target``; its files made durable, it is renamed
    to ``target`` (a folder already there is replaced). A process killed while writing leaves only
    ``.<name>.tmp-<pid>``, never a partial ``target``; the next write removes such leftovers (those
    of ``target``, or every name of the glob ``leftovers``)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(leftovers or f".{target.name}.*"):
        shutil.rmtree(stale)
    temp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    temp.mkdir()
    write(temp)
    _fsync_tree(temp)
    if target.exists():  # rename does not replace a non-empty folder: move the old one aside first
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.replace(target, old)
        os.replace(temp, target)
        shutil.rmtree(old)
    else:
        os.replace(temp, target)
    _fsync(str(target.parent))
    return target


HF_PREFIX = "step_"  # <run_dir>/hf/step_<N>: the Hugging Face checkpoints
BASE_MODEL = "model"  # <checkpoints>/model: the model's config and tokenizer, for `pope export`


@dataclass
class StepBatch:
    """A step's sequences, padded on the right; ``rows``: this rank's, longest first."""

    input_ids: torch.Tensor
    attention: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    behaviour: torch.Tensor
    advantages: torch.Tensor
    lengths: torch.Tensor
    rows: torch.Tensor
    norm: StepNorm
    temperature: float


def warmup_lr(lr: float, warmup_steps: int, update: int) -> float:
    """The rate of update ``update`` (1 for the first) under a linear warm-up of ``warmup_steps``
    updates (0: none). Derived from the update count alone, so a resumed run continues it exactly."""
    return lr if warmup_steps <= 0 else lr * min(1.0, update / warmup_steps)


class PolicyTrainer:
    def __init__(self, config: LearnerSettings, model_path: str):
        """``config``: the learner's sections (``PopeConfig.for_learner``). The device comes from
        ``learner.num_gpus`` (``pope.devices.learner_device``), checked before DeepSpeed loads."""
        self.config = config
        self.cfg = config.learner
        self.device = torch.device(
            learner_device(
                self.cfg.num_gpus, torch.cuda.is_available(), torch.cuda.device_count(),
                int(os.environ.get("LOCAL_RANK", "0")),
            )
        )  # fmt: skip
        check_ds_accelerator(str(self.device), os.environ.get("DS_ACCELERATOR"))
        import deepspeed
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.integrations import HfDeepSpeedConfig

        torch.set_num_threads(self.cfg.torch_threads)
        torch.manual_seed(config.run.seed)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        init_distributed(dist_backend(str(self.device)))
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.sequences_per_step = self.cfg.groups_per_step * config.num_rollouts
        self.ds_config = ds_config(self.cfg, self.sequences_per_step, self.world_size, config.model.dtype)
        self.grad_accum = self.ds_config["gradient_accumulation_steps"]
        # ZeRO-3 must see the config before the model is built (HF then partitions on load)
        self._hf_ds = HfDeepSpeedConfig(self.ds_config) if self.cfg.zero_stage == 3 else None
        dtype = getattr(torch, config.model.dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        model.config.use_cache = False
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=self.ds_config)
        self.reference = None
        if self.cfg.kl_coef > 0:
            self.reference = (
                AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
                .to(self.device)
                .eval()
                .requires_grad_(False)
            )
        self.step_count = 0
        self.version = 0

    # -- weights ---------------------------------------------------------------------------------
    def _gathered(self, param):
        if self.cfg.zero_stage == 3:
            import deepspeed

            return deepspeed.zero.GatheredParameters([param], modifier_rank=None)
        return nullcontext()

    def iter_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, full tensor) one at a time; under ZeRO-3 each is gathered (a collective: every
        rank must iterate) and released before the next."""
        for name, param in self.engine.module.named_parameters():
            with self._gathered(param):
                yield name, param.detach()

    def weight_metas(self):
        from pope.weight_sync import TensorMeta

        metas = []
        for name, param in self.engine.module.named_parameters():
            shape = tuple(getattr(param, "ds_shape", param.shape))
            metas.append(TensorMeta(name, shape, str(param.dtype).removeprefix("torch.")))
        return metas

    # -- the step ----------------------------------------------------------------------------------
    def _all_reduce_sum(self, value: float) -> float:
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)  # NCCL reduces CUDA tensors only
        dist.all_reduce(t)
        return float(t.item())

    def train_step(self, groups: list[ScoredGroup]) -> dict[str, float]:
        """One optimizer step on ``groups``: forward/backward per micro-batch, then one update (or
        none, when a loss was not finite); returns the step's metrics."""
        lr = warmup_lr(self.cfg.lr, self.cfg.lr_warmup_steps, self.step_count + 1)
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr
        batch = self._batch(groups)
        sums = dict.fromkeys(SUMS, 0.0)
        ratios: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        nonfinite = False
        start = time.monotonic()
        self.engine.train()
        for k in range(self.grad_accum):
            nonfinite |= self._micro_step(batch, k, sums, ratios, masks)
            if k < self.grad_accum - 1:
                self.engine.step()  # DeepSpeed only updates at the accumulation boundary
        forward_backward_s = time.monotonic() - start
        start = time.monotonic()
        nonfinite = self._all_reduce_sum(float(nonfinite)) > 0
        grad_norm = self._update(nonfinite)
        optimizer_s = time.monotonic() - start
        totals = {key: self._all_reduce_sum(value) for key, value in sums.items()}
        tokens = max(totals["tokens"], 1.0)
        return {
            "nonfinite": float(nonfinite),
            "loss": totals["loss"],
            "clip_frac_low": totals["clip_low"] / tokens,
            "clip_frac_high": totals["clip_high"] / tokens,
            "ratio_mean": totals["ratio"] / tokens,
            "effective_sample_size": effective_sample_size(torch.cat(ratios), torch.cat(masks)),
            "entropy": totals["entropy"] / tokens,
            "kl": totals["kl"] / tokens,
            "logprob_abs_diff_vs_behaviour": totals["abs_logprob_diff"] / tokens,
            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "lr": lr,
            "tokens_trained": totals["tokens"],
            "sequence_tokens": float(batch.attention.sum()),  # prompt + completion, the step's whole batch
            "padded_tokens": totals["padded"],  # what the forward passes saw
            "forward_backward_s": forward_backward_s,
            "optimizer_s": optimizer_s,
        }

    def _batch(self, groups: list[ScoredGroup]) -> StepBatch:
        """The step's groups as padded tensors, with the loss normaliser and this rank's rows."""
        advantages_by_group = normalize_batch_advantages(groups, self.cfg.advantage_batch_norm)
        groups = [
            g.model_copy(update={"advantages": a}) for g, a in zip(groups, advantages_by_group, strict=True)
        ]
        input_ids, attention, targets, mask, behaviour, advantages = pack_groups(
            groups, self.tokenizer.pad_token_id
        )
        norm = StepNorm(
            tokens=float(mask.sum().clamp(min=1.0)),
            sequences=float(len(input_ids)),
            constant=float(len(input_ids)) * max(g.group.max_new_tokens for g in groups),
        )
        # longest first, so each micro-batch holds sequences of similar length and is cut to its own
        # longest one (exact: padding is on the right, and masked out)
        lengths = attention.sum(dim=1)
        order = torch.argsort(lengths, descending=True, stable=True)
        return StepBatch(
            input_ids, attention, targets, mask, behaviour, advantages, lengths,
            rows=order[self.rank :: self.world_size], norm=norm, temperature=step_temperature(groups),
        )  # fmt: skip

    def _micro_step(self, batch: StepBatch, k: int, sums: dict, ratios: list, masks: list) -> bool:
        """Forward and backward of micro-batch ``k`` (its sums added to ``sums``); True when its loss
        was not finite (then no backward: the other micro-batches' gradients stay finite)."""
        cfg, temperature = self.cfg, batch.temperature
        mb = cfg.micro_batch_size
        idx = batch.rows[k * mb : (k + 1) * mb]
        filler = len(idx) == 0
        if filler:
            idx = batch.rows[:1]  # keep ranks in lock-step; a zero mask adds nothing
        width = int(batch.lengths[idx].max())
        m = torch.zeros_like(batch.mask[idx, : width - 1]) if filler else batch.mask[idx, : width - 1]
        m = m.to(self.device)
        ids, att = batch.input_ids[idx, :width].to(self.device), batch.attention[idx, :width].to(self.device)
        tgt = batch.targets[idx, : width - 1].to(self.device)
        beh = batch.behaviour[idx, : width - 1].to(self.device)
        adv = batch.advantages[idx, : width - 1].to(self.device)
        logits = self.engine(input_ids=ids, attention_mask=att).logits[:, :-1]
        logp = token_logprobs(logits, tgt, temperature)
        entropy = token_entropy(logits, temperature)
        logp_ref = None
        if self.reference is not None:
            with torch.no_grad():
                ref_logits = self.reference(input_ids=ids, attention_mask=att).logits[:, :-1]
                logp_ref = token_logprobs(ref_logits, tgt, temperature)
        if cfg.importance == "tis":
            logp_old = logp.detach()
            is_weight = torch.clamp(torch.exp(logp_old - beh), max=cfg.tis_cap)
        else:
            logp_old, is_weight = beh, None
        terms = clipped_surrogate(
            logp, logp_old, adv, m, cfg.eps_low, cfg.eps_high,
            dual_clip=cfg.dual_clip, is_weight=is_weight, entropy=entropy, entropy_coef=cfg.entropy_coef,
            logp_ref=logp_ref, kl_coef=cfg.kl_coef, kl_estimator=cfg.kl_estimator,
        )  # fmt: skip
        loss = AGGREGATIONS[cfg.loss_aggregation](terms.per_token, m, batch.norm)
        finite = bool(torch.isfinite(loss))
        if finite:
            self.engine.backward(loss * self.grad_accum * self.world_size)  # DeepSpeed divides by both
        with torch.no_grad():
            ratio = torch.exp(logp.detach() - beh)
            sums["loss"] += float(loss)
            sums["clip_low"] += float(terms.clipped_low.sum())
            sums["clip_high"] += float(terms.clipped_high.sum())
            sums["ratio"] += float(ratio.mul(m).sum())
            sums["entropy"] += float((entropy * m).sum())
            sums["abs_logprob_diff"] += float(((logp.detach() - beh).abs() * m).sum())
            sums["tokens"] += float(m.sum())
            sums["padded"] += float(ids.numel())
            if terms.kl is not None:
                sums["kl"] += float((terms.kl.detach() * m).sum())
            ratios.append(ratio.reshape(-1))
            masks.append(m.reshape(-1))
        return not finite

    def _update(self, nonfinite: bool) -> float | None:
        """Close the accumulation boundary: the optimizer step, or a step that changes nothing when
        a micro-batch's loss was not finite. Returns the gradient norm (None when skipped)."""
        if nonfinite:
            self._skip_update()
            return None
        grad_norm = None
        if self.cfg.zero_stage == 0:  # DeepSpeed records the norm only in its ZeRO optimizers
            grad_norm = self._grad_norm()
        self.engine.step()
        self.step_count += 1
        return self.engine.get_global_grad_norm() if grad_norm is None else grad_norm

    def _grad_norm(self) -> float:
        """The L2 norm of the (already all-reduced) gradients before clipping, in float64."""
        squares = [
            p.grad.detach().double().pow(2).sum()
            for p in self.engine.module.parameters()
            if p.grad is not None
        ]
        return float(torch.stack(squares).sum().sqrt()) if squares else 0.0

    def _skip_update(self) -> None:
        """Close DeepSpeed's accumulation boundary without changing the weights: zero the gradients
        and step with learning rate 0 (AdamW then moves nothing: lr scales both its update and its decay)."""
        for param in self.engine.module.parameters():
            if param.requires_grad:
                param.grad = torch.zeros_like(
                    param
                )  # (tested under ZeRO 0; ZeRO 2/3 keep their own grad buffers)
        groups = self.engine.optimizer.param_groups
        saved = [g["lr"] for g in groups]
        for g in groups:
            g["lr"] = 0.0
        self.engine.step()
        for g, lr in zip(groups, saved, strict=True):
            g["lr"] = lr

    @torch.no_grad()
    def logprobs_of(self, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
        """Logprobs (temperature 1) of ``completion_ids`` after ``prompt_ids`` under the current weights."""
        self.engine.eval()
        ids = torch.tensor([prompt_ids + completion_ids], device=self.device)
        logits = self.engine(input_ids=ids).logits[:, len(prompt_ids) - 1 : -1]
        return token_logprobs(logits, torch.tensor([completion_ids], device=self.device))[0].tolist()

    # -- checkpoints -----------------------------------------------------------------------------------
    def save_checkpoint(self, directory: str, extra: dict | None = None) -> None:
        """Model, optimizer, scheduler, step, version and RNG states (every rank must call)."""
        state = {
            "step": self.step_count,
            "version": self.version,
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
            "numpy_rng": np.random.get_state(),
            "extra": extra or {},
        }
        tag = f"step{self.step_count}"
        # DeepSpeed writes its ``latest`` pointer in place, after the files: a kill while it writes
        # them leaves a torn or stale pointer. Ours goes last and atomically, once every file of the
        # tag is on disk, so a checkpoint being written when the process died is never picked up
        self.engine.save_checkpoint(directory, tag=tag, client_state=state, save_latest=False)
        if self.rank == 0:
            if not (Path(directory) / BASE_MODEL / "config.json").is_file():
                write_dir_atomically(Path(directory) / BASE_MODEL, self._save_base)
            publish_checkpoint(directory, tag)
            rotate_checkpoints(directory, tag, self.config.checkpoint.keep_last)

    def _save_base(self, folder: Path) -> None:
        """What a DeepSpeed checkpoint lacks to be a Hugging Face model: its config and tokenizer."""
        self.engine.module.config.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)

    def load_checkpoint(self, directory: str, tag: str | None = None) -> dict:
        path, state = self.engine.load_checkpoint(directory, tag=tag)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint in {directory} (tag {tag or 'latest'})")
        self.step_count, self.version = state["step"], state["version"]
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        np.random.set_state(state["numpy_rng"])
        return state["extra"]

    def close(self) -> None:
        """Leave the process group together: a rank that exits while gloo's threads still run in
        another can abort ("terminate called without an active exception")."""
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    def _write_hf(self, folder: str | Path, state: dict[str, torch.Tensor]) -> None:
        self.engine.module.save_pretrained(folder, state_dict=state, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)

    def save_hf(self, path: str) -> str:
        """The model in Hugging Face format (rank 0 writes; under ZeRO-3 every rank must call)."""
        state = {name: t.clone() for name, t in self.iter_weights()}
        if self.rank == 0:
            self._write_hf(path, state)
        return path

    def save_hf_checkpoint(self, directory: str) -> str:
        """The model in Hugging Face format in ``directory/step_<N>``, written atomically, then the
        oldest beyond ``checkpoint.keep_last`` deleted (every rank must call)."""
        name = f"{HF_PREFIX}{self.step_count}"
        target = Path(directory) / name
        state = {key: t.clone() for key, t in self.iter_weights()}
        if self.rank == 0:
            write_dir_atomically(target, lambda folder: self._write_hf(folder, state), f".{HF_PREFIX}*")
            rotate_checkpoints(directory, name, self.config.checkpoint.keep_last, prefix=HF_PREFIX)
        return str(target)
