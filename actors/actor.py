"""The rollout actor: prompts in, rollout groups out, weights in between.

    sampler ──prompts──> engine.generate (G rollouts each) ──RolloutGroup──> rollouts stream
                 ^                                                   (backpressure by lag)
                 └── between engine calls: pending weight update? receive + load, version += 1

``RolloutActor`` is a plain class (tested without Ray); ``RayRolloutActor`` hosts it. The loop and
the weight load run on one thread, so generation is paused while weights load; the learner's
``update_weights`` call (another Ray thread) only hands the request over and waits for it.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

from actors.engine import SamplingSettings, make_engine
from broker.schemas import PackedArray, Rollout, RolloutGroup
from broker.streams import Producer, connect
from pope.config import PopeConfig
from pope.problems import run_problems
from pope.prompts import render_prompt, sample_prompts
from pope.weight_sync import TensorMeta


@dataclass
class ActorStats:
    groups_produced: int = 0
    completions: int = 0
    completion_tokens: int = 0
    generate_s: float = 0.0
    weight_load_s: float = 0.0
    backpressure_wait_s: float = 0.0
    weight_updates: int = 0
    group_ids: list[str] = field(default_factory=list)


@dataclass
class _WeightRequest:
    version: int
    metas: list[TensorMeta]
    done: threading.Event = field(default_factory=threading.Event)
    checksum: float | None = None
    error: str | None = None


class RolloutActor:
    def __init__(self, config: PopeConfig, actor_index: int, model_path: str, redis_url: str | None):
        """``redis_url`` None: a generation-only actor (the pool of filter-hard, find-prefixes, eval)."""
        self.config = config
        self.run_id = config.run.run_id
        self.actor_id = f"actor{actor_index}"
        self.actor_index = actor_index
        self.engine = make_engine(
            config.actors.engine, model_path, config.run.seed + actor_index, config.model.dtype
        )
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.version = 0
        self.stats = ActorStats()
        self._stop = threading.Event()
        self._weights: queue.Queue[_WeightRequest] = queue.Queue()
        self._sequence = 0
        self.client = None
        if redis_url is None:
            return
        self.client = connect(redis_url, config.broker.socket_timeout_s)
        self.producer = Producer(
            self.client,
            self.run_id,
            "rollouts",
            max_in_flight=config.broker.max_groups_in_flight,
            maxlen=config.broker.emergency_maxlen,
        )
        data = config.data
        problems = run_problems(data, config.run.seed)
        easy = (
            run_problems(data, config.run.seed, easy=True)
            if data.mix in ("hard_easy", "guided_easy")
            else None
        )
        self.prompts = sample_prompts(
            problems, data, config.run.seed, actor_index, config.actors.num_actors, easy
        )

    # -- weights -------------------------------------------------------------------------------
    def init_weight_group(self, host: str, port: int, world_size: int, timeout_s: float) -> None:
        self.engine.init_weight_group(host, port, self.actor_index + 1, world_size, timeout_s)

    def update_weights(self, version: int, metas: list[TensorMeta], timeout_s: float) -> float:
        """Called from another thread: queue the update for the loop, wait until it is loaded."""
        request = _WeightRequest(version, metas)
        self._weights.put(request)
        if not self._running:  # no loop to serve it: load here
            self._apply_pending_weights(timeout_s)
        if not request.done.wait(timeout_s):
            raise TimeoutError(f"{self.actor_id}: weights v{version} not loaded within {timeout_s}s")
        if request.error:
            raise RuntimeError(f"{self.actor_id}: loading weights v{version} failed: {request.error}")
        return request.checksum

    def _apply_pending_weights(self, timeout_s: float) -> None:
        while True:
            try:
                request = self._weights.get_nowait()
            except queue.Empty:
                return
            start = time.monotonic()
            try:
                request.checksum = self.engine.receive_weights(request.metas, timeout_s)
                self.version = request.version
                self.stats.weight_updates += 1
            except Exception as exc:  # deliberate: reported to the learner, which fails the run
                request.error = f"{type(exc).__name__}: {exc}"
            finally:
                self.stats.weight_load_s += time.monotonic() - start
                request.done.set()

    # -- generation ------------------------------------------------------------------------------
    _running = False

    def generate_once(self) -> list[RolloutGroup]:
        """One engine call: ``prompts_per_call`` prompts, G rollouts each, written to the stream."""
        cfg = self.config.actors
        specs = [next(self.prompts) for _ in range(cfg.prompts_per_call)]
        texts = [render_prompt(self.tokenizer, spec, self.config.data) for spec in specs]
        prompt_ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        settings = SamplingSettings(
            num_rollouts=cfg.num_rollouts,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            seed=self.config.run.seed * 7_919 + self.actor_index * 104_729 + self._sequence,
        )
        version = self.version
        start = time.monotonic()
        samples = self.engine.generate(prompt_ids, settings)
        elapsed = time.monotonic() - start
        self.stats.generate_s += elapsed
        groups = []
        for spec, ids, group_samples in zip(specs, prompt_ids, samples, strict=True):
            prefix_tokens = 0
            if spec.prefix_units:
                prefix_tokens = len(
                    self.tokenizer(spec.prefix_text + " ", add_special_tokens=False)["input_ids"]
                )
            rollouts = [
                Rollout(
                    completion_ids=PackedArray.of(s.token_ids, "int32"),
                    behaviour_logprobs=PackedArray.of(s.logprobs, "float32"),
                    text=self.tokenizer.decode(s.token_ids, skip_special_tokens=True),
                    finish_reason=s.finish_reason,
                )
                for s in group_samples
            ]
            group = RolloutGroup(
                run_id=self.run_id,
                group_id=f"{self.actor_id}-{self._sequence:07d}",
                problem_id=spec.problem.problem_id,
                variant=spec.variant,
                prefix_units=spec.prefix_units,
                prefix_tokens=prefix_tokens,
                answer=spec.problem.answer,
                prompt_ids=PackedArray.of(ids, "int32"),
                rollouts=rollouts,
                policy_version_start=version,
                policy_version_end=self.version,
                actor_id=self.actor_id,
                sampled_at=time.time(),
                generate_s=elapsed,
            )
            self._sequence += 1
            groups.append(group)
        return groups

    def run(self) -> ActorStats:
        """Generate until stopped; weights load between engine calls."""
        self._running = True
        try:
            while not self._stop.is_set():
                self._apply_pending_weights(self.config.learner.broadcast_timeout_s)
                before = self.producer.wait_s
                if not self.producer.wait_for_room(self._idle_tick):
                    break
                self.stats.backpressure_wait_s += self.producer.wait_s - before
                self._apply_pending_weights(self.config.learner.broadcast_timeout_s)
                for group in self.generate_once():
                    self.producer.put(group)
                    self.stats.groups_produced += 1
                    self.stats.completions += len(group.rollouts)
                    self.stats.completion_tokens += sum(len(r.completion_ids) for r in group.rollouts)
                    self.stats.group_ids.append(group.group_id)
        finally:
            self._running = False
            self._apply_pending_weights(self.config.learner.broadcast_timeout_s)
        return self.stats

    def _idle_tick(self) -> bool:
        """While waiting on backpressure, keep serving weight updates (the learner may be waiting on
        us to load before it consumes more); True when asked to stop."""
        self._apply_pending_weights(self.config.learner.broadcast_timeout_s)
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()

    def probe(self, prompt_ids: list[int], num_tokens: int) -> tuple[list[int], list[float]]:
        """Greedy tokens and logprobs of a fixed prompt: compares the engine's weights with the learner's."""
        return self.engine.greedy_logprobs(prompt_ids, num_tokens)

    def sample_texts(
        self, prompts: list[str], num_samples: int, max_new_tokens: int, seed: int
    ) -> list[list[tuple[str, int]]]:
        """Generation only: for each prompt text, ``num_samples`` (completion text, token count)."""
        cfg = self.config.actors
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        settings = SamplingSettings(num_samples, max_new_tokens, cfg.temperature, cfg.top_p, seed)
        start = time.monotonic()
        samples = self.engine.generate(ids, settings)
        self.stats.generate_s += time.monotonic() - start
        return [
            [(self.tokenizer.decode(s.token_ids, skip_special_tokens=True), len(s.token_ids)) for s in g]
            for g in samples
        ]

    def close(self) -> None:
        self.engine.close()
        if self.client is not None:
            self.client.close()
