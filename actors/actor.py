"""The rollout actor: prompts in, rollout groups out, weights in between.

    sampler ──prompts──> engine.generate (G rollouts each) ──RolloutGroup──> rollouts stream
                 ^                                                   (backpressure by lag)
                 └── between engine calls: pending weight update? receive + load, version += 1

``RolloutActor`` is a plain class (tested without Ray, tests/test_components.py); the launcher hosts it
in a Ray actor. The loop and the weight load run on one thread, so generation is paused while
weights load; the learner's ``update_weights`` call (another Ray thread) only hands the request
over and waits for it.

Which prompt comes next is the run's one sampler (pope/prompts.py ``PromptSchedule``): the actor
claims the next ``prompts_per_call`` positions from a Redis counter, so actors own no shard of the
problems; a restarted actor first asks the positions it had claimed and not written.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field, replace

from actors.engine import SamplingSettings
from actors.engines import make_engine
from broker.inflight import PoolBound
from broker.schemas import ActorProgress, PackedArray, Rollout, RolloutGroup
from broker.streams import (
    LOOP_GRACE_S,
    ControlChannel,
    KeepAlive,
    PositionClaims,
    Producer,
    ProgressReporter,
    WorkDeadline,
    connect,
    fetch_files,
)
from pope.config import ActorSettings
from pope.loop_calls import LoopCalls
from pope.models.folder import ModelFolder, local_folder
from pope.problems import Problem
from pope.prompts import PromptSchedule, PromptSpec, render_prompt, request_seed


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
class EvalSamples:
    """One actor's share of an evaluation: per prompt, its completions' texts; the weight versions
    that sampled them (the lowest and the highest)."""

    texts: list[list[str]]
    version_start: int
    version_end: int


@dataclass
class _EvalBatch:
    """Evaluation requests in the continuous engine, beside the training groups."""

    keys: list[str]
    finished: dict = field(default_factory=dict)  # key -> FinishedGroup
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None


class RolloutActor:
    def __init__(
        self,
        config: ActorSettings,
        actor_index: int,
        model_path: str | ModelFolder,
        redis_url: str | None,
        problems: list[Problem] | None = None,
        easy: list[Problem] | None = None,
    ):
        """``config``: the actor's sections (``PopeConfig.for_actors``). ``model_path``: the model folder the launcher resolved. ``problems`` (and ``easy``): the
        run's validated problems, loaded once by the launcher. ``redis_url`` None: a generation-only
        actor (the pool of filter-hard, find-prefixes, eval), which needs no problems."""
        self.config = config
        self.run_id = config.run.run_id
        self.actor_id = f"actor{actor_index}"
        self.actor_index = actor_index
        self.client = None
        if redis_url is not None:
            self.client = connect(
                redis_url, config.broker.socket_timeout_s, config.broker.reconnect_timeout_s
            )
        fetch = None if self.client is None else (lambda key: fetch_files(self.client, key))
        model_path = local_folder(model_path, config.model.cache_dir, fetch)
        self.engine = make_engine(
            config.actors.engine, model_path, config.run.seed + actor_index, config.model.dtype,
            config.weight_transfer,
        )  # fmt: skip
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.version = 0
        self.stats = ActorStats()
        self._stop = threading.Event()
        self.calls = LoopCalls(self.actor_id)  # the engine is not thread-safe: weights load on the loop
        # a restarted actor (Ray max_restarts) starts a new incarnation: its group ids never repeat
        self.incarnation = secrets.token_hex(3)
        self.deadline = WorkDeadline(LOOP_GRACE_S)  # until when the loop's current phase may last
        self.stream = None  # continuous generation (actors.generation): the engine's step interface
        self.weights_whole = True  # False from a weight update's start until it has loaded whole
        self._evals: dict[str, _EvalBatch] = {}  # continuous: evaluation request key -> its batch
        if redis_url is None:
            return
        if not problems:
            raise ValueError(f"{self.actor_id}: a training actor needs the run's problems")
        self.progress = ProgressReporter(
            ControlChannel(self.client, self.run_id), self.actor_id, config.progress_interval_s
        )
        # the bound is pool-wide (broker/inflight.py): a (re)started actor holds nothing in its engine
        self.pool = PoolBound(
            self.client, self.run_id, self.actor_id, config.broker.max_groups_in_flight,
            config.broker.generating_stale_s,
        )  # fmt: skip
        self.pool.reset()
        self.producer = Producer(
            self.client, self.run_id, "rollouts", max_in_flight=None, maxlen=config.broker.emergency_maxlen,
            pool=self.pool,
        )  # fmt: skip
        self.schedule = PromptSchedule(problems, config.data, config.run.seed, config.groups_per_step, easy)
        self.claims = PositionClaims(self.client, self.run_id)
        # liveness from a thread: an engine call, a weight load or a backpressure wait longer than
        # the launcher's heartbeat deadline is not a hang; one longer than its own deadline is
        self.keepalive = KeepAlive(
            self.actor_id,
            config.progress_interval_s,
            [lambda: self._report_progress(force=True), self.pool.refresh],
            working=self.deadline.working,
        )
        # a restarted (or resumed) actor first asks what it had claimed and not written
        self._redo = list(self.claims.unfinished(self.actor_id))
        if config.actors.continuous:
            self.stream = self.engine.continuous()

    def policy_version(self) -> int:
        """The weight version the engine holds."""
        return self.version

    def get_tokenizer(self):
        """The engine's tokenizer (a generation pool renders its prompts with it)."""
        return self.tokenizer

    def encode(self, text: str) -> list[int]:
        """``text`` in the engine's tokens (no special tokens added)."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    # -- weights -------------------------------------------------------------------------------
    def init_weight_transfer(self, init_info: dict, timeout_s: float) -> None:
        """Join (or re-join, after the pool was resized) the learner's weight-transfer group;
        ``init_info`` is the backend's, with this actor's ``rank_offset`` (learner/weights.py)."""
        self.calls.call(lambda: self.engine.init_weight_transfer(init_info), "joining", timeout_s)

    def update_weights(self, version: int, update_info: dict, timeout_s: float) -> float | None:
        """Receive one update (the backend's update info); the checksum of what was loaded (gloo)."""
        return self.calls.call(
            lambda: self._load_weights(version, update_info, timeout_s),
            f"loading weights v{version}",
            timeout_s,
        )

    def _load_weights(self, version: int, update_info: dict, timeout_s: float) -> float | None:
        start = time.monotonic()
        self.deadline.expect(timeout_s)
        # an update that fails part way (a peer of the weight group died mid-broadcast) leaves the
        # engine's layers half reloaded (vLLM's layerwise reload puts meta tensors in place until a
        # layer is loaded): decode nothing until a whole update has loaded
        self.weights_whole = False
        try:
            checksum = self.engine.update_weights(update_info)
        finally:
            self.stats.weight_load_s += time.monotonic() - start
            self.deadline.expect()
        self.weights_whole = True
        self.version = version
        if self.stream is not None:  # between two decoding steps: later tokens are this version's
            self.stream.weights_changed(version)
        self.stats.weight_updates += 1
        return checksum

    # -- generation ------------------------------------------------------------------------------
    def _next_positions(self, n: int) -> list[int]:
        """Up to ``n`` unwritten positions of a claim made before a restart (alone: the sampler hash
        keeps one claim per producer, so a call never mixes them with a new claim), else a new claim
        of ``n``."""
        if self._redo:
            positions, self._redo = self._redo[:n], self._redo[n:]
            return positions
        return list(self.claims.claim(self.actor_id, n))

    def _specs(self, positions: list[int]):
        """The prompt specs at ``positions``, their rendered token ids, and one seed per request."""
        cfg = self.config.actors
        specs = [self.schedule.at(position) for position in positions]
        prompt_ids = [self.encode(render_prompt(self.tokenizer, spec, self.config.data)) for spec in specs]
        seeds = tuple(request_seed(self.config.run.seed, s.position, cfg.num_rollouts) for s in specs)
        return specs, prompt_ids, seeds

    def _sampling(self, seeds: tuple[int, ...]) -> SamplingSettings:
        cfg = self.config.actors
        return SamplingSettings(
            num_rollouts=cfg.num_rollouts,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            seeds=seeds,
        )

    def generate_once(self, num_prompts: int | None = None) -> list[RolloutGroup]:
        """One engine call: ``num_prompts`` (default ``prompts_per_call``; fewer when redoing the
        rest of a claim) prompts, G rollouts each, one seed per request."""
        n = num_prompts or self.config.actors.prompts_per_call
        specs, prompt_ids, seeds = self._specs(self._next_positions(n))
        settings = self._sampling(seeds)
        version = self.version
        start = time.monotonic()
        self.deadline.expect(self.config.actors.engine_call_timeout_s)
        samples = self.engine.generate(prompt_ids, settings)
        self.deadline.expect()
        elapsed = time.monotonic() - start
        self.stats.generate_s += elapsed
        return [
            self._group(spec, ids, seed, group_samples, (version, self.version), None, elapsed)
            for spec, ids, seed, group_samples in zip(specs, prompt_ids, seeds, samples, strict=True)
        ]

    def _group(self, spec, prompt_ids, seed, samples, versions, version_from, generate_s) -> RolloutGroup:
        """One prompt's rollouts as a message; ``version_from`` per rollout (continuous generation)."""
        cfg = self.config.actors
        rollouts = [
            Rollout(
                completion_ids=PackedArray.of(s.token_ids, "int32"),
                behaviour_logprobs=PackedArray.of(s.logprobs, "float32"),
                text=self.tokenizer.decode(s.token_ids, skip_special_tokens=True),
                finish_reason=s.finish_reason,
                version_from=version_from[i] if version_from else [],
            )
            for i, s in enumerate(samples)
        ]
        return RolloutGroup(
            run_id=self.run_id,
            group_id=f"{self.actor_id}-{self.incarnation}-{spec.position:07d}",
            problem_id=spec.problem.problem_id,
            variant=spec.variant,
            position=spec.position,
            pair=spec.pair,
            seed=seed,
            prefix_units=spec.prefix_units,
            prefix_tokens=len(self.encode(spec.prefix_text)) if spec.prefix_units else 0,
            answer=spec.problem.answer,
            prompt_ids=PackedArray.of(prompt_ids, "int32"),
            rollouts=rollouts,
            temperature=cfg.temperature,
            max_new_tokens=cfg.max_new_tokens,
            policy_version_start=versions[0],
            policy_version_end=versions[1],
            actor_id=self.actor_id,
            sampled_at=time.time(),
            generate_s=generate_s,
        )

    def _write(self, group: RolloutGroup) -> None:
        self.producer.put(group, (self.actor_id, group.position + 1))
        self.stats.groups_produced += 1
        self.stats.completions += len(group.rollouts)
        self.stats.completion_tokens += sum(len(r.completion_ids) for r in group.rollouts)
        self.stats.group_ids.append(group.group_id)

    def run(self) -> ActorStats:
        """Generate until stopped: per engine call (weights load between calls), or continuously
        (``actors.generation``: weights load between two decoding steps)."""
        self.calls.running = True
        self.keepalive.start()
        try:
            if self.stream is not None:
                self._run_continuous()
            else:
                self._run_per_call()
        finally:
            self.keepalive.stop()
            self.pool.leave()
            self.calls.running = False
            self.calls.serve()
            self._report_progress(force=True)
        return self.stats

    def _run_per_call(self) -> None:
        """A call takes as many prompts as the pool has room for, up to ``prompts_per_call``: they
        count against the bound from the reservation until each is written."""
        while not self._stop.is_set():
            self.deadline.expect()
            self.calls.serve()
            if not self.weights_whole:  # the learner regroups and sends the whole weights again
                self._sleep_until_call(0.05)
                continue
            before = self.pool.wait_s
            wanted = self.config.actors.prompts_per_call
            granted = self.pool.acquire(wanted, self._idle_tick, sleep=self._sleep_until_call)
            self.stats.backpressure_wait_s += self.pool.wait_s - before
            if not granted:
                break
            self.calls.serve()
            groups = self.generate_once(granted)
            if len(groups) < granted:  # the rest of a claim made before a restart was shorter
                self.pool.release(granted - len(groups))
            for group in groups:
                self._write(group)
            self._report_progress()

    def _run_continuous(self) -> None:
        """The engine steps while there is anything to decode; between two steps it serves weight
        updates (in flight: running sequences go on under the new version) and adds groups while
        the engine has room (``max_num_seqs`` sequences, and one group waiting) and the pool-wide bound
        has room (``broker.inflight``: each group is reserved before it is submitted; backpressure
        pauses adding, not the engine).
        Finished groups are written in position order (a restarted actor redoes what it claimed and
        did not write)."""
        cfg = self.config.actors
        stream = self.stream
        # vLLM refills a sequence's slot the step it ends: keep up to one group waiting in its queue
        capacity = cfg.engine.max_num_seqs + cfg.num_rollouts
        queued: list[int] = []  # claimed positions not yet submitted
        order: list[int] = []  # submitted positions, rising: the order they are written in
        done: dict[int, RolloutGroup] = {}
        submitted: dict[str, tuple] = {}  # key -> (spec, prompt ids, seed, submitted at)
        held = 0  # groups reserved by the backpressure wait, not yet submitted
        while not self._stop.is_set():
            self.deadline.expect()
            self.calls.serve()
            if not self.weights_whole:  # the learner regroups and sends the whole weights again
                self._sleep_until_call(0.05)
                continue
            while stream.sequences_running < capacity and (held or self.pool.reserve(1)):
                held = max(0, held - 1)
                if not queued:
                    queued = self._next_positions(cfg.prompts_per_call)
                (spec,), (ids,), (seed,) = self._specs(queued[:1])
                queued = queued[1:]
                key = f"{spec.position}"
                stream.submit(key, ids, self._sampling((seed,)), seed)
                submitted[key] = (spec, ids, seed, time.monotonic())
                order.append(spec.position)
            if not stream.groups_running:  # nothing to decode: the stream is full, or stopping
                before = self.pool.wait_s
                # an evaluation submitted meanwhile ends the wait: it decodes whatever the stream's room
                held += self.pool.acquire(
                    1, lambda: self._idle_tick() or stream.groups_running > 0, sleep=self._sleep_until_call
                )
                self.stats.backpressure_wait_s += self.pool.wait_s - before
                continue
            self.deadline.expect(cfg.engine_call_timeout_s)
            start = time.monotonic()
            finished = stream.step()
            self.stats.generate_s += time.monotonic() - start
            for group in finished:
                if group.key in self._evals:  # an evaluation request: back to its caller, never written
                    self._eval_finished(group)
                    continue
                spec, ids, seed, since = submitted.pop(group.key)
                versions = (group.first_version, group.last_version)
                done[spec.position] = self._group(
                    spec, ids, seed, group.samples, versions, group.versions, time.monotonic() - since
                )
            while order and order[0] in done:
                self._write(done.pop(order.pop(0)))
            self._report_progress()
        stream.abort_all()  # stopping: what runs is dropped, its positions stay claimed, unwritten
        for batch in {id(b): b for b in self._evals.values()}.values():
            batch.error = "the actor stopped before its evaluation requests finished"
            batch.done.set()
        self._evals.clear()

    def _report_progress(self, force: bool = False) -> None:
        self.progress.report(
            lambda component: ActorProgress(
                component=component,
                groups=self.stats.groups_produced,
                tokens=self.stats.completion_tokens,
                policy_version=self.version,
            ),
            force,
        )

    def _idle_tick(self) -> bool:
        """While waiting on backpressure, keep serving weight updates (the learner may be waiting on
        us to load before it consumes more); True when asked to stop."""
        self.calls.serve()
        self.deadline.expect()
        self._report_progress()  # alive, though waiting: the heartbeat is about liveness, not speed
        return self._stop.is_set()

    def _sleep_until_call(self, seconds: float) -> None:
        """The backpressure wait's sleep: ends early when a weight update (or another call) is
        posted, so the learner, which waits for every actor to load, is not kept waiting for a
        poll tick (up to 50 ms per step)."""
        if self.calls.posted.wait(seconds):
            self.calls.posted.clear()

    def stop(self) -> None:
        self._stop.set()
        self.calls.posted.set()

    def probe(self, prompt_ids: list[int], num_tokens: int) -> tuple[list[int], list[float]]:
        """Greedy tokens and logprobs of a fixed prompt: compares the engine's weights with the learner's."""
        return self.engine.greedy_logprobs(prompt_ids, num_tokens)

    def sample_texts(
        self, prompts: list[str], num_samples: int, max_new_tokens: int, seeds: list[int]
    ) -> list[list[tuple[str, int]]]:
        """Generation only: for each prompt text (and its own seed), ``num_samples`` (completion
        text, token count)."""
        cfg = self.config.actors
        ids = [self.encode(p) for p in prompts]
        settings = SamplingSettings(num_samples, max_new_tokens, cfg.temperature, cfg.top_p, tuple(seeds))
        start = time.monotonic()
        samples = self.engine.generate(ids, settings)
        self.stats.generate_s += time.monotonic() - start
        return [
            [(self.tokenizer.decode(s.token_ids, skip_special_tokens=True), len(s.token_ids)) for s in g]
            for g in samples
        ]

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(self, problems: list[Problem], settings: SamplingSettings, timeout_s: float) -> EvalSamples:
        """Unguided samples of ``problems`` (``settings.num_rollouts`` each, one seed per problem)
        with the weights the engine holds, for the run's evaluation; nothing goes to a stream.

        Continuous generation with the loop running: the requests join the engine beside the
        training groups and decode in the same steps (weights may change meanwhile: the versions
        say which sampled them). Otherwise (per call, or no loop running): one engine call between
        two training calls, so training generation pauses exactly as long as the evaluation runs."""
        spec = [PromptSpec(p, "unguided", 0) for p in problems]
        prompt_ids = [self.encode(render_prompt(self.tokenizer, s, self.config.data)) for s in spec]
        if self.stream is not None and self.calls.running:
            return self._evaluate_continuous(prompt_ids, settings, timeout_s)

        def generate() -> EvalSamples:
            version = self.version
            self.deadline.expect(timeout_s)
            try:
                samples = self.engine.generate(prompt_ids, settings)
            finally:
                self.deadline.expect()
            return EvalSamples([[self._text(s) for s in group] for group in samples], version, version)

        return self.calls.call(generate, "evaluating", timeout_s)

    def _evaluate_continuous(self, prompt_ids, settings: SamplingSettings, timeout_s: float) -> EvalSamples:
        tag = secrets.token_hex(4)
        batch = _EvalBatch([f"eval-{tag}-{i}" for i in range(len(prompt_ids))])

        def submit() -> None:
            for key, ids, seed in zip(batch.keys, prompt_ids, settings.seeds, strict=True):
                self._evals[key] = batch
                self.stream.submit(key, ids, replace(settings, seeds=(seed,)), seed)
            if not batch.keys:
                batch.done.set()

        self.calls.call(submit, "submitting evaluation requests", timeout_s)
        if not batch.done.wait(timeout_s):
            raise TimeoutError(f"{self.actor_id}: evaluation did not finish within {timeout_s}s")
        if batch.error:
            raise RuntimeError(f"{self.actor_id}: {batch.error}")
        groups = [batch.finished[key] for key in batch.keys]
        return EvalSamples(
            [[self._text(s) for s in g.samples] for g in groups],
            min((g.first_version for g in groups), default=self.version),
            max((g.last_version for g in groups), default=self.version),
        )

    def _eval_finished(self, group) -> None:
        batch = self._evals.pop(group.key)
        batch.finished[group.key] = group
        if len(batch.finished) == len(batch.keys):
            batch.done.set()

    def _text(self, sample) -> str:
        return self.tokenizer.decode(sample.token_ids, skip_special_tokens=True)

    def close(self) -> None:
        self.engine.close()
        if self.client is not None:
            self.client.close()
