"""``pope report``: a page drawn from metrics.jsonl lines of known values, read back from its tables
and from the SVG itself, and loaded in headless Chromium (tests/browser.py) with no console error,
no network request and every plot laid out."""

from __future__ import annotations

import json
import os
import re
import struct
from html.parser import HTMLParser
from pathlib import Path

import pytest

from orchestrator.cli import main as pope
from orchestrator.report import PANELS, ReportError, render_report, write_report
from tests.browser import Chromium, find_chromium

STEPS = 6
# the learner's version after step s is s; a group trained at step s that started under version v
# lags s - 1 - v. Per step: the start versions of its 4 groups, and which were trained
STARTS = {
    1: [0, 0, 0, 0],
    2: [0, 1, 1, 1],
    3: [1, 2, 2, 0],
    4: [3, 3, 2, 1],
    5: [4, 4, 3, 3],
    6: [5, 4, 4, 4],
}
SKIPPED = {(2, 0), (5, 3)}  # (step, group index) left out by the zero-variance filter
# the lags of the trained groups, by hand: step 1: 0 0 0 0; 2: 0 0 0; 3: 1 0 0 2; 4: 0 0 1 2; 5: 0 0 1;
# 6: 0 1 1 1
EXPECTED_LAG_COUNTS = {0: 14, 1: 6, 2: 2}


def _line(step: int) -> dict:
    """A metrics.jsonl line as learner/trainer.py writes it, with values that are simple functions
    of the step (a few left out on purpose)."""
    line = {
        "step": step,
        "learner_version": step,
        "time": 1_800_000_000.0 + 10.0 * step,
        "loss": 0.5 - 0.05 * step,
        "reward_mean": 0.15 * step,
        "reward_mean_guided": 0.2 * step,
        "reward_mean_unguided": 0.1 * step,
        "solve_rate_guided": 0.5,
        "solve_rate_unguided": 0.25 * (step % 2),
        "hard_solved_unguided_fraction": step / 64,
        "clip_frac_low": 0.01 * step,
        "clip_frac_high": 0.02 * step,
        "policy_lag_mean": 0.1 * step,
        "policy_lag_max": float(step // 2),
        "policy_lag_tokens_mean": 0.05 * step,
        "tokens_trained": 100.0 * step,
        "groups_held": float(step % 3),
        "buffer_lag_groups": float(7 - step),
        "grad_norm": float("nan"),  # what a step with no gradient logs: not plotted, no crash
        "step_s": 2.0 + step,
        "data_wait_s": 0.5,
        "forward_backward_s": 1.0 + 0.5 * step,
        "optimizer_s": 0.25,
        "broadcast_s": 0.125,
        "groups": [
            {
                "group_id": f"s{step}g{i}",
                "variant": "guided" if i % 2 else "unguided",
                "policy_version": v,
                "trained": (step, i) not in SKIPPED,
                "rewards": [0.0, 1.0],
            }
            for i, v in enumerate(STARTS[step])
        ],  # fmt: skip
    }
    if step != 4:
        line["entropy"] = 2.0 - 0.1 * step  # step 4 logged no entropy: a gap, not a zero
    if step % 3 == 0:  # periodic evaluation, in both shapes a run may log it
        line["eval/aime/pass@1"] = 0.01 * step
        line["eval_pass_at_k"] = {"4": 0.03 * step}
    return line


# eval.jsonl as orchestrator/evaluation.py writes it: the held-out set at steps 0, 3 and 6
EVAL_ROWS = [
    {"step": s, "weight_version_start": s, "weight_version_end": s, "set": "held", "n": 4, "k": [1, 4],
     "problems": 2, "pass_at_k": {"1": 0.125 * s / 3, "4": 0.25 + 0.125 * s / 3}, "correct": {"a": 0, "b": 0}}
    for s in (0, 3, 6)
]  # fmt: skip


def _expected_lags() -> dict[int, int]:
    """The histogram by a naive loop over STARTS, apart from the code under test."""
    counts: dict[int, int] = {}
    for step, starts in STARTS.items():
        for i, start in enumerate(starts):
            if (step, i) not in SKIPPED:
                lag = max(0, step - 1 - start)
                counts[lag] = counts.get(lag, 0) + 1
    return counts


class _Page(HTMLParser):
    """Each figure of the page: its class, its table rows ({series index: (label, [cells])}), the x
    values of its table, the SVG ids inside it and, per SVG group id, the marker positions and the
    paths' vertices."""

    def __init__(self):
        super().__init__()
        self.figures: dict[str, dict] = {}
        self.current: dict | None = None
        self.group: list[str] = []
        self.row: list | None = None
        self.cell: str | None = None
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.urls += [v for k, v in attrs.items() if k in ("src", "href", "xlink:href") and v]
        if tag == "figure":
            self.current = {"class": attrs.get("class", ""), "rows": {}, "xs": [], "svg": False,
                            "markers": {}, "paths": {}, "text": ""}  # fmt: skip
            self.figures[attrs["id"]] = self.current
        if self.current is None:
            return
        if tag == "svg":
            self.current["svg"] = True
        if tag == "g":
            self.group.append(attrs.get("id", ""))
        owner = next((g for g in reversed(self.group) if g.startswith(("series-", "bar-"))), None)
        if tag == "use" and owner:
            self.current["markers"].setdefault(owner, []).append((float(attrs["x"]), float(attrs["y"])))
        if tag == "path" and owner:
            numbers = [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", attrs.get("d", ""))]
            self.current["paths"].setdefault(owner, []).append(
                list(zip(numbers[::2], numbers[1::2], strict=True))
            )
        if tag == "tr":
            self.row = [attrs.get("data-series"), []]
        if tag in ("td", "th") and self.row is not None:
            self.cell = ""

    def handle_endtag(self, tag):
        if tag == "g" and self.group:
            self.group.pop()
        if tag in ("td", "th") and self.row is not None and self.cell is not None:
            self.row[1].append(self.cell)
            self.cell = None
        if tag == "tr" and self.row is not None and self.current is not None:
            index, cells = self.row
            if index is None:
                self.current["xs"] = [float(c) for c in cells[1:]]
            else:
                self.current["rows"][int(index)] = (cells[0], [float(c) if c else None for c in cells[1:]])
            self.row = None
        if tag == "figure":
            self.current = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data
        if self.current is not None:
            self.current["text"] += data


def _parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    return parser


def _table(figure: dict) -> dict[str, dict[float, float]]:
    """A figure's table as {label: {x: value}}."""
    return {
        label: {x: v for x, v in zip(figure["xs"], cells, strict=True) if v is not None}
        for label, cells in figure["rows"].values()
    }


@pytest.fixture
def run_dir(tmp_path) -> Path:
    run = tmp_path / "r-known"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(_line(s)) + "\n" for s in range(1, STEPS + 1)))
    (run / "config.yaml").write_text("run:\n  run_id: r-known\nmodel:\n  path: builtin:tiny-qwen2\n"
                                     "learner:\n  steps: 6\n  lr: 0.001\nactors:\n  engine:\n    type: vllm\n")  # fmt: skip
    (run / "eval.jsonl").write_text("".join(json.dumps(row) + "\n" for row in EVAL_ROWS))
    (run / "summary.json").write_text(json.dumps({"run_id": "r-known", "steps": 6, "groups_lost": 0,
                                                  "wall_s": {"total_s": 61.5}, "trained_group_ids": ["a"]}))  # fmt: skip
    return run


def _assert_affine(points: list[tuple[float, float]], values: list[tuple[float, float]], what: str) -> None:
    """The drawn points are the data under one map per axis (display = a * data + b), shared by
    every series of the axes: the SVG holds the numbers (a swapped or shifted series fails)."""
    assert len(points) == len(values), what
    for axis in (0, 1):
        data = [v[axis] for v in values]
        drawn = [p[axis] for p in points]
        j = next((k for k in range(1, len(data)) if abs(data[k] - data[0]) > 1e-12), None)
        if j is None:
            assert max(drawn) - min(drawn) < 1e-3, what
            continue
        scale = (drawn[j] - drawn[0]) / (data[j] - data[0])
        for d, p in zip(data, drawn, strict=True):
            assert p == pytest.approx(drawn[0] + scale * (d - data[0]), abs=2e-3), what


@pytest.mark.unit
def test_every_plot_holds_the_numbers_of_the_lines(run_dir):
    page = render_report(run_dir)
    parsed = _parse(page)
    names = [build([]).name for build in PANELS]
    assert sorted(parsed.figures) == sorted(f"plot-{n}" for n in names)
    figures = {name.removeprefix("plot-"): fig for name, fig in parsed.figures.items()}
    assert all(fig["svg"] and "absent" not in fig["class"] for fig in figures.values()), [
        n for n, f in figures.items() if not f["svg"]
    ]
    steps = list(range(1, STEPS + 1))

    def by_step(f, only=steps):
        return {float(s): pytest.approx(f(s)) for s in only}

    expected = {
        "reward": {"guided": by_step(lambda s: 0.2 * s), "unguided": by_step(lambda s: 0.1 * s),
                   "all": by_step(lambda s: 0.15 * s)},
        "solve_rate": {"guided": by_step(lambda s: 0.5), "unguided": by_step(lambda s: 0.25 * (s % 2))},
        "hard_solved": {"unguided": by_step(lambda s: s / 64)},
        "eval": {"eval/aime/pass@1": by_step(lambda s: 0.01 * s, [3, 6]),
                 "eval_pass_at_k/4": by_step(lambda s: 0.03 * s, [3, 6]),
                 "eval/held/pass@1": by_step(lambda s: 0.125 * s / 3, [0, 3, 6]),
                 "eval/held/pass@4": by_step(lambda s: 0.25 + 0.125 * s / 3, [0, 3, 6])},
        "headline": {"hard set solved unguided": by_step(lambda s: s / 64),
                     "eval/aime/pass@1": by_step(lambda s: 0.01 * s, [3, 6]),
                     "eval_pass_at_k/4": by_step(lambda s: 0.03 * s, [3, 6]),
                     "eval/held/pass@1": by_step(lambda s: 0.125 * s / 3, [0, 3, 6]),
                     "eval/held/pass@4": by_step(lambda s: 0.25 + 0.125 * s / 3, [0, 3, 6])},
        "entropy": {"entropy": by_step(lambda s: 2.0 - 0.1 * s, [1, 2, 3, 5, 6])},
        "clip": {"low (ratio < 1 - eps)": by_step(lambda s: 0.01 * s),
                 "high (ratio > 1 + eps)": by_step(lambda s: 0.02 * s)},
        "loss": {"loss": by_step(lambda s: 0.5 - 0.05 * s)},
        "policy_lag": {"mean per trained group": by_step(lambda s: 0.1 * s),
                       "max per trained group": by_step(lambda s: s // 2),
                       "mean per trained token": by_step(lambda s: 0.05 * s)},
        "policy_lag_hist": {"trained groups": {float(k): v for k, v in EXPECTED_LAG_COUNTS.items()}},
        "buffer_lag": {"waiting in the streams at step end": by_step(lambda s: 7 - s),
                       "held by the learner for a later step": by_step(lambda s: s % 3)},
        "step_time": {"collect (data wait)": by_step(lambda s: 0.5),
                      "forward + backward": by_step(lambda s: 1.0 + 0.5 * s),
                      "optimizer": by_step(lambda s: 0.25), "broadcast": by_step(lambda s: 0.125),
                      # step_s - the parts: 2 + s - (1.875 + 0.5 s)
                      "other": by_step(lambda s: 0.125 + 0.5 * s)},
    }  # fmt: skip
    assert set(expected) == set(names)
    for name, series in expected.items():
        assert _table(figures[name]) == series, name
    assert _expected_lags() == EXPECTED_LAG_COUNTS  # the loop agrees with the hand count
    # the drawn lines: each series' markers sit where its numbers say, on the axes' one scale
    for name, fig in figures.items():
        if name in ("policy_lag_hist", "step_time"):
            continue
        points, values = [], []
        for i, (label, _) in fig["rows"].items():
            points += fig["markers"][f"series-{name}-{i}"]
            values += sorted((x, float(v)) for x, v in _table(fig)[label].items())
        _assert_affine(points, values, name)
    # the stacked bars: each bar's height (display units) is its value times one scale
    step_time = figures["step_time"]
    heights, values = [], []
    for i, (label, _) in step_time["rows"].items():
        for j, (_, value) in enumerate(sorted(_table(step_time)[label].items())):
            (vertices,) = step_time["paths"][f"bar-step_time-{i}-{j}"]
            heights.append(max(y for _, y in vertices) - min(y for _, y in vertices))
            values.append(value)
    assert len(heights) == 5 * STEPS
    scale = heights[0] / values[0]
    assert heights == pytest.approx([v * scale for v in values], abs=2e-3)
    # the note: the token-weighted mean lag, sum(0.05 s * 100 s) / sum(100 s) = 0.05 * 91 / 21
    assert f"mean lag {0.05 * 91 / 21:.3f} versions" in figures["policy_lag_hist"]["text"]
    # nothing is fetched: every reference points inside the page
    assert parsed.urls and all(url.startswith("#") for url in parsed.urls), parsed.urls
    # the header: run id, config summary, summary.json's numbers (the id lists left out)
    assert "<title>pope run r-known</title>" in page
    for text in ("builtin:tiny-qwen2", "<th>learning rate</th><td>0.001</td>", "<th>wall_s.total_s</th><td>61.5</td>",
                 "<th>groups_lost</th><td>0</td>", "6 lines, steps 1 to 6"):  # fmt: skip
        assert text in page, text
    assert "trained_group_ids" not in page


@pytest.mark.unit
def test_fields_a_run_did_not_log_are_shown_as_not_recorded(tmp_path):
    """An old run's lines: no eval, no buffer lag, no lineage, no entropy; a torn last line."""
    run = tmp_path / "old"
    run.mkdir()
    keep = ("step", "loss", "reward_mean_guided", "step_s")
    lines = [{k: v for k, v in _line(s).items() if k in keep} for s in (1, 2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 3, "lo')
    parsed = _parse(render_report(run))
    absent = {n.removeprefix("plot-") for n, f in parsed.figures.items() if "absent" in f["class"]}
    assert absent == {"solve_rate", "hard_solved", "eval", "headline", "entropy", "clip", "policy_lag",
                      "policy_lag_hist", "buffer_lag"}  # fmt: skip
    for name in absent:
        fig = parsed.figures[f"plot-{name}"]
        assert "not recorded in this run" in fig["text"] and not fig["svg"]
    assert _table(parsed.figures["plot-reward"]) == {"guided": {1.0: 0.2, 2.0: 0.4}, "all": {}}
    # only the rest of step_s: no part was logged
    assert _table(parsed.figures["plot-step_time"])["other"] == {1.0: 3.0, 2.0: 4.0}
    page = render_report(run)
    assert "2 lines, steps 1 to 2" in page and "torn last line" in page and "no summary.json" in page
    # a run that trained no step yet: every plot absent, the page still written
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.yaml").write_text("run:\n  run_id: empty\n")
    parsed = _parse(write_report(empty).read_text())
    assert len(parsed.figures) == len(PANELS) and all("absent" in f["class"] for f in parsed.figures.values())


@pytest.mark.unit
def test_bad_runs_are_named(tmp_path, capsys):
    with pytest.raises(ReportError, match="no run folder"):
        render_report(tmp_path / "nope")
    with pytest.raises(ReportError, match="neither metrics.jsonl nor config.yaml"):
        render_report(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2, oops\n{"step": 3}\n')
    with pytest.raises(ReportError, match=r"metrics.jsonl line 2 is not JSON"):
        render_report(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n[2]\n')
    with pytest.raises(ReportError, match=r"line 2 is a list, not a JSON object"):
        render_report(tmp_path)
    assert pope(["report", str(tmp_path / "nope")]) == 2
    assert "pope: report: no run folder" in capsys.readouterr().err


@pytest.mark.unit
def test_pope_report_writes_the_page(run_dir, tmp_path, capsys):
    assert pope(["report", str(run_dir)]) == 0
    assert f"report: {run_dir / 'report.html'}" in capsys.readouterr().out
    assert len(_parse((run_dir / "report.html").read_text()).figures) == len(PANELS)
    assert pope(["report", str(run_dir), "--output", str(tmp_path / "elsewhere.html")]) == 0
    assert (tmp_path / "elsewhere.html").is_file()


def _chromium() -> str:
    """The browser; missing, the test fails where the install should have provided it (CI, or root:
    scripts/install.sh installs Debian's chromium), and is skipped elsewhere."""
    binary = find_chromium()
    if binary is None:
        if os.environ.get("CI") or os.geteuid() == 0:
            pytest.fail(
                "chromium is not installed: scripts/install.sh installs it (apt-get install chromium)"
            )
        pytest.skip("chromium is not installed and cannot be without root (Debian: apt-get install chromium)")
    return binary


# every figure's SVG laid out, with its size and how many of its series/bar groups are drawn
CHECK_JS = """[...document.querySelectorAll("figure.plot")].map(f => {
  const svg = f.querySelector("svg"), box = svg ? svg.getBoundingClientRect() : null;
  return {id: f.id, absent: f.classList.contains("absent"), width: box ? box.width : 0,
          height: box ? box.height : 0,
          drawn: svg ? svg.querySelectorAll('g[id^="series-"], g[id^="bar-"]').length : 0};
})"""


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", png[16:24])


@pytest.mark.integration
def test_the_page_loads_in_chromium_with_every_plot_and_no_console_error(run_dir, tmp_path):
    page = write_report(run_dir)
    bad = tmp_path / "bad.html"  # the check must be able to fail: a page with a console error and a fetch
    bad.write_text(page.read_text().replace("</body>", '<img src="https://example.com/x.png">'
                                            '<script>console.error("negative control")</script></body>'))  # fmt: skip
    with Chromium(_chromium()) as browser:
        control = browser.load(bad.as_uri())
        load = browser.load(page.as_uri(), CHECK_JS, width=1280)
    assert "negative control" in control.console_errors
    assert "https://example.com/x.png" in control.requests
    assert load.console_errors == []
    assert load.requests == [page.as_uri()]  # the page itself, nothing else
    figures = {f["id"]: f for f in load.check}
    assert sorted(figures) == sorted(f"plot-{build([]).name}" for build in PANELS)
    for fig in figures.values():
        assert not fig["absent"] and fig["width"] > 300 and fig["height"] > 100, fig
    drawn = {k.removeprefix("plot-"): f["drawn"] for k, f in figures.items()}
    # lines per panel; bars: the lag histogram's 3 values, the step split's 5 layers x 6 steps
    assert drawn == {"reward": 3, "solve_rate": 2, "hard_solved": 1, "eval": 4, "headline": 5, "entropy": 1, "clip": 2,
                     "loss": 1, "policy_lag": 3, "policy_lag_hist": 3, "buffer_lag": 2,
                     "step_time": 5 * STEPS}  # fmt: skip
    width, height = _png_size(load.screenshot_png)
    assert width == 1280 and height > 1000  # the whole page, every plot in it
