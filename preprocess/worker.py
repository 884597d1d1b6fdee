"""A preprocess worker: rollout groups in, scored groups out.

    rollouts (group "preprocess") ──> math-verify, a group per call (killable process, deadline per rollout)
        ──> group advantages ──> train stream (backpressure by the learner's lag) ──> XACK

A rollout entry is acknowledged only after its scored group is written to the train stream, so
a worker that dies leaves its entries pending for another worker to claim (XAUTOCLAIM).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from broker.schemas import PreprocessProgress, RolloutGroup, ScoredGroup, encode
from broker.streams import (
    LOOP_GRACE_S,
    Consumer,
    ControlChannel,
    KeepAlive,
    Producer,
    ProgressReporter,
    WorkDeadline,
    connect,
)
from pope.config import PreprocessSettings
from preprocess.advantages import group_advantages
from preprocess.scoring import Verifier


@dataclass
class PreprocessStats:
    groups_scored: int = 0
    rollouts_scored: int = 0
    verdicts: dict[str, int] = field(
        default_factory=lambda: {"correct": 0, "wrong": 0, "timeout": 0, "error": 0}
    )
    zero_variance_groups: int = 0
    score_s: float = 0.0
    dead_lettered: int = 0
    claimed: int = 0
    reasoning_unclosed: int = 0  # rollouts without preprocess.reasoning_delimiter: scored wrong


class PreprocessWorker:
    def __init__(self, config: PreprocessSettings, worker_index: int, redis_url: str):
        """``config``: the worker's sections (``PopeConfig.for_preprocess``)."""
        self.config = config
        self.run_id = config.run.run_id
        self.worker_id = f"preprocess{worker_index}"
        self.client = connect(redis_url, config.broker.socket_timeout_s, config.broker.reconnect_timeout_s)
        self.consumer = Consumer(
            self.client,
            self.run_id,
            "rollouts",
            self.worker_id,
            max_deliveries=config.preprocess.max_deliveries,
            expects=RolloutGroup,
            max_message_bytes=config.broker.max_message_bytes,
        )
        self.producer = Producer(
            self.client,
            self.run_id,
            "train",
            max_in_flight=config.broker.max_groups_in_flight,
            maxlen=config.broker.emergency_maxlen,
            count_pending=False,  # the learner holds trained entries pending until its next checkpoint
        )
        self.progress = ProgressReporter(
            ControlChannel(self.client, self.run_id), self.worker_id, config.progress_interval_s
        )
        self.verifier = Verifier(config.preprocess.verify_timeout_s, config.preprocess.reasoning_delimiter)
        self.stats = PreprocessStats()
        self._stop = threading.Event()
        self._own_pending_done = False  # a restarted worker first finishes what it had read
        self.claim_idle_ms = int(config.preprocess.claim_idle_s * 1000)
        self._held: set[str] = set()  # entries read and not yet acknowledged: kept fresh while worked on
        self._held_lock = threading.Lock()
        # the loop's phases: a read (block_ms) or the group it scores (the verifier's deadline per
        # rollout); a loop silent past its phase and a grace is hung: its thread stops vouching for it
        self.deadline = WorkDeadline(LOOP_GRACE_S + config.broker.block_ms / 1000)
        # beats at least four times per claim_idle_s, so a working worker's entries are never claimed
        self.keepalive = KeepAlive(
            self.worker_id,
            min(config.progress_interval_s, config.preprocess.claim_idle_s / 4),
            [self._keep_held_fresh, lambda: self._report_progress(force=True)],
            working=self.deadline.working,
        )

    def score_group(self, group: RolloutGroup) -> ScoredGroup:
        start = time.monotonic()
        scores = self.verifier.score_batch([(group.answer, rollout.text) for rollout in group.rollouts])
        rewards = [reward for reward, _ in scores]
        verdicts = [verdict for _, verdict in scores]
        for verdict in verdicts:
            self.stats.verdicts[verdict] += 1
        cfg = self.config.preprocess
        advantages = group_advantages(rewards, cfg.scale_by_std, estimator=cfg.advantage, k=cfg.passk_k)
        if max(rewards) == min(rewards):
            self.stats.zero_variance_groups += 1
        self.stats.score_s += time.monotonic() - start
        self.stats.reasoning_unclosed = self.verifier.stats.reasoning_unclosed
        self.stats.rollouts_scored += len(rewards)
        return ScoredGroup(
            group=group, rewards=rewards, advantages=advantages, verdicts=verdicts, worker_id=self.worker_id
        )

    def process_once(self) -> int:
        """Read, score, publish and acknowledge up to ``groups_per_read`` groups; returns how many."""
        self.deadline.expect()
        count = self.config.preprocess.groups_per_read
        entries = self.consumer.read_own_pending(count) if not self._own_pending_done else []
        self._own_pending_done = self._own_pending_done or not entries
        entries = entries or self.consumer.claim_stale(self.claim_idle_ms, count)
        self.stats.claimed += len(entries)
        if not entries:
            entries = self.consumer.read(count, self.config.broker.block_ms)
        with self._held_lock:
            self._held = {e.entry_id for e in entries}
        try:
            return self._process(entries)
        finally:
            with self._held_lock:
                self._held = set()

    def _alive(self) -> bool:
        """The backpressure wait's stop check, which also says the loop is alive."""
        self.deadline.expect()
        return self._stop.is_set()

    def _keep_held_fresh(self) -> None:
        with self._held_lock:
            held = sorted(self._held)
        self.consumer.keep_fresh(held)

    def _process(self, entries: list) -> int:
        done = []
        for entry in entries:  # the consumer set aside what is not a rollout group of this run
            if not self.producer.wait_for_room(self._alive):
                break  # stopping: the rest stay pending, counted as in flight
            budget = len(entry.message.rollouts) * self.config.preprocess.verify_timeout_s
            self.deadline.expect(budget)
            try:
                scored = self.score_group(entry.message)
            except ValueError as exc:  # deliberate: a malformed group is set aside with its reason, counted
                self.consumer.dead_letter(
                    entry.entry_id,
                    encode(entry.message),
                    f"cannot score group {entry.message.group_id}: {exc}",
                )
                continue
            self.producer.put(scored)
            self.consumer.ack([entry.entry_id])
            self.stats.groups_scored += 1
            self.deadline.expect()
            done.append(entry.entry_id)
        self.stats.dead_lettered = self.consumer.dead_lettered
        return len(done)

    def run(self) -> PreprocessStats:
        self.keepalive.start()
        try:
            while not self._stop.is_set():
                self.process_once()
                self._report_progress()
        finally:
            self.keepalive.stop()
        self._report_progress(force=True)
        return self.stats

    def _report_progress(self, force: bool = False) -> None:
        self.progress.report(
            lambda component: PreprocessProgress(
                component=component, groups=self.stats.groups_scored, **self.stats.verdicts
            ),
            force,
        )

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self.verifier.close()
        self.client.close()
