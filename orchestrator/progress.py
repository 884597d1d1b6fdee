"""What `pope train` prints while it runs: the setup phases, a progress bar with ETA per learner
step, and at the end a short table of what changed between the first and the last steps."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from broker.schemas import StepReport
from orchestrator.report import ReportError, read_metrics

BAR_WIDTH = 20


class Phases:
    """Wall time of named phases, in the order they ran (summary.json ``wall_s.setup_phases``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.parts: dict[str, dict[str, float]] = {}  # phase -> what ran in parallel inside it

    @contextmanager
    def time(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - start

    def line(self, total_s: float) -> str:
        def one(name: str, s: float) -> str:
            inner = ", ".join(f"{k} {v:.1f}s" for k, v in self.parts.get(name, {}).items())
            return f"{name} {s:.1f}s" + (f" ({inner})" if inner else "")

        parts = " | ".join(one(name, s) for name, s in self.seconds.items())
        return f"setup {total_s:.1f}s: {parts}"


def clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def progress_line(report: StepReport, steps: int, elapsed_s: float, buffer_lag: int) -> str:
    """One line per learner step: a bar, the ETA from the mean step time so far, and the step's numbers."""
    done = min(report.step, steps)
    filled = BAR_WIDTH * done // max(steps, 1)
    eta = elapsed_s / max(done, 1) * (steps - done)
    rewards = " ".join(f"{v} {r:.2f}" for v, r in sorted(report.reward_mean_by_variant.items()))
    hard = report.hard_solved_unguided_fraction
    return (
        f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] step {done}/{steps} {clock(elapsed_s)} ETA {clock(eta)} | "
        f"reward {report.reward_mean:.3f} ({rewards or 'n/a'}) | "
        f"hard solved unguided {'n/a' if hard is None else f'{hard:.2f}'} | loss {report.loss:+.4f} | "
        f"policy lag {report.policy_lag_mean:.1f} | buffer lag {buffer_lag} | step {report.step_s:.1f}s"
    )


# (label, metrics.jsonl key) for the table; rows whose key no step has are left out
LEARNING_ROWS = (
    ("reward, unguided", "reward_mean_unguided"),
    ("reward, guided", "reward_mean_guided"),
    ("groups with a success, unguided", "solve_rate_unguided"),
    ("groups with a success, guided", "solve_rate_guided"),
    ("hard set solved unguided (window)", "hard_solved_unguided_fraction"),
    ("entropy", "entropy"),
)


def learning_table(rows: list[dict], window: int | None = None) -> str:
    """Means over the first and the last ``window`` steps (a fifth of the run, at least 1) of each
    row's metric, and the change: whether the run learned, in a few lines."""
    if len(rows) < 2:
        return ""
    window = window or max(1, len(rows) // 5)
    first, last = rows[:window], rows[-window:]

    def mean(part: list[dict], key: str) -> float | None:
        values = [r[key] for r in part if isinstance(r.get(key), (int, float))]
        return sum(values) / len(values) if values else None

    head_a = f"steps {first[0]['step']}-{first[-1]['step']}"
    head_b = f"steps {last[0]['step']}-{last[-1]['step']}"
    lines = [f"{'':34s} {head_a:>12s} {head_b:>12s} {'change':>8s}"]
    for label, key in LEARNING_ROWS:
        a, b = mean(first, key), mean(last, key)
        if a is None or b is None:
            continue
        lines.append(f"{label:34s} {a:12.3f} {b:12.3f} {b - a:+8.3f}")
    return "\n".join(lines) if len(lines) > 1 else ""


def eval_lines(rows: list[dict]) -> list[str]:
    """Per eval set: unguided pass@k at its first and its last round (eval.jsonl)."""
    lines = []
    for name in dict.fromkeys(row["set"] for row in rows):
        mine = sorted((r for r in rows if r["set"] == name), key=lambda r: r["step"])
        first, last = mine[0], mine[-1]
        ks = ", ".join(
            f"pass@{k} {first['pass_at_k'][k]:.3f} -> {last['pass_at_k'][k]:.3f}" for k in first["pass_at_k"]
        )
        lines.append(
            f"eval {name} ({first['problems']} problems, n={first['n']}, unguided), "
            f"step {first['step']} -> {last['step']}: {ks}"
        )
    return lines


def what_changed(run_dir: Path) -> str:
    """The learning table and each eval set's first and last round of a finished run ("" when there
    is nothing to compare); read with the report's reader (a torn last line is skipped), and never
    failing the run: a line that is not JSON leaves the table out."""
    try:
        steps = read_metrics(Path(run_dir) / "metrics.jsonl")[0]
        rounds = read_metrics(Path(run_dir) / "eval.jsonl")[0]
    except ReportError:
        return ""
    return "\n".join(filter(None, [learning_table(steps), *eval_lines(rounds)]))


def summary_lines(summary: dict) -> list[str]:
    """The run in a few lines; summary.json has everything."""
    wall = summary.get("wall_s", {})
    lines = [
        f"done: {summary.get('learner_version', '?')} learner steps in {clock(wall.get('total_s', 0))} "
        f"(setup {wall.get('setup_s', 0):.0f}s, training {wall.get('train_loop_s', 0):.0f}s); "
        f"groups trained {summary.get('groups_trained', '?')}, lost {summary.get('groups_lost', '?')}; "
        f"actors at version {summary.get('actor_versions', '?')}",
    ]
    diffs = summary.get("weight_sync_max_abs_logprob_diff")
    if diffs:
        lines.append(
            f"actor vs learner logprob gap after the last update: {max(diffs):.1e} (max over actors)"
        )
    return lines
