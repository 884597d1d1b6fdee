"""Continuous generation on vLLM's engine-level API: requests go in as capacity frees, the engine
steps without pause, and weights change between two decoding steps.

``ContinuousGeneration`` wraps a vLLM ``LLMEngine`` (``LLM.llm_engine``). A group of G rollouts is
``submit``-ted as G requests (``key/0`` .. ``key/G-1``, seeds ``seed + i``: what vLLM gives the n
children of one request, so a group samples the same tokens as ``LLM.generate`` with n=G). Every
``step`` is one decoding step of every running sequence; tokens stream back (``DELTA`` outputs)
and each is tagged with the policy version the engine held when it was sampled. A group comes back
from ``step`` as soon as its G rollouts are done.

A weight update between two steps (the engine loads in place, then ``weights_changed``) changes
the policy under the running sequences. Their behaviour logprobs stay those of the tokens as sampled: each token's
logprob is the one the sampling distribution gave it, under the version that sampled it. What the
running sequences' KV cache holds is the engine's ``kv_after_update`` (``VLLMEngine._after_load``):

- ``recompute``: every running sequence is preempted and its KV recomputed under the new weights
  (vLLM's ``reset_prefix_cache(reset_running_requests=True)``), so each token after the update is
  sampled from exactly the new policy given its context: the learner's logprob of that token
  under that version is the behaviour logprob.
- ``keep``: the KV cache computed under the old weights stays (no recompute; prefix caching is off,
  so no new request reuses a stale block). Tokens after the update are sampled from a mixed state
  (new weights attending over old keys and values); their logprobs are still those of the
  distribution that sampled them, which the importance ratio needs, but they are not the learner's
  logprobs under either version.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.engine import Sample, SamplingSettings


@dataclass
class _Rollout:
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    # (first token index, version): the version that sampled tokens from that index on
    versions: list[tuple[int, int]] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class FinishedGroup:
    key: str
    samples: list[Sample]
    versions: list[list[tuple[int, int]]]  # per rollout: (first token index, version) change points

    @property
    def first_version(self) -> int:
        return min(v[0][1] for v in self.versions)

    @property
    def last_version(self) -> int:
        return max(v[-1][1] for v in self.versions)


class ContinuousGeneration:
    def __init__(self, llm_engine, stop_at_eos: bool = True):
        self.engine = llm_engine
        self.stop_at_eos = stop_at_eos  # False: every request runs to its budget (the engine's stop_at_eos)
        self.version = 0
        self._groups: dict[str, list[_Rollout]] = {}

    @property
    def groups_running(self) -> int:
        return len(self._groups)

    @property
    def sequences_running(self) -> int:
        return sum(1 for rollouts in self._groups.values() for r in rollouts if r.finish_reason is None)

    def submit(self, key: str, prompt_ids: list[int], settings: SamplingSettings, seed: int) -> None:
        """G requests for one prompt; ``step`` returns them as one group when all G are done."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        if key in self._groups or "/" in key:
            raise ValueError(f"group key {key!r}: already running, or holds a '/'")
        self._groups[key] = [_Rollout() for _ in range(settings.num_rollouts)]
        for index in range(settings.num_rollouts):
            params = SamplingParams(
                n=1,
                temperature=settings.temperature,
                top_p=settings.top_p,
                max_tokens=settings.max_new_tokens,
                logprobs=0,  # the sampled token's own logprob
                seed=seed + index,
                ignore_eos=not (settings.stop_at_eos and self.stop_at_eos),
                output_kind=RequestOutputKind.DELTA,
            )
            self.engine.add_request(f"{key}/{index}", {"prompt_token_ids": prompt_ids}, params)

    def step(self) -> list[FinishedGroup]:
        """One decoding step of every running sequence; the groups it completed."""
        if not self.engine.has_unfinished_requests():
            return []
        finished = []
        for output in self.engine.step():
            key, index = output.request_id.rsplit("/", 1)
            rollout = self._groups[key][int(index)]
            completion = output.outputs[0]
            new = list(completion.token_ids)
            if new and (not rollout.versions or rollout.versions[-1][1] != self.version):
                rollout.versions.append((len(rollout.token_ids), self.version))
            rollout.token_ids += new
            rollout.logprobs += [
                step[t].logprob for step, t in zip(completion.logprobs or [], new, strict=True)
            ]
            if output.finished:
                rollout.finish_reason = "length" if completion.finish_reason == "length" else "stop"
                if all(r.finish_reason for r in self._groups[key]):
                    finished.append(self._finish(key))
        return finished

    def _finish(self, key: str) -> FinishedGroup:
        rollouts = self._groups.pop(key)
        for r in rollouts:
            if len(r.logprobs) != len(r.token_ids):
                raise RuntimeError(f"group {key}: {len(r.logprobs)} logprobs for {len(r.token_ids)} tokens")
        return FinishedGroup(
            key,
            [Sample(r.token_ids, r.logprobs, r.finish_reason) for r in rollouts],
            [r.versions or [(0, self.version)] for r in rollouts],
        )

    def weights_changed(self, version: int) -> None:
        """Call right after new weights were loaded (between two steps): tokens from now on are
        ``version``'s."""
        self.version = version

    def abort_all(self) -> None:
        """Drop every running group (stopping)."""
        ids = [f"{key}/{i}" for key, rollouts in self._groups.items() for i in range(len(rollouts))]
        if ids:
            self.engine.abort_request(ids)
        self._groups.clear()
