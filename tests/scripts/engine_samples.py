"""Samples a fixed set of prompts with one vLLM-CPU engine; used by tests/test_engine.py.

    python tests/scripts/engine_samples.py OUT.json MODEL_DIR --multiprocessing 0|1

vLLM's multiprocess mode spawns processes, so each engine is built in a process of its own under
a ``__main__`` guard. Writes, per engine call, every completion's token ids and logprobs, and the names of the
process's children while the engine is up.
"""

from __future__ import annotations

import argparse
import json

from actors.engine import SamplingSettings
from actors.engines import make_engine
from pope.config import VLLMEngineConfig


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("model")
    parser.add_argument("--multiprocessing", type=int, choices=[0, 1], required=True)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from pope.config import DataConfig
    from pope.problems import builtin_arithmetic
    from pope.prompts import PromptSpec, render_prompt

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    problems = builtin_arithmetic(8, seed=0)
    specs = [PromptSpec(p, "unguided", 0) for p in problems]
    prompts = [
        tokenizer(render_prompt(tokenizer, s, DataConfig()), add_special_tokens=False)["input_ids"]
        for s in specs
    ]
    config = VLLMEngineConfig(multiprocessing=bool(args.multiprocessing), kv_cache_gib=0.1, max_model_len=256)
    engine = make_engine(config, args.model, seed=0, dtype="float32")
    children = _child_names()
    calls = []
    for call in range(2):
        groups = engine.generate(
            prompts[call * 4 : (call + 1) * 4],
            SamplingSettings(8, 32, 1.0, 1.0, seeds=tuple((call * 4 + j) * 8 for j in range(4))),
        )
        calls.append([[s.token_ids, s.logprobs, s.finish_reason] for group in groups for s in group])
    # two copies of one prompt in one call, each request its own seed (rollout i: seed + i)
    twins = engine.generate([prompts[0], prompts[0]], SamplingSettings(8, 32, 1.0, 1.0, seeds=(1000, 1008)))
    twins = [[s.token_ids for s in group] for group in twins]
    engine.close()
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"calls": calls, "children": children, "twins": twins}, f)


def _child_names() -> list[str]:
    """Command lines of this process's live children (vLLM names its engine processes there,
    e.g. "VLLM::EngineCore")."""
    import psutil

    return [" ".join(child.cmdline()) for child in psutil.Process().children()]


if __name__ == "__main__":
    main()
