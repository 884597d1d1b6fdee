"""Evaluation during ``pope train`` (``eval.*``): unguided pass@k on held-out sets, sampled by the
run's own actor pool and scored by the same verifier as training.

    launcher ── before step 1, every eval.every_steps learner steps, after the last ──> TrainingEval
        │  (a thread of its own: the launcher keeps watching the run meanwhile)
        ├── each set's problems, split over the live actors ──> RolloutActor.evaluate
        │       continuous (vLLM): the requests decode in the engine beside the training groups
        │       per call / no loop: one engine call between two training calls
        │   never written to a stream: eval rollouts cannot reach the learner
        ├── completions ──> math-verify (preprocess.scoring.Verifier) ──> correct count per problem
        ├── runs/<run_id>/eval.jsonl      one row per (step, set): counts and pass@k per k
        ├── learner.log_eval              eval/<set>/pass@<k> to every tracker, at that step
        └── pope_eval_pass_at_k{run_id, set, k}   (orchestrator/metrics.py)

Every round samples each problem with the same seeds (common random numbers): two steps' numbers
differ by the weights, not by the draw. Seeds live in a range of their own, apart from training's.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from actors.engine import SamplingSettings
from pope.config import EvalConfig, PopeConfig
from pope.datasets import FieldMap, load_source
from pope.passk import pass_at_k_table
from pope.problems import Problem

EVAL_SEED_BASE = 1 << 61  # above every training seed (pope.prompts.request_seed: below 2^58 for G <= 64)


def load_eval_sets(config: PopeConfig) -> dict[str, list[Problem]]:
    """Each of ``eval.sets`` by name, validated row by row (data.*_field, data.max_bad_fraction),
    cut to ``eval.max_problems``; loaded once, before any process starts."""
    data = config.data
    fields = FieldMap(data.problem_field, data.answer_field, data.solution_field, data.id_field)
    sets = {}
    for name, source in zip(config.eval.set_names, config.eval.sets, strict=True):
        problems = load_source(source, fields, data.max_bad_fraction)[0]
        sets[name] = problems[: config.eval.max_problems]
    return sets


def eval_row(step: int, name: str, ids: list[str], correct: list[int], n: int, ks: list[int],
             versions: tuple[int, int]) -> dict:  # fmt: skip
    """One row of eval.jsonl: the set's per-problem correct counts of ``n`` and the mean unbiased
    pass@k over its problems (pope.passk: 1 - C(n-c, k) / C(n, k) per problem)."""
    table = pass_at_k_table([(n, c) for c in correct], ks)
    return {
        "step": step,
        "weight_version_start": versions[0],
        "weight_version_end": versions[1],
        "set": name,
        "n": n,
        "k": ks,
        "problems": len(ids),
        "pass_at_k": {str(k): table[k] for k in ks},
        "correct": dict(zip(ids, correct, strict=True)),
        "time": time.time(),
    }


def eval_scalars(row: dict) -> dict[str, float]:
    """The row's tracker scalars: eval/<set>/pass@<k>."""
    return {f"eval/{row['set']}/pass@{k}": value for k, value in row["pass_at_k"].items()}


@dataclass(frozen=True)
class _Share:
    actor: int  # index into the actors of the round
    problems: list[Problem]
    seeds: tuple[int, ...]


class TrainingEval:
    """The run's evaluation rounds, one at a time on a thread; ``request(step)`` queues one,
    ``finish()`` waits for them all, ``check()`` raises what a round raised."""

    def __init__(self, config: PopeConfig, sets: dict[str, list[Problem]], actors, learner, metrics,
                 run_dir: Path, printer=print):  # fmt: skip
        """``actors``: a callable giving the live actor handles (the pool may be resized);
        ``learner``: its handle (its trackers get the scalars); ``metrics``: RunMetrics or None."""
        from preprocess.scoring import Verifier

        self.config: EvalConfig = config.eval
        self.sets = sets
        self.actors, self.learner, self.metrics = actors, learner, metrics
        self.path = run_dir / "eval.jsonl"
        self.printer = printer
        acfg = config.actors
        self.max_new_tokens = self.config.max_new_tokens or acfg.max_new_tokens
        self.temperature = self.config.temperature or acfg.temperature
        self.top_p = acfg.top_p
        self.seed_base = EVAL_SEED_BASE + (config.run.seed % 4096) * (1 << 48)
        self.verifier = Verifier(config.preprocess.verify_timeout_s, config.preprocess.reasoning_delimiter)
        self.rows: list[dict] = []
        self.rounds_s: list[float] = []
        self.prompts = 0  # evaluation prompts the actors sampled, eval.n completions each
        self.rounds_lost: dict[int, str] = {}  # step -> why (an actor died during the round)
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="pope-eval", daemon=True)
        self._thread.start()

    def request(self, step: int) -> None:
        """Evaluate the weights the actors hold once the rounds queued before are done."""
        self._queue.put(step)

    def check(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"evaluation failed: {self._error}") from self._error

    def finish(self) -> None:
        """Wait for every queued round; then the thread ends (``run_round`` still works)."""
        self._queue.put(None)
        self._thread.join()
        self.check()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
        self.verifier.close()

    def _serve(self) -> None:
        while (step := self._queue.get()) is not None:
            if self._error is not None:
                continue  # a failed round stops the others; check() reports it
            try:
                self.run_round(step)
            except Exception as exc:  # deliberate: handed to the launcher, which fails the run naming it
                self._error = exc

    def run_round(self, step: int) -> list[dict]:
        """Every set through the actors, scored, written, logged; the round's rows. An actor that
        dies meanwhile (Ray restarts it, the launcher puts it back in the run) loses the round: it is
        counted in ``rounds_lost`` with the reason, no row is written, and the run goes on."""
        import ray

        start = time.monotonic()
        try:
            rows = self._sample_round(step)
        except ray.exceptions.RayActorError as exc:  # deliberate: counted, the next round goes on
            self.rounds_lost[step] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            self.printer(f"eval step {step}: lost, an actor died during the round ({type(exc).__name__})")
            return []
        self._publish(rows)
        self.rounds_s.append(time.monotonic() - start)
        return rows

    def _sample_round(self, step: int) -> list[dict]:
        import ray

        handles = list(self.actors())
        rows = []
        offset = 0  # a problem's seed: its place among all sets' problems
        for name, problems in self.sets.items():
            shares = self._shares(problems, len(handles), offset)
            offset += len(problems)
            refs = [
                handles[share.actor].evaluate.remote(
                    share.problems, self._settings(share.seeds), self.config.timeout_s
                )  # fmt: skip
                for share in shares
            ]
            results = ray.get(refs, timeout=self.config.timeout_s)
            self.prompts += len(problems)
            pairs, ids = [], []
            for share, result in zip(shares, results, strict=True):
                for problem, texts in zip(share.problems, result.texts, strict=True):
                    assert len(texts) == self.config.n, (problem.problem_id, len(texts))
                    ids.append(problem.problem_id)
                    pairs += [(problem.answer, text) for text in texts]
            rewards = [reward for reward, _ in self.verifier.score_batch(pairs)]
            n = self.config.n
            correct = [int(sum(rewards[i * n : (i + 1) * n])) for i in range(len(ids))]
            versions = (min(r.version_start for r in results), max(r.version_end for r in results))
            rows.append(eval_row(step, name, ids, correct, n, self.config.k, versions))
        return rows

    def _shares(self, problems: list[Problem], num_actors: int, offset: int) -> list[_Share]:
        """Contiguous slices of ``problems``, one per actor (none empty), with each problem's seed."""
        size = -(-len(problems) // num_actors)
        return [
            _Share(
                i // size,
                problems[i : i + size],
                tuple(
                    self.seed_base + (offset + j) * self.config.n
                    for j in range(i, min(i + size, len(problems)))
                ),
            )
            for i in range(0, len(problems), size)
        ]

    def _settings(self, seeds: tuple[int, ...]) -> SamplingSettings:
        return SamplingSettings(self.config.n, self.max_new_tokens, self.temperature, self.top_p, seeds)

    def _publish(self, rows: list[dict]) -> None:
        """eval.jsonl, the learner's trackers, the Prometheus gauge; and one progress line."""
        import ray

        with open(self.path, "a", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
        self.rows += rows
        step = rows[0]["step"]
        scalars = {key: value for row in rows for key, value in eval_scalars(row).items()}
        ray.get(self.learner.log_eval.remote(step, scalars))
        if self.metrics is not None:
            for row in rows:
                self.metrics.observe_eval(row["set"], row["pass_at_k"])
        shown = ", ".join(f"{key.removeprefix('eval/')} {value:.3f}" for key, value in scalars.items())
        self.printer(f"eval step {step}: {shown}")

    def summary(self) -> dict:
        return {
            "rounds": len(self.rounds_s),
            "prompts": self.prompts,
            "rounds_lost": {str(step): why for step, why in self.rounds_lost.items()},
            "round_s": self.rounds_s,
            "last": {row["set"]: row["pass_at_k"] for row in self.rows[-len(self.sets) :]}
            if self.rows
            else {},
        }
