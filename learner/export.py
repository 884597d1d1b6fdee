"""``pope export``: a resumable (DeepSpeed) checkpoint of the learner as a Hugging Face model folder.

No Ray, no pipeline, no process group: the weights are read from the checkpoint's files
(``mp_rank_00_model_states.pt`` holds the whole module under ZeRO 0-2; under ZeRO-3 DeepSpeed's
``zero_to_fp32`` gathers the partitions), the config and tokenizer from ``<checkpoints>/model``,
which the learner writes beside its first checkpoint. Only a published checkpoint is read: the one
``latest`` names, or an older ``step<N>``; a tag newer than ``latest`` may be half-written and is
refused. The output folder is written atomically (a temp folder, renamed when complete).

The checkpoint files are pickles (DeepSpeed's format): export only checkpoints you trust.
"""

from __future__ import annotations

from pathlib import Path

import torch

from learner.policy import BASE_MODEL, checkpoint_steps, write_dir_atomically

MODEL_STATES = "mp_rank_00_model_states.pt"  # ZeRO 0-2; ZeRO-3 writes zero_pp_rank_0_<this>


def _model_states(tag_dir: Path) -> Path | None:
    for name in (MODEL_STATES, f"zero_pp_rank_0_{MODEL_STATES}"):
        if (tag_dir / name).is_file():
            return tag_dir / name
    return None


class ExportError(ValueError):
    """A checkpoint that cannot be exported; the message names the path and the reason."""


def checkpoint_tag(source: str | Path, step: int | None = None) -> tuple[Path, str]:
    """(checkpoints folder, tag) for a run dir or a checkpoints folder, at ``step`` or the published one."""
    source = Path(source)
    folder = source / "checkpoints" if (source / "checkpoints" / "latest").is_file() else source
    pointer = folder / "latest"
    if not pointer.is_file():
        raise ExportError(
            f"{source}: no published resumable checkpoint (neither {source}/checkpoints/latest nor "
            f"{source}/latest exists)"
        )
    latest = pointer.read_text().strip()
    if step is None:
        return folder, latest
    tag, newest = f"step{step}", int(latest.removeprefix("step"))
    if step > newest:
        raise ExportError(
            f"{folder / tag}: newer than the published checkpoint ({latest}); it may be half-written"
        )
    if _model_states(folder / tag) is None:
        kept = [name for n, name in checkpoint_steps(folder) if n <= newest]
        raise ExportError(f"{folder}: no checkpoint of step {step} (kept: {', '.join(kept) or 'none'})")
    return folder, tag


def checkpoint_state_dict(folder: Path, tag: str) -> dict[str, torch.Tensor]:
    """The model's weights as the learner held them (its dtype; fp32 master weights cast to it under ZeRO-3)."""
    path = _model_states(folder / tag)
    if path is None:
        raise ExportError(f"{folder / tag / MODEL_STATES} missing: not a DeepSpeed checkpoint")
    blob = torch.load(path, map_location="cpu", weights_only=False)
    stage = blob.get("ds_config", {}).get("zero_optimization", {}).get("stage", 0)
    if stage < 3:
        return blob["module"]
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=tag)
    dtypes = {name: t.dtype for name, t in blob["module"].items()}  # the partitioned params' placeholders
    return {name: t.to(dtypes.get(name, t.dtype)) for name, t in state.items()}


def export_checkpoint(
    source: str | Path, out: str | Path, step: int | None = None, base_model: str | Path | None = None
) -> Path:
    """Write the checkpoint of ``source`` (a run dir or its checkpoints folder; ``step`` or the
    published one) to ``out`` as a Hugging Face model folder (weights, config, tokenizer). The
    config and tokenizer come from ``<checkpoints>/model``, else from ``base_model``."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"--out {out}: exists and is not an empty folder (nothing is overwritten)")
    folder, tag = checkpoint_tag(source, step)
    base = folder / BASE_MODEL if (folder / BASE_MODEL / "config.json").is_file() else base_model
    if base is None:
        raise ExportError(
            f"{folder / BASE_MODEL}: missing (the model's config and tokenizer); name the base model"
        )
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    state = checkpoint_state_dict(folder, tag)
    config = AutoConfig.from_pretrained(base)
    model = AutoModelForCausalLM.from_config(config, dtype=next(iter(state.values())).dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if unexpected or set(missing) - tied:
        raise ExportError(
            f"{folder / tag}: weights do not fit the model of {base} (missing {sorted(set(missing) - tied)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]})"
        )
    model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(base)
    if out.exists():
        out.rmdir()  # empty (checked above): the rename below puts the whole folder in its place

    def write(temp: Path) -> None:
        model.save_pretrained(temp, safe_serialization=True)
        tokenizer.save_pretrained(temp)

    return write_dir_atomically(out, write)
