"""The learner: scored groups in, an optimizer step, new weights out to every actor.

    train stream (group "learner") ──> set aside (duplicate, too stale: counted, not trained)
        ──> StepMix: exactly the mix's count of each variant per step (learner/mix.py)
        ──> metrics of the step's groups (solve rates, rewards: before any filter)
        ──> zero-variance filter (learner.skip_zero_variance_groups: counted, not trained)
        ──> PolicyTrainer.train_step (DeepSpeed, GRPO) ──> broadcast weights v+1 to the actors
        ──> control: WeightsPublished, StepReport ──> metrics.jsonl ──> XACK

Train entries are acknowledged after the step and the broadcast: a learner that dies before
then leaves them pending, so nothing it consumed is lost.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from broker.accounting import groups_waiting
from broker.inflight import PoolBound
from broker.schemas import LearnerProgress, ScoredGroup, StepReport, WeightsPublished
from broker.streams import (
    LOOP_GRACE_S,
    Consumer,
    ControlChannel,
    KeepAlive,
    WorkDeadline,
    connect,
    fetch_files,
)
from learner.mix import StepMix
from learner.policy import PolicyTrainer
from learner.tracking import Tracking
from learner.weights import WeightPublisher
from pope.config import LearnerSettings
from pope.loop_calls import LoopCalls
from pope.models.folder import ModelFolder, local_folder
from pope.prompts import variant_quota


def _lineage(g: ScoredGroup) -> dict:
    return {
        "group_id": g.group.group_id,
        "problem_id": g.group.problem_id,
        "variant": g.group.variant,
        "prefix_units": g.group.prefix_units,
        "prefix_tokens": g.group.prefix_tokens,
        "policy_version": g.group.policy_version_start,
        "actor_id": g.group.actor_id,
        "rewards": g.rewards,
        "verdicts": g.verdicts,
    }


def token_policy_lag(groups: list[ScoredGroup], trained_version: int) -> float:
    """Mean over the groups' completion tokens of ``trained_version`` minus the version that sampled
    each token (a rollout's ``version_from`` change points, else its group's start version)."""
    total = tokens = 0
    for scored in groups:
        start = scored.group.policy_version_start
        for rollout in scored.group.rollouts:
            n = len(rollout.completion_ids)
            points = rollout.version_from or [(0, start)]
            bounds = [index for index, _ in points[1:]] + [n]
            for (index, version), end in zip(points, bounds, strict=True):
                total += (trained_version - version) * (end - index)
            tokens += n
    return total / tokens if tokens else 0.0


def metrics_lines_held(text: str, step: int) -> tuple[list[str], int]:
    """The lines of metrics.jsonl a checkpoint of ``step`` holds (steps <= step), and the length of a
    torn last line (a write the crash cut; 0 if none). A corrupt line elsewhere is an error naming it."""
    lines = text.splitlines()
    torn = 0
    if lines and not text.endswith("\n"):
        try:
            json.loads(lines[-1])
        except ValueError:
            torn = len(lines.pop())
    kept = []
    for number, line in enumerate(lines, 1):
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"metrics.jsonl line {number} is corrupt ({exc}): cannot resume on it") from None
    return kept, torn


class Learner:
    def __init__(
        self,
        config: LearnerSettings,
        model_path: str | ModelFolder,
        redis_url: str,
        run_dir: str,
        actor_handles=None,
        num_hard_problems: int = 0,
    ):
        self.config = config
        self.cfg = config.learner
        self.run_id = config.run.run_id
        self.run_dir = Path(run_dir)
        self.client = connect(redis_url, config.broker.socket_timeout_s, config.broker.reconnect_timeout_s)
        folder = local_folder(model_path, config.model.cache_dir, lambda key: fetch_files(self.client, key))
        self.policy = PolicyTrainer(config, folder)
        self.consumer = Consumer(
            self.client,
            self.run_id,
            "train",
            "learner0",
            expects=ScoredGroup,
            max_message_bytes=config.broker.max_message_bytes,
        )
        self.control = ControlChannel(self.client, self.run_id)
        self.weights = WeightPublisher(
            self.policy, self.cfg.broadcast_timeout_s, actor_handles, config.weight_transfer
        )
        self.calls = LoopCalls("learner")  # regroups run on the training loop, between steps
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.tracking = Tracking(config.logging, self.run_dir, self.run_id, config.run.seed)
        self.trained_group_ids: list[str] = []
        self.skipped: dict[str, list[str]] = {
            "zero_variance": [],
            "stale": [],
            "duplicate": [],
            "off_mix": [],
        }
        self._accepted: set[str] = set()  # trained, or held for a later step: a second copy is a duplicate
        self.mix = StepMix(variant_quota(config.data, self.cfg.groups_per_step), config.data.pair_variants)
        # per variant: [sum of rewards, rollouts] of the trained groups (the summary's reward_mean; the
        # streams' entries are trimmed once acknowledged, so the learner keeps this itself)
        self.reward_sums: dict[str, list[float]] = {}
        self._unacked: list[str] = []  # train entries trained since the last checkpoint
        self._replay_pending = False  # on resume: first re-read what the dead learner had read
        self.nonfinite_in_a_row = 0
        self.nonfinite_steps = 0
        self.broadcast_failures = 0
        self.num_hard_problems = num_hard_problems
        self.unguided_history: list[
            tuple[int, str, bool]
        ] = []  # (step, problem id, solved) of unguided groups
        self.totals = {"data_wait_s": 0.0, "forward_backward_s": 0.0, "optimizer_s": 0.0, "broadcast_s": 0.0}
        # liveness apart from progress, as the actors and workers have it: a thread beats while the
        # loop's current phase is within its deadline (a step or checkpoint: learner.step_timeout_s; a
        # broadcast or regroup: twice broadcast_timeout_s; a read: block_ms), so a long step is not a
        # hang, and a hung learner goes silent and is named
        self.phase = "idle"
        self.deadline = WorkDeadline(LOOP_GRACE_S + config.broker.block_ms / 1000)
        # the mix's surplus (read, held for a later step) is ahead of the learner's batch: it counts
        # against the actors' pool-wide bound, as the learner's field of the generating hash
        self.surplus = PoolBound(self.client, self.run_id, "learner", None, config.broker.generating_stale_s)
        self.surplus.reset()
        self.keepalive = KeepAlive(
            "learner",
            config.progress_interval_s,
            [self._beat, self.surplus.refresh],
            working=self.deadline.working,
        )

    @property
    def version(self) -> int:
        return self.policy.version

    def _enter(self, phase: str, seconds: float = 0.0) -> None:
        """The loop starts ``phase``, which may take ``seconds`` (plus the grace)."""
        self.phase = phase
        self.deadline.expect(seconds)

    def _beat(self) -> None:
        self.control.publish(
            LearnerProgress(component="learner", step=self.policy.step_count, phase=self.phase)
        )

    # -- weights -------------------------------------------------------------------------------
    def regroup(self, actor_handles: list) -> dict:
        """The actor pool changed: form a new weight group with ``actor_handles`` (ranks 1..N), then
        send the current weights so a new actor generates with them. Called from the launcher while
        ``run`` goes on: the loop does it at its next pause (between steps, or while waiting for data)."""
        return self.calls.call(
            lambda: self.weights.regroup(actor_handles),
            f"regroup to {len(actor_handles)} actors",
            self.cfg.broadcast_timeout_s * 2,
        )

    def broadcast(self) -> tuple[float, int, float, list[float]]:
        return self.weights.broadcast(self.version)

    # -- data ------------------------------------------------------------------------------------
    def _set_aside(self, scored: ScoredGroup) -> str | None:
        """Why ``scored`` is not trained (counted under that reason), or None."""
        group = scored.group
        if group.group_id in self._accepted:  # e.g. scored twice after a preprocess worker died
            return "duplicate"
        if (
            self.cfg.max_policy_lag is not None
            and self.version - group.policy_version_start > self.cfg.max_policy_lag
        ):
            return "stale"
        if not self.mix.accepts(group.variant):  # an actor of another config wrote it
            return "off_mix"
        return None

    def collect(self) -> tuple[list, list[str]]:
        """One step's groups (exactly the mix's count of each variant), and the entry ids to
        acknowledge with the step: its groups' and those set aside. Groups of a variant the step
        has enough of are held for the next one (their entries stay pending until trained).

        Fails loudly, naming the stream and what is missing, when no data arrives for ``data_timeout_s``."""
        entry_ids = []
        deadline = time.monotonic() + self.cfg.data_timeout_s
        while not self.mix.ready():
            if self.calls.pending():  # a regroup: a new weight group, then a broadcast
                self._enter("broadcast", 2 * self.cfg.broadcast_timeout_s)
            self.calls.serve()
            self._enter("collect")
            got = []
            if self._replay_pending:
                got = self.consumer.read_own_pending(self.mix.size)
                self._replay_pending = bool(got)
            if not got:
                # no more than the step still needs: a group read is out of the actors' bound
                # (broker/inflight.py), so reading ahead would let them run a step further ahead
                wanted = max(1, sum(self.mix.missing().values()))
                got = self.consumer.read(wanted, self.config.broker.block_ms)
            if got:
                deadline = time.monotonic() + self.cfg.data_timeout_s
            for entry in got:  # the consumer dead-lettered what is not a scored group of this run
                reason = self._set_aside(entry.message)
                if reason:
                    self.skipped.setdefault(reason, []).append(entry.message.group.group_id)
                    entry_ids.append(entry.entry_id)
                    continue
                group = entry.message.group
                self._accepted.add(group.group_id)
                self.mix.offer(group.variant, group.pair, (entry.entry_id, entry.message))
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"learner: no scored groups on stream pope:{self.run_id}:train for {self.cfg.data_timeout_s}s "
                    f"(the step still needs {self.mix.missing()}, holding {self.mix.held()}); are the actors "
                    "and preprocess workers alive?"
                )
        taken = self.mix.take()
        self.surplus.reset(self.mix.held())
        return [group for _, group in taken], entry_ids + [entry_id for entry_id, _ in taken]

    def _signal(self, groups: list[ScoredGroup]) -> list[ScoredGroup]:
        """The groups the loss sees: all, or (``skip_zero_variance_groups``) those whose rewards differ."""
        if not self.cfg.skip_zero_variance_groups:
            return groups
        flat = [g for g in groups if max(g.rewards) == min(g.rewards)]
        self.skipped["zero_variance"].extend(g.group.group_id for g in flat)
        return [g for g in groups if max(g.rewards) != min(g.rewards)]

    def _recover_broadcast(self, exc: Exception) -> tuple[float, int, float, list[float]]:
        """A broadcast failed (an actor died): wait for the launcher's regroup with the restarted
        pool, which sends these same weights to every actor; fail, naming the cause, if none comes."""
        self.broadcast_failures += 1
        deadline = time.monotonic() + self.cfg.broadcast_timeout_s
        while not self.calls.pending():
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"learner: weight broadcast v{self.version} failed and no regroup came: {exc}"
                ) from exc
            time.sleep(0.2)
        self.calls.serve()
        result = self.weights.last_regroup
        if result is None:
            raise RuntimeError(
                f"learner: the regroup after a failed broadcast v{self.version} failed too"
            ) from exc
        return result["broadcast_s"], result["num_bytes"], result["checksum"], result["actor_checksums"]

    def _skip_nonfinite(self, groups: list[ScoredGroup], entry_ids: list[str]) -> None:
        """The step's loss was NaN/inf: no update was applied. Its groups are set aside (counted),
        and too many such steps in a row stop the run with the reason."""
        self.nonfinite_steps += 1
        self.nonfinite_in_a_row += 1
        self.skipped.setdefault("nonfinite", []).extend(g.group.group_id for g in groups)
        self._unacked.extend(entry_ids)
        if self.nonfinite_in_a_row >= self.cfg.max_nonfinite_steps:
            raise FloatingPointError(
                f"learner: {self.nonfinite_in_a_row} steps in a row had a non-finite loss "
                f"(learner.max_nonfinite_steps={self.cfg.max_nonfinite_steps}); last groups: "
                f"{[g.group.group_id for g in groups]}"
            )

    # -- checkpoints ---------------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def save_checkpoint(self) -> None:
        """Model, optimizer, step, version, RNG and the ids trained so far; then acknowledge the train
        entries those steps consumed. An entry is acknowledged only once a checkpoint holds its
        effect, so a learner that resumes from the last checkpoint trains each group exactly once."""
        extra = {
            "trained_group_ids": self.trained_group_ids,
            "skipped": self.skipped,
            "unguided_history": self.unguided_history,
            "totals": self.totals,
            "reward_sums": self.reward_sums,
        }
        self._enter("checkpoint", self.cfg.step_timeout_s)
        self.policy.save_checkpoint(str(self.checkpoint_dir), extra)
        self.consumer.ack(self._unacked)
        self._unacked = []

    def resume(self) -> int:
        """Restore the last checkpoint; returns its step. The next reads replay this consumer's pending
        entries (read by the dead learner, never acknowledged) before new ones."""
        extra = self.policy.load_checkpoint(str(self.checkpoint_dir))
        self.trained_group_ids = list(extra["trained_group_ids"])
        self._accepted = set(self.trained_group_ids)
        self.skipped = {k: list(v) for k, v in extra["skipped"].items()}
        self.unguided_history = [tuple(h) for h in extra["unguided_history"]]
        self.totals = dict(extra["totals"])
        self.reward_sums = {k: list(v) for k, v in extra.get("reward_sums", {}).items()}
        self._replay_pending = True
        if self.metrics_path.exists():
            kept, torn = metrics_lines_held(self.metrics_path.read_text(), self.policy.step_count)
            if torn:
                print(f"learner resume: {self.metrics_path}: dropped a torn last line ({torn} characters)")
            self.metrics_path.write_text("".join(line + "\n" for line in kept))
        return self.policy.step_count

    # -- the loop --------------------------------------------------------------------------------
    def run(self, steps: int) -> dict:
        """Train ``steps`` steps; each ends with a broadcast, a version bump and an acknowledgement."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.calls.running = True
        self._start_tracking()
        self.keepalive.start()
        try:
            return self._run(steps)
        except BaseException:
            self.tracking.close()  # a failed run: no evaluation follows, the trackers end with it
            raise
        finally:
            self.keepalive.stop()
            self.surplus.leave()
            self.calls.running = False
            self.calls.serve()

    def _run(self, steps: int) -> dict:
        """Until ``steps`` optimizer steps are done in all (a resumed learner continues its count)."""
        with open(self.metrics_path, "a", encoding="utf-8") as log:
            while self.policy.step_count < steps:
                start = time.monotonic()
                groups, trained, entry_ids = self._collect_step()
                data_wait_s = time.monotonic() - start
                self._enter("train", self.cfg.step_timeout_s)
                metrics = self.policy.train_step(trained)
                if metrics.get("nonfinite"):
                    self._skip_nonfinite(trained, entry_ids)
                    continue
                self.nonfinite_in_a_row = 0
                self.policy.version += 1
                broadcast_s, sent, received = self._publish_weights()
                self.trained_group_ids.extend(g.group.group_id for g in trained)
                metrics.update(data_wait_s=data_wait_s, broadcast_s=broadcast_s)
                step_metrics, lags = self._step_metrics(groups, trained)
                metrics.update(step_metrics)
                metrics["step_s"] = time.monotonic() - start
                for key in self.totals:
                    self.totals[key] += metrics[key]
                # the step's line (its lineage) is written before the checkpoint that holds the step,
                # and the checkpoint's totals include the step: a crash between the two loses nothing
                # (resume drops lines of steps the checkpoint does not hold)
                self._log_step(log, metrics, lags, groups, trained, sent, received)
                self._commit(entry_ids, steps)
        return {
            "steps": self.policy.step_count,
            "learner_version": self.version,
            "trained_group_ids": self.trained_group_ids,
            "skipped_group_ids": self.skipped,
            "nonfinite_steps": self.nonfinite_steps,
            "broadcast_failures": self.broadcast_failures,
            "reward_sums": self.reward_sums,
            "tracking": self.tracking.summary(),
            **self.totals,
        }

    def _collect_step(self) -> tuple[list[ScoredGroup], list[ScoredGroup], list[str]]:
        """The step's groups, those the loss sees, and the entry ids to acknowledge with it. When
        every group of a step is zero-variance (no signal, under skip_zero_variance_groups), the
        next step's groups join it."""
        groups, entry_ids = self.collect()
        trained = self._signal(groups)
        while not trained:
            more, more_ids = self.collect()
            groups, entry_ids = groups + more, entry_ids + more_ids
            trained = self._signal(more)
        return groups, trained, entry_ids

    def _publish_weights(self) -> tuple[float, float, list[float]]:
        """Broadcast the new version to every actor (recovering through a regroup when one died
        mid-broadcast), then announce it; returns (seconds, learner checksum, actors' checksums)."""
        self._enter("broadcast", 2 * self.cfg.broadcast_timeout_s)
        try:
            broadcast_s, num_bytes, sent, received = self.broadcast()
        except (RuntimeError, TimeoutError, OSError) as exc:  # deliberate: an actor died mid-broadcast
            broadcast_s, num_bytes, sent, received = self._recover_broadcast(exc)
        self.control.publish(
            WeightsPublished(
                version=self.version,
                step=self.policy.step_count,
                broadcast_s=broadcast_s,
                num_bytes=num_bytes,
            )
        )
        return broadcast_s, sent, received

    def _commit(self, entry_ids: list[str], steps: int) -> None:
        """Acknowledge the step's entries now (no checkpoints), or once a checkpoint holds them. A
        Hugging Face checkpoint goes first: a crash before the resumable one redoes the step, and it."""
        self._unacked.extend(entry_ids)
        hf_every = self.config.checkpoint.hf_every
        if hf_every and self.policy.step_count % hf_every == 0:
            self._enter("checkpoint", self.cfg.step_timeout_s)
            self.policy.save_hf_checkpoint(str(self.run_dir / "hf"))
        every = self.config.checkpoint.every
        if every == 0:
            self.consumer.ack(self._unacked)
            self._unacked = []
        elif self.policy.step_count % every == 0 or self.policy.step_count >= steps:
            self.save_checkpoint()

    def _step_metrics(
        self, groups: list[ScoredGroup], trained: list[ScoredGroup]
    ) -> tuple[dict[str, float], list[int]]:
        """What the step saw, before the zero-variance filter (rewards, solve rates); and the policy
        lag of each group it trained."""
        rewards = [r for g in groups for r in g.rewards]
        lags = [self.version - 1 - g.group.policy_version_start for g in trained]
        out = {
            "reward_mean": sum(rewards) / len(rewards),
            "policy_lag_min": float(min(lags)),
            "policy_lag_mean": sum(lags) / len(lags),
            "policy_lag_max": float(max(lags)),
            # per trained token, under the version that sampled it (continuous generation: a rollout
            # may span several versions; otherwise every token is its group's start version)
            "policy_lag_tokens_mean": token_policy_lag(trained, self.version - 1),
            "groups_skipped_zero_variance": float(len(self.skipped["zero_variance"])),
            "groups_skipped_stale": float(len(self.skipped["stale"])),
            "groups_in_step": float(len(groups)),
            "groups_trained": float(len(trained)),
            "groups_held": float(self.mix.held()),
            # the buffer lag as the step ends: groups in the streams not yet trained (nor held)
            "buffer_lag_groups": float(groups_waiting(self.client, self.run_id)[0]),
            "tracker_errors": float(self.tracking.error_count),
        }
        by_variant: dict[str, list[float]] = {}
        for g in groups:
            by_variant.setdefault(g.group.variant, []).extend(g.rewards)
        for variant, values in by_variant.items():
            out[f"reward_mean_{variant}"] = sum(values) / len(values)
            total = self.reward_sums.setdefault(variant, [0.0, 0.0])
            total[0] += sum(values)
            total[1] += len(values)
        out.update(self._solve_rates(groups))
        return out, [max(0, lag) for lag in lags]

    def _log_step(self, log, metrics: dict, lags: list[int], groups, trained, sent, received) -> None:
        """One line of metrics.jsonl (with each group's lineage), and the step report."""
        step = self.policy.step_count
        line = {
            "step": step,
            "learner_version": self.version,
            "time": time.time(),
            **metrics,
            "weights_checksum_learner": sent,
            "weights_checksum_actors": received,
            "groups": [{**_lineage(g), "trained": g in trained} for g in groups],
        }
        log.write(json.dumps(line) + "\n")
        log.flush()
        self.tracking.log_step(step, line, groups)
        named = ("loss", "reward_mean", "tokens_trained", "policy_lag_mean", "step_s", "data_wait_s",
                 "forward_backward_s", "optimizer_s", "broadcast_s", "hard_solved_unguided_fraction")  # fmt: skip
        self.control.publish(
            StepReport(
                step=step,
                **{key: float(metrics[key]) for key in named if key in metrics},
                reward_mean_by_variant={
                    k.removeprefix("reward_mean_"): v
                    for k, v in metrics.items()
                    if k.startswith("reward_mean_")
                },
                solve_rate_by_variant={
                    k.removeprefix("solve_rate_"): v
                    for k, v in metrics.items()
                    if k.startswith("solve_rate_")
                },
                policy_lags=lags,
                metrics={
                    k: float(v) for k, v in metrics.items() if k not in named and isinstance(v, int | float)
                },
            )
        )

    def _solve_rates(self, groups: list[ScoredGroup]) -> dict[str, float]:
        """Per variant, the share of this step's groups with at least one success; and the headline:
        the share of the hard set solved unguided (a success in the trailing ``solve_window_steps``)."""
        out: dict[str, float] = {}
        for variant in sorted({g.group.variant for g in groups}):
            mine = [g for g in groups if g.group.variant == variant]
            out[f"solve_rate_{variant}"] = sum(max(g.rewards) > 0 for g in mine) / len(mine)
        step = self.policy.step_count
        self.unguided_history += [
            (step, g.group.problem_id, max(g.rewards) > 0) for g in groups if g.group.variant == "unguided"
        ]
        horizon = step - self.cfg.solve_window_steps
        self.unguided_history = [h for h in self.unguided_history if h[0] > horizon]
        solved = {pid for _, pid, ok in self.unguided_history if ok}
        if self.num_hard_problems:
            out["hard_solved_unguided_fraction"] = len(solved) / self.num_hard_problems
        return out

    # -- tracking ----------------------------------------------------------------------------------
    def _start_tracking(self) -> None:
        self.tracking.start(self.cfg.model_dump(mode="json"))

    def log_eval(self, step: int, scalars: dict[str, float]) -> None:
        """An evaluation's scalars (orchestrator/evaluation.py) to the trackers at learner step
        ``step``: on the training loop between two steps (the trackers are not thread-safe), or at
        once before the loop starts and after it ends."""

        def log() -> None:
            self._start_tracking()
            self.tracking.log_eval(step, scalars)

        self.calls.call(log, f"logging the evaluation of step {step}", self.cfg.step_timeout_s)

    def end_tracking(self) -> dict:
        """Close the trackers (after the run's last evaluation); what they did, for the summary."""
        self.tracking.close()
        return self.tracking.summary()

    # -- checks and output -------------------------------------------------------------------------
    def logprobs_of(self, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
        return self.policy.logprobs_of(prompt_ids, completion_ids)

    def save_hf(self, path: str) -> str:
        return self.policy.save_hf(path)

    def close(self) -> None:
        self.tracking.close()
        self.client.close()
        self.policy.close()
