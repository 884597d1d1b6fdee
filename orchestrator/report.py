"""``pope report``: one self-contained HTML page of a run (``runs/<run_id>/report.html``).

    metrics.jsonl ──> panels (one per quantity, each a list of series of (step, value))
    eval.jsonl    ──┘     │ (evaluation rows as eval/<set>/pass@<k> points at their steps)
    config.yaml   ──┐     │ matplotlib (Agg) ──> inline SVG; the same numbers in a table under it
    summary.json  ──┴─> header (run id, config summary, summary numbers)
                          └──> report.html: no script, no stylesheet or image fetched from anywhere

A panel whose fields no line of metrics.jsonl holds (an older run, evaluation turned off) is shown
as "not recorded in this run", never an error: the report reads runs of any version. Each plotted
line carries an SVG id (``series-<panel>-<i>``) and each bar (``bar-<panel>-<i>-<j>``), the i-th
row of the panel's table, so the page can be checked against the numbers it was drawn from.
"""

from __future__ import annotations

import html
import io
import json
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPORT_NAME = "report.html"

# the header's config summary: (dotted key, label); a key the config lacks is left out
CONFIG_SUMMARY = (
    ("model.path", "model"),
    ("actors.engine.type", "engine"),
    ("actors.num_actors", "actors"),
    ("preprocess.num_workers", "preprocess workers"),
    ("actors.num_rollouts", "rollouts per prompt"),
    ("actors.max_new_tokens", "max new tokens"),
    ("actors.temperature", "temperature"),
    ("data.source", "problems"),
    ("data.mix", "mix"),
    ("data.guided_fraction", "guided fraction"),
    ("learner.steps", "learner steps"),
    ("learner.groups_per_step", "groups per step"),
    ("learner.lr", "learning rate"),
    ("broker.max_groups_in_flight", "max groups in flight"),
    ("run.seed", "seed"),
)

# the step's time, in the order the learner spends it (learner/trainer.py); "other" is the rest of step_s
STEP_PARTS = (
    ("data_wait_s", "collect (data wait)"),
    ("forward_backward_s", "forward + backward"),
    ("optimizer_s", "optimizer"),
    ("broadcast_s", "broadcast"),
)


class ReportError(ValueError):
    """The run folder cannot be reported on; the message names the file and what is wrong."""


@dataclass
class Series:
    label: str
    points: list[tuple[float, float]]  # (step, value), in step order


@dataclass
class Panel:
    """One plot. ``kind``: "line" (series over steps), "stacked" (bars per step, one layer per
    series), "hist" (one series of (value, count))."""

    name: str
    title: str
    ylabel: str
    fields: str  # what it is drawn from, shown when absent
    series: list[Series] = field(default_factory=list)
    kind: str = "line"
    xlabel: str = "learner step"
    note: str = ""

    @property
    def recorded(self) -> bool:
        return any(s.points for s in self.series)


# -- reading the run --------------------------------------------------------------------------------
def read_metrics(path: Path) -> tuple[list[dict], int]:
    """The lines of metrics.jsonl as dicts, and the length of a torn last line (a write cut by a
    crash; skipped, 0 if none). Any other line that is not a JSON object is an error naming it."""
    if not path.is_file():
        return [], 0
    text = path.read_text(encoding="utf-8")
    rows = text.splitlines()
    torn = 0
    out = []
    for number, row in enumerate(rows, 1):
        if not row.strip():
            continue
        try:
            line = json.loads(row)
        except ValueError as exc:
            if number == len(rows) and not text.endswith("\n"):
                torn = len(row)
                continue
            raise ReportError(f"{path} line {number} is not JSON ({exc})") from None
        if not isinstance(line, dict):
            raise ReportError(f"{path} line {number} is a {type(line).__name__}, not a JSON object")
        out.append(line)
    return out, torn


def _number(value) -> float | None:
    """A finite number, or None (absent, NaN, a string, a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _series(lines: list[dict], key: str, label: str | None = None) -> Series:
    points = []
    for line in lines:
        step, value = _number(line.get("step")), _number(line.get(key))
        if step is not None and value is not None:
            points.append((step, value))
    return Series(label or key, points)


def _keys(lines: list[dict], accept: Callable[[str], bool]) -> list[str]:
    return sorted({k for line in lines for k in line if accept(k)})


def eval_points(rows: list[dict]) -> list[dict]:
    """eval.jsonl rows (orchestrator/evaluation.py) as lines of metrics: ``{"step": s,
    "eval/<set>/pass@<k>": value}``; a row without a step, a set or its pass@k is left out."""
    out = []
    for row in rows:
        values = row.get("pass_at_k")
        if (
            _number(row.get("step")) is None
            or not isinstance(row.get("set"), str)
            or not isinstance(values, dict)
        ):
            continue
        out.append({"step": row["step"], **{f"eval/{row['set']}/pass@{k}": v for k, v in values.items()}})
    return out


def _eval_fields(line: dict) -> dict:
    """The line's evaluation numbers, nested dicts flattened (``eval_pass_at_k: {"1": x}`` gives
    ``eval_pass_at_k/1``)."""
    out = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}", v)
        else:
            out[prefix] = value

    for key, value in line.items():
        if key.startswith(("eval/", "eval_")):
            walk(key, value)
    return out


# -- the panels: one function each, in the page's order ----------------------------------------------
def reward_panel(lines: list[dict]) -> Panel:
    variants = _keys(lines, lambda k: k.startswith("reward_mean_"))
    series = [_series(lines, k, k.removeprefix("reward_mean_")) for k in variants]
    return Panel("reward", "Reward per prompt variant", "mean reward", "reward_mean_<variant>",
                 series + [_series(lines, "reward_mean", "all")])  # fmt: skip


def solve_rate_panel(lines: list[dict]) -> Panel:
    keys = _keys(lines, lambda k: k.startswith("solve_rate_"))
    return Panel("solve_rate", "Groups with a correct rollout, per variant", "share of the step's groups",
                 "solve_rate_<variant>", [_series(lines, k, k.removeprefix("solve_rate_")) for k in keys])  # fmt: skip


def hard_solved_panel(lines: list[dict]) -> Panel:
    return Panel("hard_solved", "Hard set solved unguided (trailing window)", "share of hard problems",
                 "hard_solved_unguided_fraction", [_series(lines, "hard_solved_unguided_fraction", "unguided")])  # fmt: skip


def eval_panel(lines: list[dict]) -> Panel:
    flat = [{"step": line.get("step"), **_eval_fields(line)} for line in lines]
    keys = _keys(flat, lambda k: k != "step")
    return Panel("eval", "Evaluation pass@k", "pass@k", "eval/... or eval_pass_at_k...",
                 [_series(flat, k) for k in keys])  # fmt: skip


def headline_panel(lines: list[dict]) -> Panel:
    """The method's question on one axis: does solving the hard set unguided in training come with
    held-out pass@k?"""
    flat = [{"step": line.get("step"), **_eval_fields(line)} for line in lines]
    keys = _keys(flat, lambda k: k != "step")
    return Panel("headline", "Hard set solved unguided (training) and held-out pass@k (evaluation)", "share",
                 "hard_solved_unguided_fraction, eval.jsonl",
                 [_series(lines, "hard_solved_unguided_fraction", "hard set solved unguided")]
                 + [_series(flat, k) for k in keys])  # fmt: skip


def entropy_panel(lines: list[dict]) -> Panel:
    return Panel("entropy", "Entropy of the trained tokens", "nats per token", "entropy",
                 [_series(lines, "entropy")])  # fmt: skip


def clip_panel(lines: list[dict]) -> Panel:
    return Panel("clip", "Clip fractions", "share of trained tokens", "clip_frac_low, clip_frac_high",
                 [_series(lines, "clip_frac_low", "low (ratio < 1 - eps)"),
                  _series(lines, "clip_frac_high", "high (ratio > 1 + eps)")])  # fmt: skip


def loss_panel(lines: list[dict]) -> Panel:
    return Panel("loss", "Loss", "loss", "loss", [_series(lines, "loss")])


def policy_lag_panel(lines: list[dict]) -> Panel:
    return Panel("policy_lag", "Policy lag per step", "versions behind",
                 "policy_lag_mean, policy_lag_max, policy_lag_tokens_mean",
                 [_series(lines, "policy_lag_mean", "mean per trained group"),
                  _series(lines, "policy_lag_max", "max per trained group"),
                  _series(lines, "policy_lag_tokens_mean", "mean per trained token")])  # fmt: skip


def group_lags(line: dict) -> list[int]:
    """The policy lag of each group the line's step trained: the version it trained (one less than
    the line's ``learner_version``) minus the version its rollouts started under, at least 0."""
    version = _number(line.get("learner_version"))
    if version is None or not isinstance(line.get("groups"), list):
        return []
    out = []
    for group in line["groups"]:
        start = _number(group.get("policy_version")) if isinstance(group, dict) else None
        if start is not None and group.get("trained", True):
            out.append(max(0, int(version - 1 - start)))
    return out


def policy_lag_hist_panel(lines: list[dict]) -> Panel:
    counts = Counter(lag for line in lines for lag in group_lags(line))
    tokens = [(_number(x.get("policy_lag_tokens_mean")), _number(x.get("tokens_trained"))) for x in lines]
    tokens = [(lag, n) for lag, n in tokens if lag is not None and n is not None]
    note = ""
    if tokens and sum(n for _, n in tokens) > 0:
        mean = sum(lag * n for lag, n in tokens) / sum(n for _, n in tokens)
        note = f"over the run, per trained token: mean lag {mean:.3f} versions (policy_lag_tokens_mean weighted by tokens_trained)"
    return Panel("policy_lag_hist", "Policy lag of the trained groups", "trained groups",
                 "groups[].policy_version with learner_version",
                 [Series("trained groups", [(float(k), float(v)) for k, v in sorted(counts.items())])],
                 kind="hist", xlabel="versions behind", note=note)  # fmt: skip


def buffer_lag_panel(lines: list[dict]) -> Panel:
    return Panel("buffer_lag", "Buffer lag", "groups", "buffer_lag_groups, groups_held",
                 [_series(lines, "buffer_lag_groups", "waiting in the streams at step end"),
                  _series(lines, "groups_held", "held by the learner for a later step")])  # fmt: skip


def step_time_panel(lines: list[dict]) -> Panel:
    series = [_series(lines, key, label) for key, label in STEP_PARTS]
    other = []
    for line in lines:
        step, total = _number(line.get("step")), _number(line.get("step_s"))
        parts = [_number(line.get(key)) for key, _ in STEP_PARTS]
        if step is not None and total is not None:
            other.append((step, max(0.0, total - sum(p for p in parts if p is not None))))
    return Panel("step_time", "Step time split", "seconds", "step_s, data_wait_s, forward_backward_s, optimizer_s, broadcast_s",
                 series + [Series("other", other)], kind="stacked")  # fmt: skip


PANELS: tuple[Callable[[list[dict]], Panel], ...] = (
    reward_panel,
    solve_rate_panel,
    hard_solved_panel,
    eval_panel,
    headline_panel,
    entropy_panel,
    clip_panel,
    loss_panel,
    policy_lag_panel,
    policy_lag_hist_panel,
    buffer_lag_panel,
    step_time_panel,
)


# -- drawing -----------------------------------------------------------------------------------------
def render_svg(panel: Panel) -> str:
    """The panel as an SVG element (no XML prolog), ids unique to the panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    style = {"svg.fonttype": "none", "svg.hashsalt": f"pope-{panel.name}", "path.simplify": False}
    with plt.rc_context(style):
        fig, ax = plt.subplots(figsize=(6.4, 3.0), layout="constrained")
        try:
            _draw(ax, panel)
            ax.set_title(panel.title, fontsize=11)
            ax.set_xlabel(panel.xlabel)
            ax.set_ylabel(panel.ylabel)
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps and lags are whole numbers
            if len(panel.series) > 1:
                ax.legend(fontsize=8)
            buf = io.StringIO()
            fig.savefig(buf, format="svg", metadata={"Date": None})  # the same run, the same page
        finally:
            plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _draw(ax, panel: Panel) -> None:
    if panel.kind == "line":
        for i, s in enumerate(panel.series):
            if s.points:
                (line,) = ax.plot(*zip(*s.points, strict=True), marker="o", markersize=3, label=s.label)
                line.set_gid(f"series-{panel.name}-{i}")
        return
    if panel.kind == "hist":
        (s,) = panel.series
        bars = ax.bar([x for x, _ in s.points], [y for _, y in s.points], width=0.8, label=s.label)
        ax.set_xticks([x for x, _ in s.points])
        for j, bar in enumerate(bars):
            bar.set_gid(f"bar-{panel.name}-0-{j}")
        return
    bottoms: dict[float, float] = {}
    for i, s in enumerate(panel.series):
        if not s.points:
            continue
        steps = [x for x, _ in s.points]
        base = [bottoms.get(x, 0.0) for x in steps]
        bars = ax.bar(steps, [y for _, y in s.points], bottom=base, width=0.8, label=s.label)
        for j, (bar, (x, y)) in enumerate(zip(bars, s.points, strict=True)):
            bar.set_gid(f"bar-{panel.name}-{i}-{j}")
            bottoms[x] = bottoms.get(x, 0.0) + y


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _panel_table(panel: Panel) -> str:
    """The panel's numbers: a row per series, a column per x value."""
    xs = sorted({x for s in panel.series for x, _ in s.points})
    head = "".join(f"<th>{_fmt(int(x) if x.is_integer() else x)}</th>" for x in xs)
    rows = []
    for i, s in enumerate(panel.series):
        values = dict(s.points)
        cells = "".join(f"<td>{_fmt(values[x])}</td>" if x in values else "<td></td>" for x in xs)
        rows.append(f'<tr data-series="{i}"><th>{html.escape(s.label)}</th>{cells}</tr>')
    return (
        f'<details><summary>numbers</summary><table class="numbers"><tr><th>{html.escape(panel.xlabel)}</th>'
        f"{head}</tr>{''.join(rows)}</table></details>"
    )


def panel_html(panel: Panel) -> str:
    title = html.escape(panel.title)
    if not panel.recorded:
        return (
            f'<figure class="plot absent" id="plot-{panel.name}"><figcaption>{title}</figcaption>'
            f'<p class="absent">not recorded in this run ({html.escape(panel.fields)})</p></figure>'
        )
    note = f'<p class="note">{html.escape(panel.note)}</p>' if panel.note else ""
    return (
        f'<figure class="plot" id="plot-{panel.name}" data-kind="{panel.kind}" title="{title}">'
        f"{render_svg(panel)}{note}{_panel_table(panel)}</figure>"
    )


# -- the header --------------------------------------------------------------------------------------
def _dotted(config: dict, key: str):
    value = config
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def summary_rows(summary: dict) -> list[tuple[str, str]]:
    """summary.json's numbers and short facts (dicts one level deep); the id lists are left out."""
    rows = []
    for key, value in summary.items():
        if key.endswith("_group_ids") or key in ("placement", "problems_not_guidable"):
            continue
        if isinstance(value, dict):
            for sub, v in value.items():
                if isinstance(v, int | float | str | bool) or v is None:
                    rows.append((f"{key}.{sub}", _fmt(v)))
        elif isinstance(value, list):
            if len(value) <= 8 and all(isinstance(v, int | float) for v in value):
                rows.append((key, ", ".join(_fmt(v) for v in value)))
        else:
            rows.append((key, _fmt(value)))
    return rows


def _table(rows: list[tuple[str, str]], css: str) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f'<table class="{css}">{body}</table>'


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ReportError(f"{path} is not YAML: {exc}") from None
    return data if isinstance(data, dict) else {}


def _read_summary(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ReportError(f"{path} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path} holds a {type(data).__name__}, not a JSON object")
    return data


STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1400px; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: left; }
.header { display: flex; gap: 2em; flex-wrap: wrap; align-items: flex-start; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(540px, 1fr)); gap: 1em; }
figure { margin: 0; border: 1px solid #ddd; padding: 0.5em; }
figure svg { width: 100%; height: auto; }
figcaption { font-weight: bold; font-size: 0.9em; }
details summary { font-size: 0.8em; color: #555; }
.absent { color: #888; font-style: italic; }
.note { font-size: 0.85em; }
"""


def render_report(run_dir: Path) -> str:
    """The page of the run in ``run_dir``, as a string."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.jsonl"
    if not run_dir.is_dir():
        raise ReportError(f"no run folder {run_dir}")
    if not metrics_path.is_file() and not (run_dir / "config.yaml").is_file():
        raise ReportError(f"{run_dir} is not a run folder: it holds neither metrics.jsonl nor config.yaml")
    lines, torn = read_metrics(metrics_path)
    evaluations = eval_points(read_metrics(run_dir / "eval.jsonl")[0])
    config = _read_yaml(run_dir / "config.yaml")
    summary = _read_summary(run_dir / "summary.json")
    run_id = summary.get("run_id") or _dotted(config, "run.run_id") or run_dir.name

    steps = [s for s in (_number(line.get("step")) for line in lines) if s is not None]
    facts = [
        (
            "metrics.jsonl",
            f"{len(lines)} lines" + (f", steps {min(steps):g} to {max(steps):g}" if steps else ""),
        )
    ]
    if torn:
        facts.append(("torn last line", f"{torn} characters, skipped"))
    times = [t for t in (_number(line.get("time")) for line in lines) if t is not None]
    if times:
        facts.append(("first step logged", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(min(times)))))
        facts.append(("logged span", f"{max(times) - min(times):.1f} s"))
    config_rows = [
        (label, _fmt(v)) for key, label in CONFIG_SUMMARY if (v := _dotted(config, key)) is not None
    ]
    summary_html = (
        _table(summary_rows(summary), "summary")
        if summary
        else '<p class="absent">no summary.json (the run did not finish)</p>'
    )
    config_html = _table(config_rows, "config") if config else '<p class="absent">no config.yaml</p>'
    full_config = (
        f"<details><summary>config.yaml</summary><pre>{html.escape(yaml.safe_dump(config, sort_keys=False))}</pre></details>"
        if config
        else ""
    )
    plots = "\n".join(panel_html(build(lines + evaluations)) for build in PANELS)
    title = f"pope run {html.escape(str(run_id))}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{STYLE}</style></head>
<body>
<h1>{title}</h1>
<div class="header">
<section><h2>Run</h2>{_table(facts, "facts")}<h2>Config</h2>{config_html}{full_config}</section>
<section><h2>Summary</h2>{summary_html}</section>
</div>
<h2>Metrics</h2>
<div class="plots">
{plots}
</div>
</body></html>
"""


def write_report(run_dir: Path, output: Path | None = None) -> Path:
    """Render the run's page into ``output`` (default ``<run_dir>/report.html``); returns its path."""
    page = render_report(Path(run_dir))
    output = Path(output) if output else Path(run_dir) / REPORT_NAME
    output.write_text(page, encoding="utf-8")
    return output


def report_after_run(run_dir: Path, printer=print) -> Path | None:
    """``pope train``'s last act: the run's page. It never fails the run: a failure is one line."""
    try:
        path = write_report(run_dir)
    except (ReportError, OSError, ImportError, RuntimeError, ValueError) as exc:  # deliberate: see above
        printer(f"report not written ({type(exc).__name__}): {exc}")
        return None
    printer(f"report: {path}")
    return path
