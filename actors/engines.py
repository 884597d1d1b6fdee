"""The engine registry: ``actors.engine.type`` to an engine class (imported on use: vLLM is heavy)."""

from __future__ import annotations

from actors.engine import GenerationEngine


def _vllm():
    from actors.vllm_engine import VLLMEngine

    return VLLMEngine


def _hf():
    from actors.hf_engine import HFEngine

    return HFEngine


ENGINES = {"vllm": _vllm, "hf": _hf}


def make_engine(
    engine_config, model_path: str, seed: int, dtype: str, weight_transfer: str = "gloo"
) -> GenerationEngine:
    """``weight_transfer``: the backend weights arrive by (``PopeConfig.weight_transfer_backend``)."""
    if engine_config.type not in ENGINES:
        raise ValueError(
            f"actors.engine.type {engine_config.type!r} is not an engine (known: {', '.join(ENGINES)})"
        )
    return ENGINES[engine_config.type]()(engine_config, model_path, seed, dtype, weight_transfer)
