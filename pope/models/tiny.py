"""The embedded default model: a small Qwen2-architecture model and tokenizer built locally.

No download: a byte-level BPE tokenizer is trained on the built-in problems, a Qwen2 config with
head_dim 64 (vLLM-CPU rejects 16) is initialised from a seed, and a short supervised warm-up on
the problems' solutions teaches it the answer format, so that rewards vary within a group.
The folder is a normal Hugging Face model folder, loadable by transformers and vLLM, built once
per spec and cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

TINY_SPEC = {
    "name": "tiny-qwen2",
    "version": 2,
    "vocab_size": 384,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 64,
    "max_position_embeddings": 1024,
    "warmup_steps": 150,
    "warmup_lr": 3e-3,
    "num_problems": 2000,
}


def _corpus(seed: int) -> list[tuple[str, str, str]]:
    from pope.problems import builtin_arithmetic

    problems = builtin_arithmetic(TINY_SPEC["num_problems"], seed=seed + 7919)  # disjoint from run seeds
    return [(p.problem, p.solution, p.answer) for p in problems]


def build_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_SPEC["vocab_size"],
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        chat_template=CHAT_TEMPLATE,
        model_max_length=TINY_SPEC["max_position_embeddings"],
    )


def _warmup(model, tokenizer, corpus, seed: int) -> None:
    """A short supervised pass on (prompt, solution) pairs, so the model writes \\boxed{} answers."""
    import torch

    from pope.config import DataConfig

    system = DataConfig().instruction("unguided")
    gen = torch.Generator().manual_seed(seed)
    texts = []
    for problem, solution, _ in corpus:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": problem}]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        texts.append(prompt + solution + "<|im_end|>")
    optimizer = torch.optim.AdamW(model.parameters(), lr=TINY_SPEC["warmup_lr"])
    model.train()
    for _ in range(TINY_SPEC["warmup_steps"]):
        idx = torch.randint(len(texts), (32,), generator=gen).tolist()
        batch = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def spec_hash(seed: int) -> str:
    return hashlib.sha256(json.dumps({**TINY_SPEC, "seed": seed}, sort_keys=True).encode()).hexdigest()[:12]


def new_qwen2(spec: dict, tokenizer):
    """A freshly initialised Qwen2 model of ``spec``'s sizes (tied embeddings, float32)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "head_dim", "max_position_embeddings")  # fmt: skip
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        **{key: spec[key] for key in keys},
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        torch_dtype="float32",
    )
    return Qwen2ForCausalLM(config)


def save_model_folder(model, tokenizer, spec: dict, out_dir: Path) -> Path:
    """Write a Hugging Face folder atomically: a concurrent reader sees no folder or the whole one;
    when another process built the same spec first, its folder is kept."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "generation_config.json").write_text(
        json.dumps({"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id})
    )
    (tmp / "pope_spec.json").write_text(json.dumps(spec, indent=2))
    try:
        os.rename(tmp, out_dir)
    except OSError:
        if not (out_dir / "config.json").is_file():
            raise
        shutil.rmtree(tmp)
    return out_dir


def build_tiny_model(out_dir: Path, seed: int = 0) -> Path:
    """Build the model folder at ``out_dir`` (kept if another process built it first)."""
    import torch

    corpus = _corpus(seed)
    tokenizer = build_tokenizer([f"{p} {s}" for p, s, _ in corpus] + [CHAT_TEMPLATE])
    torch.manual_seed(seed)
    model = new_qwen2(TINY_SPEC, tokenizer)
    _warmup(model, tokenizer, corpus, seed)
    save_model_folder(model, tokenizer, {**TINY_SPEC, "seed": seed}, out_dir)
    return out_dir


def resolve(cache_dir: Path, seed: int = 0) -> Path:
    """The model folder of ``builtin:tiny-qwen2`` for ``seed``, built once into ``cache_dir``."""
    target = Path(cache_dir) / f"tiny-qwen2-{spec_hash(seed)}"
    if not (target / "config.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        build_tiny_model(target, seed)
    return target.resolve()
