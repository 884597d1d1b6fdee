"""Experiment tracking: each learner step's scalars, and now and then a table of sampled rollouts,
sent to the trackers ``logging.trackers`` names, beside metrics.jsonl (always written).

    Learner._log_step ── the metrics.jsonl line, the step's groups ──> Tracking.log_step
        ──> every live tracker: log_scalars(step, numeric fields of the line)
                                log_table(step, "rollouts", rows)   (every logging.rollout_table_every)

A tracker's package is imported only when the tracker is configured (each is an optional extra of
the same name). Tracking never stops training: a tracker that fails to start is named in one line
with the reason and the others go on; one that raises while logging is named, counted
(``error_count``, the ``tracker_errors`` metric) and turned off.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from pope.config import LoggingConfig

if TYPE_CHECKING:
    from broker.schemas import ScoredGroup

ROLLOUT_COLUMNS = ("group_id", "variant", "prefix_units", "prefix_tokens", "completion", "reward", "verdict")
NOT_SCALARS = ("step", "time")  # the step is each scalar's x axis; the wall-clock time is no curve


class Tracker(Protocol):
    def log_scalars(self, step: int, scalars: dict[str, float]) -> None: ...

    def log_eval(self, step: int, scalars: dict[str, float]) -> None:
        """An evaluation's scalars at learner step ``step``, which may be behind the last step logged
        (an evaluation finishes while training goes on)."""
        ...

    def log_table(self, step: int, name: str, rows: list[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


def step_scalars(line: dict[str, Any]) -> dict[str, float]:
    """The numeric fields of a metrics.jsonl line (not the step, the wall-clock time, lists or flags)."""
    return {
        key: float(value)
        for key, value in line.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and key not in NOT_SCALARS
    }


def rollout_rows(groups: list[ScoredGroup], max_rows: int, seed: str) -> list[dict[str, Any]]:
    """Up to ``max_rows`` of the groups' rollouts, drawn without replacement by a generator seeded
    with ``seed``, in the groups' order; one dict per rollout with the keys of ROLLOUT_COLUMNS."""
    every = [(g, i) for g in groups for i in range(len(g.group.rollouts))]
    picked = sorted(random.Random(seed).sample(range(len(every)), min(max_rows, len(every))))
    rows = []
    for scored, i in (every[k] for k in picked):
        group = scored.group
        values = (group.group_id, group.variant, group.prefix_units, group.prefix_tokens,
                  group.rollouts[i].text, scored.rewards[i], scored.verdicts[i])  # fmt: skip
        rows.append(dict(zip(ROLLOUT_COLUMNS, values, strict=True)))
    return rows


def _markdown(rows: list[dict[str, Any]]) -> str:
    """Rows as a Markdown table (TensorBoard's text tab renders it); cells on one line each."""

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", "\\n")

    columns = list(rows[0]) if rows else list(ROLLOUT_COLUMNS)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


class TensorBoardTracker:
    """Event files under ``log_dir`` (default <run_dir>/tensorboard): one scalar per metric, the
    rollout table as text. Flushed every step, so a learner that dies leaves its curves readable."""

    def __init__(self, options, run_dir: Path, run_id: str, params: dict[str, Any]):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.log_dir = Path(options.log_dir or run_dir / "tensorboard")
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self.writer.add_text("learner_config", _markdown([{"key": k, "value": v} for k, v in params.items()]))

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    log_eval = log_scalars  # any step order

    def log_table(self, step: int, name: str, rows: list[dict[str, Any]]) -> None:
        self.writer.add_text(name, _markdown(rows), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A Weights & Biases run named after the run id; offline (files under <dir>/wandb, for a later
    ``wandb sync``) unless an API key is set or ``logging.wandb.mode`` says otherwise."""

    def __init__(self, options, run_dir: Path, run_id: str, params: dict[str, Any]):
        import wandb

        self.wandb = wandb
        parent = Path(options.dir or run_dir)
        parent.mkdir(parents=True, exist_ok=True)
        self.mode = options.mode or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        settings = wandb.Settings(console="off", silent=True, disable_git=True, save_code=False,
                                  disable_job_creation=True, x_disable_stats=True)  # fmt: skip
        self.run = wandb.init(
            project=options.project, entity=options.entity, name=run_id, dir=str(parent), mode=self.mode,
            tags=options.tags, config=params, reinit="create_new", settings=settings,
        )  # fmt: skip
        # W&B drops a row logged at a step below its last: evaluations are drawn against eval/step
        self.run.define_metric("eval/step")
        self.run.define_metric("eval/*", step_metric="eval/step")

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def log_eval(self, step: int, scalars: dict[str, float]) -> None:
        # joins the row of the step being logged (commit=False): the x axis is eval/step, not W&B's step
        self.run.log({**scalars, "eval/step": step}, commit=False)

    def log_table(self, step: int, name: str, rows: list[dict[str, Any]]) -> None:
        columns = list(rows[0]) if rows else list(ROLLOUT_COLUMNS)
        table = self.wandb.Table(columns=columns, data=[[row[c] for c in columns] for row in rows])
        self.run.log({name: table}, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    """An MLflow run named after the run id, in ``experiment_name``, at ``tracking_uri`` (default a
    file store in <run_dir>/mlruns); the rollout table is a JSON artifact <name>/step_<step>.json
    in the split layout ({"columns": [...], "data": [[...], ...]})."""

    def __init__(self, options, run_dir: Path, run_id: str, params: dict[str, Any]):
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        self.metric = Metric
        self.tracking_uri = options.tracking_uri or (run_dir / "mlruns").resolve().as_uri()
        if urlsplit(self.tracking_uri).scheme in ("", "file"):
            # MLflow 3 refuses its file store unless this is set; it is the store mlflow-skinny can
            # keep by itself (a database store needs the full package)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        experiment = self.client.get_experiment_by_name(options.experiment_name)
        experiment_id = (
            experiment.experiment_id if experiment else self.client.create_experiment(options.experiment_name)
        )
        self.run_id = self.client.create_run(experiment_id, run_name=run_id).info.run_id
        items = [Param(key, str(value)) for key, value in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        now_ms = int(time.time() * 1000)
        # MLflow's names take no '@': eval/<set>/pass@<k> is eval/<set>/pass_at_<k> there
        metrics = [
            self.metric(key.replace("@", "_at_"), value, now_ms, step) for key, value in scalars.items()
        ]
        for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])

    log_eval = log_scalars  # any step order

    def log_table(self, step: int, name: str, rows: list[dict[str, Any]]) -> None:
        columns = list(rows[0]) if rows else list(ROLLOUT_COLUMNS)
        split = {"columns": columns, "data": [[row[c] for c in columns] for row in rows]}
        self.client.log_dict(self.run_id, split, f"{name}/step_{step:06d}.json")

    def close(self) -> None:
        self.client.set_terminated(self.run_id, "FINISHED")


# name (a value of logging.trackers) -> the class; each is built with (its options section of
# LoggingConfig, the run dir, the run id, the params to record)
TRACKERS: dict[str, Callable[..., Tracker]] = {
    "tensorboard": TensorBoardTracker,
    "wandb": WandbTracker,
    "mlflow": MlflowTracker,
}


def _reason(exc: BaseException) -> str:
    """An exception as one short line."""
    text = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {text if len(text) <= 300 else text[:297] + '...'}"


class Tracking:
    """The trackers of one learner run. ``start`` builds them, ``log_step`` sends each step to
    every live one, ``close`` ends them; none of these raises because of a tracker."""

    def __init__(
        self,
        config: LoggingConfig,
        run_dir: str | Path,
        run_id: str,
        seed: int = 0,
        registry: dict[str, Callable[..., Tracker]] = TRACKERS,
        printer: Callable[[str], None] = print,
    ):
        self.config = config
        self.run_dir = Path(run_dir)
        self.run_id = run_id
        self.seed = seed
        self.registry = registry
        self.printer = printer
        self.live: dict[str, Tracker] = {}
        self.started = False
        self.failed_to_start: dict[str, str] = {}
        self.errors: dict[str, str] = {}  # tracker -> why it was turned off (it raised while logging)

    @property
    def error_count(self) -> int:
        return len(self.errors)

    def start(self, params: dict[str, Any]) -> None:
        """Build the trackers (once: a second call does nothing)."""
        if self.started:
            return
        self.started = True
        for name in self.config.trackers:
            try:
                self.live[name] = self.registry[name](
                    getattr(self.config, name), self.run_dir, self.run_id, params
                )
            except Exception as exc:  # deliberate: a tracker that cannot start never stops the run
                hint = f" (its package: pip install 'pope[{name}]')" if isinstance(exc, ImportError) else ""
                self.failed_to_start[name] = _reason(exc) + hint
                self.printer(
                    f"tracking: {name} did not start, the run goes on without it: {_reason(exc)}{hint}"
                )

    def log_step(self, step: int, line: dict[str, Any], groups: list[ScoredGroup]) -> None:
        """The line's scalars to every live tracker, and a rollout table on every
        ``rollout_table_every``-th step."""
        if not self.live:
            return
        scalars = step_scalars(line)
        every = self.config.rollout_table_every
        rows = None
        if every and step % every == 0:
            rows = rollout_rows(groups, self.config.rollout_table_rows, f"{self.seed}:{step}")
        for name, tracker in list(self.live.items()):
            try:
                tracker.log_scalars(step, scalars)
                if rows is not None:
                    tracker.log_table(step, "rollouts", rows)
            except Exception as exc:  # deliberate: counted, the tracker turned off, training goes on
                self._turn_off(name, exc, f"while logging step {step}")

    def log_eval(self, step: int, scalars: dict[str, float]) -> None:
        """An evaluation's scalars (``eval/<set>/pass@<k>``) at learner step ``step``, to every live tracker."""
        for name, tracker in list(self.live.items()):
            try:
                tracker.log_eval(step, scalars)
            except Exception as exc:  # deliberate: counted, the tracker turned off, training goes on
                self._turn_off(name, exc, f"while logging the evaluation of step {step}")

    def _turn_off(self, name: str, exc: Exception, when: str) -> None:
        self.errors[name] = _reason(exc)
        self.live.pop(name, None)
        self.printer(f"tracking: {name} failed {when} and is turned off: {_reason(exc)}")

    def close(self) -> None:
        for name, tracker in list(self.live.items()):
            try:
                tracker.close()
            except Exception as exc:  # deliberate: counted like a failure while logging
                self._turn_off(name, exc, "while closing")
        self.live = {}

    def summary(self) -> dict[str, Any]:
        """For the run's summary: the trackers asked for, those that did not start and why, and
        those turned off after an error and why."""
        return {
            "trackers": list(self.config.trackers),
            "failed_to_start": dict(self.failed_to_start),
            "errors": dict(self.errors),
            "error_count": self.error_count,
        }
