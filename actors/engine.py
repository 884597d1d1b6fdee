"""The generation engine interface. Rollout code is written against it, so the same actor runs
vLLM on GPU, vLLM on CPU, or Hugging Face transformers.

Behaviour logprobs are log-probabilities of each sampled token under the distribution it was
sampled from: logits divided by the temperature, then top-p truncation where used. The learner
computes the same quantity (logits / temperature) for its importance ratios.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Sample:
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" | "length"


@dataclass(frozen=True)
class SamplingSettings:
    num_rollouts: int
    max_new_tokens: int
    temperature: float
    top_p: float
    seeds: tuple[int, ...]  # one per prompt: rollout i of prompt j samples with seeds[j] + i
    stop_at_eos: bool = True  # False: every rollout runs to max_new_tokens (benchmarks; vLLM only)

    def seed_of(self, index: int, num_prompts: int) -> int:
        if len(self.seeds) != num_prompts:
            raise ValueError(f"{len(self.seeds)} seeds for {num_prompts} prompts: give one per prompt")
        return self.seeds[index]


class GenerationEngine(Protocol):
    def generate(self, prompts: list[list[int]], settings: SamplingSettings) -> list[list[Sample]]:
        """For each prompt (token ids), ``settings.num_rollouts`` samples."""
        ...

    def init_weight_transfer(self, init_info: dict) -> None:
        """Join the learner's weight-transfer group (the backend's init info, built by the learner)."""
        ...

    def update_weights(self, update_info: dict) -> float | None:
        """Receive one update and load it in place; the checksum of what arrived, where the
        backend computes one (gloo), else None."""
        ...

    def greedy_logprobs(self, prompt: list[int], num_tokens: int) -> tuple[list[int], list[float]]:
        """Greedy continuation of ``prompt`` and its tokens' logprobs at temperature 1 (for checks)."""
        ...

    def close(self) -> None: ...
