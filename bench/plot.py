"""Plots of bench/results.json where a curve says more than a table.

    python -m bench.plot [--results bench/results.json] [--out bench/plots]

``broadcast.png``: seconds against MiB moved for pope's bucketed broadcast, the raw gloo
broadcast of one warm buffer and the raw broadcast of a fresh buffer (log-log; the tiny model
and the 16 / 64 / 256 MiB sets). ``step_time.png``: where one step's time goes in the pipeline
(the learner's totals over the loop per step: data wait, forward/backward, optimizer, broadcast,
the rest), the synchronous schedule (stage totals per step) and TRL (its timed steps' mean), for
the same 4 groups x 8 completions; means, so that the parts add up to the step. ``policy_lag.png``:
the trained groups' policy lag in the demo pipeline (bench/lag.py), per call and continuous side
by side, one bar per run (the pool-wide bound at 4 and 8, and ``policy_lag_before``: the
per-actor count the pool-wide one replaced, at 4), with each run's mean. ``make bench`` draws
them after the benchmarks when matplotlib is installed (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.common import RESULTS

SIZES = ("tiny_model", "fp32_16mib", "fp32_64mib", "fp32_256mib")


def plot(results: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    date = results.get("date", "")
    broadcast = results.get("broadcast")
    if broadcast:
        sizes = [k for k in SIZES if k in broadcast]
        mib = [broadcast[k]["mib"] for k in sizes]
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for key, label in (("pope_s", "pope (bucketed, buffers kept)"), ("raw_s", "raw, warm buffer"),
                           ("raw_fresh_s", "raw, fresh buffer")):  # fmt: skip
            ax.plot(mib, [broadcast[k][key] for k in sizes], marker="o", label=label)
        ax.set(xscale="log", yscale="log", xlabel="MiB moved", ylabel="seconds (median)",
               title=f"weight broadcast, gloo, 1 receiver\n{date}")  # fmt: skip
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        written.append(out / "broadcast.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    pipe, sync, trl = results.get("pipeline"), results.get("sync"), results.get("trl")
    if pipe and sync and trl:
        wall, steps = pipe["launcher_wall_s"], pipe["steps"]
        split = [
            ("data wait", wall["learner_data_wait_s"] / steps),
            ("forward/backward", wall["learner_forward_backward_s"] / steps),
            ("optimizer", wall["learner_optimizer_s"] / steps),
            ("broadcast", wall["learner_broadcast_s"] / steps),
        ]
        rest = pipe["step_period_s"] - sum(v for _, v in split)
        parts = {
            "pipeline (learner's step)": [*split, ("rest", max(0.0, rest))],
            "synchronous": [
                (k.removesuffix("_s"), v / sync["steps"]) for k, v in sync["stage_total_s"].items()
            ],
            "TRL GRPOTrainer": [("step", trl["step_s_mean"])],
        }
        fig, ax = plt.subplots(figsize=(8, 3.2))
        colors = {}
        palette = plt.get_cmap("tab10")
        for row, items in enumerate(parts.values()):
            left = 0.0
            for name, value in items:
                color = colors.setdefault(name, palette(len(colors)))
                ax.barh(
                    row,
                    value,
                    left=left,
                    color=color,
                    label=name if name not in ax.get_legend_handles_labels()[1] else None,
                )
                left += value
        ax.set_yticks(range(len(parts)), list(parts))
        ax.invert_yaxis()
        ax.set(
            xlabel="seconds per step (means over the timed steps)",
            title=f"one step of 4 groups x 8 completions\n{date}",
        )
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
        written.append(out / "step_time.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    lag = results.get("policy_lag")
    if lag:
        written.append(_plot_policy_lag(plt, lag, results.get("policy_lag_before"), out / "policy_lag.png"))
    return written


def _plot_policy_lag(plt, lag: dict, before: dict | None, path: Path) -> Path:
    """Trained groups per policy lag, a panel per generation mode, a bar per run."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, generation in zip(axes, ("per_call", "continuous"), strict=True):
        runs = [(f"pool-wide bound {r['max_groups_in_flight']}", r) for r in lag["runs"].values()
                if r["generation"] == generation]  # fmt: skip
        if before and generation in before.get("runs", {}):
            runs.append(("before: per-actor count, bound 4", before["runs"][generation]))
        lags = sorted({int(k) for _, r in runs for k in r["group_lag_histogram"]})
        width = 0.8 / max(1, len(runs))
        for i, (label, r) in enumerate(runs):
            total = sum(r["group_lag_histogram"].values())
            shares = [r["group_lag_histogram"].get(str(x), 0) / total for x in lags]
            ax.bar([x + (i - (len(runs) - 1) / 2) * width for x in lags], shares, width,
                   label=f"{label}: mean {r['policy_lag_mean']:.2f}")  # fmt: skip
        ax.set(title=generation.replace("_", " "), xlabel="policy lag (versions)", xticks=lags)
        ax.legend(fontsize=7)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylabel("share of trained groups")
    fig.suptitle(f"policy lag of the trained groups, demo pipeline ({lag.get('date', '')})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=RESULTS.parent / "plots")
    args = parser.parse_args()
    for path in plot(json.loads(args.results.read_text()), args.out):
        print(path)
