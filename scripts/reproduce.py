"""``make reproduce``: issue D's testbed experiments end to end, written up in RESULTS.md.

    splits + base model (experiments.testbed_v1) ──> filter-hard (k=16) ──> find-prefixes (n=8)
        ──> base-model properties, correct guided traces for the SFT baseline
        ──> every experiment x seed through orchestrator.launcher.train (configs/testbed/*.yaml)
        ──> each final checkpoint evaluated unguided on the hard split (orchestrator.method.evaluate), plus
            diagnostics (guided / no prefix / prefix without the guided instruction)
        ──> RESULTS.md (tables, timings, machine) and results/*.png (curves over training steps)

One Ray instance serves every pool and run (started here through the launcher's own helper).
``--quick``: one seed, few steps, small splits: a check that everything runs, not a result.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _key, _value in (
    ("RAY_AUTH_MODE", "disabled"),
    ("RAY_USAGE_STATS_ENABLED", "0"),
    ("TOKENIZERS_PARALLELISM", "false"),
    ("VLLM_LOGGING_LEVEL", "WARNING"),
):
    os.environ.setdefault(_key, _value)

LONG_STEPS = 120  # the investigation's long POPE run (one seed)
EXPERIMENTS = {  # name -> what it is (configs/testbed/<name>.yaml)
    "grpo_hard": "GRPO, hard only",
    "grpo_hard_easy": "GRPO, hard + easy",
    "entropy": "GRPO + entropy bonus (0.01)",
    "clip_higher": "GRPO + clip-higher (eps_high 0.28)",
    "passk": "pass@k objective (k=4)",
    "sft_rl": "SFT on guided traces, then GRPO",
    "pope": "POPE (guided 1:1)",
    "pope_easy": "POPE + easy",
    "pope_long": f"POPE, {LONG_STEPS} steps, seed 0 (investigation)",  # configs/testbed/pope.yaml
}
CONFIG_DATA_DIR = "runs/reproduce/data/"  # where configs/testbed/*.yaml expect the data files
UNGUIDED_COPY = "~u"  # id suffix of the unguided copies in the pope_easy source file
FILTER_K = 16
PREFIX_N = 8
EVAL_N = 8
DIAG_N = 4


def log(message: str) -> None:
    print(f"[reproduce {time.strftime('%H:%M:%S')}] {message}", flush=True)


def load(path: Path):
    from pope.datasets import FieldMap, load_file

    return load_file(path, FieldMap(id="id"))[0]


def write_pope_easy_source(prefixes: Path, out: Path) -> Path:
    """Each hard problem twice: with its solution (asked guided under mix=guided_easy) and without
    one (nothing to show, so asked unguided): hard draws 1:1 unguided:guided, plus easy."""
    rows = [json.loads(line) for line in prefixes.read_text().splitlines() if line.strip()]
    copies = [{**r, "id": r["id"] + UNGUIDED_COPY, "solution": "", "pope_prefix_units": None} for r in rows]
    out.write_text("".join(json.dumps(row) + "\n" for row in rows + copies))
    return out


# ---- measurements through the actor pool ----


def rates(results, n: int) -> dict:
    """Per-sample success, share of problems solved (pass@n), mean completion length in tokens."""
    lengths = [x for _, ls in results for x in ls]
    return {
        "per_sample": sum(c for c, _ in results) / (n * len(results)),
        "solved": sum(c > 0 for c, _ in results) / len(results),
        "mean_tokens": sum(lengths) / len(lengths),
    }


def diagnose(pool, hard, easy, config, out_dir: Path, n_eval: int, n_diag: int) -> dict:
    """Unguided pass@1 / pass@8 (orchestrator.method.evaluate) and the same problems under three other
    conditions: guided instruction + prefix i*(x) (POPE's training prompts), guided instruction
    without a prefix, and the prefix under the unguided instruction; and the easy split unguided."""
    from orchestrator.method import evaluate, sample_counts
    from pope.prompts import PromptSpec

    table = evaluate(pool, {"hard": hard}, config, n_eval, [1, n_eval], out_dir)["hard"]["pass_at_k"]
    out = {"pass@1": table["1"], f"pass@{n_eval}": table[str(n_eval)]}
    conditions = {
        "unguided": lambda p: PromptSpec(p, "unguided", 0),
        "guided_prefix": lambda p: PromptSpec(p, "guided", p.prefix_units or 1),
        "guided_no_prefix": lambda p: PromptSpec(p, "guided", 0),
        "unguided_prefix": lambda p: PromptSpec(p, "unguided", p.prefix_units or 1),
    }
    for name, make in conditions.items():
        specs = [make(p) for p in hard]
        out[name] = rates(sample_counts(pool, hard, specs, config, n_diag), n_diag)
    specs = [PromptSpec(p, "unguided", 0) for p in easy]
    out["easy"] = rates(sample_counts(pool, easy, specs, config, n_diag), n_diag)
    return out


def guided_traces(pool, hard, config, seeds: list[int], n: int) -> dict[int, list[tuple[str, str]]]:
    """Correct guided completions, as (unguided prompt, oracle prefix + completion), per seed."""
    from pope.prompts import PromptSpec, render_prompt

    specs = [PromptSpec(p, "guided", p.prefix_units or 1) for p in hard]
    prompts = [render_prompt(pool.tokenizer, s, config.data) for s in specs]
    groups = pool.generate(prompts, n * len(seeds), config.actors.max_new_tokens)
    pairs = [(s.problem.answer, text) for s, g in zip(specs, groups, strict=True) for text, _ in g]
    rewards = iter(pool.score(pairs))
    traces: dict[int, list[tuple[str, str]]] = {seed: [] for seed in seeds}
    for spec, group in zip(specs, groups, strict=True):
        unguided = render_prompt(pool.tokenizer, PromptSpec(spec.problem, "unguided", 0), config.data)
        for i, (text, _) in enumerate(group):
            if next(rewards) > 0:
                traces[seeds[i // n]].append((unguided, spec.prefix_text + text))
    return traces


def sft(base: Path, traces: list[tuple[str, str]], out_dir: Path, seed: int, epochs: int = 2) -> Path:
    """Plain-torch fine-tuning on (prompt, target) pairs, loss on the target tokens only."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from experiments.testbed_v1 import train_step

    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    docs = [
        (
            tokenizer(p, add_special_tokens=False)["input_ids"],
            tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id],
        )
        for p, t in traces
    ]
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.0)
    batch_size = 16
    model.train()
    for _ in range(max(1, epochs * len(docs) // batch_size)):
        train_step(model, optimizer, rng.sample(docs, min(batch_size, len(docs))), tokenizer.pad_token_id)
    shutil.rmtree(out_dir, ignore_errors=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    shutil.copy(base / "generation_config.json", out_dir / "generation_config.json")
    return out_dir


# ---- training curves ----


def sft_per_seed(base: Path, traces: dict[int, list[tuple[str, str]]], out: Path, printer) -> dict[int, Path]:
    """One SFT checkpoint per seed from that seed's correct guided traces (the base where it has none)."""
    models = {}
    for seed, pairs in traces.items():
        printer(f"SFT seed {seed}: {len(pairs)} correct guided traces")
        models[seed] = sft(base, pairs, out / "sft" / f"seed{seed}", seed) if pairs else base
    return models


def curves(run_dir: Path, num_hard: int, window: int) -> dict[str, list[float]]:
    """Per step: entropy, rewards per variant, and the share of the hard set solved unguided in the
    trailing window, recomputed from each group's lineage (pope_easy's unguided copies map back to
    their problem; for the other runs this equals the logged hard_solved_unguided_fraction)."""
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    out: dict[str, list[float]] = {"step": [], "entropy": [], "hard_solved": [], "logged_hard_solved": []}
    history: list[tuple[int, str, bool]] = []
    for line in lines:
        step = line["step"]
        history += [
            (step, g["problem_id"].removesuffix(UNGUIDED_COPY), max(g["rewards"]) > 0)
            for g in line["groups"]
            if g["variant"] == "unguided"
        ]
        solved = {pid for s, pid, ok in history if ok and s > step - window}
        out["step"].append(step)
        out["entropy"].append(line.get("entropy", float("nan")))
        out["hard_solved"].append(len(solved) / num_hard)
        out["logged_hard_solved"].append(line.get("hard_solved_unguided_fraction", float("nan")))
        for variant in ("unguided", "guided", "easy"):
            out.setdefault(f"reward_{variant}", []).append(line.get(f"reward_mean_{variant}", float("nan")))
    return out


def mean_sd(values: list[float]) -> str:
    import statistics

    values = [v for v in values if v == v]
    if len(values) < 2:
        return f"{values[0]:.3f}" if values else "n/a"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def plot(results: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for key, title in (
        ("hard_solved", "hard set solved unguided (trailing window)"),
        ("entropy", "token entropy of trained completions"),
        ("reward_guided", "mean reward of guided groups"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, runs in results.items():
            series = [r["curves"][key] for r in runs if r.get("curves") and not name.endswith("_long")]
            if not series or all(all(v != v for v in s) for s in series):
                continue
            length = min(len(s) for s in series)
            data = np.array([s[:length] for s in series], dtype=float)
            mean = np.nanmean(data, axis=0)
            steps = np.arange(1, length + 1)
            ax.plot(steps, mean, label=EXPERIMENTS[name])
            if len(series) > 1:
                ax.fill_between(steps, np.nanmin(data, axis=0), np.nanmax(data, axis=0), alpha=0.15)
        ax.set_xlabel("learner step")
        if key == "entropy":  # one method's entropy explodes; keep the others readable
            ax.set_yscale("symlog", linthresh=0.1)
        ax.set_title(title + " (mean over seeds, band = min..max)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"{key}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


# ---- the report ----

GEN_START, GEN_END = "<!-- generated by scripts/reproduce.py: start -->", "<!-- generated: end -->"


def machine() -> str:
    names = [
        x.split(":", 1)[1].strip()
        for x in Path("/proc/cpuinfo").read_text().splitlines()
        if "model name" in x
    ]
    return f"{names[0] if names else 'unknown CPU'}, {os.cpu_count()} cores (shared with other jobs)"


def report(state: dict, results: dict, plots: list[Path], path: Path) -> None:
    base, n = state["base"], EVAL_N
    lines = [
        GEN_START,
        f"Command: `{state['command']}`  ",
        f"Machine: {machine()}  ",
        f"Finished {time.strftime('%Y-%m-%d %H:%M')}; took {state['timings']['total_s'] / 60:.1f} min "
        f"({', '.join(f'{k} {v / 60:.1f} min' for k, v in state['timings'].items() if k != 'total_s')}).  ",
        f"Seeds {state['seeds']}, {state['steps']} learner steps per run, base model `{state['model']}`.",
        "",
        "## Base model (experiments.testbed_v1, measured through the actor pool, HF engine, temperature 1)",
        "",
        "| measurement | value |",
        "|---|---|",
        f"| easy split ({base['num_easy']} problems, difficulty 1-3): pass@1 / pass@{n} (n={n}) | "
        f"{base['easy']['1']:.3f} / {base['easy'][str(n)]:.3f} |",
        f"| hard split ({base['num_hard_raw']} problems, difficulty 6-9): problems with a correct sample in "
        f"k={FILTER_K} (filter-hard) | {base['filter']['problems'] - base['filter']['hard']} |",
    ]
    if "hard_pass64" in base:
        lines.append(f"| hard split: pass@64 (n=64) | {base['hard_pass64']:.4f} |")
    lines += [
        f"| find-prefixes (n={PREFIX_N}): prefix found / fallback | {base['prefixes']['found']} / "
        f"{base['prefixes']['fallback']} |",
        f"| i*(x) in units: count per length | {base['prefix_hist']} |",
        f"| hard, guided with i*(x): per-sample success / share solved (n={DIAG_N}) | "
        f"{base['diag']['guided_prefix']['per_sample']:.3f} / {base['diag']['guided_prefix']['solved']:.3f} |",
        f"| hard, unguided: pass@1 / pass@{n} (n={n}) | {base['diag']['pass@1']:.3f} / "
        f"{base['diag'][f'pass@{n}']:.3f} |",
        "",
        f"## Final checkpoints, unguided on the hard split ({base['num_hard']} problems, n={n})",
        "",
        f"Mean ± standard deviation over seeds. pass@{n} is the share of the hard set solved unguided. "
        "Entropy: mean token entropy of the trained completions over the last 3 learner steps. "
        '"solved in training": the logged hard_solved_unguided_fraction at the last step.',
        "",
        f"| method | runs ok | pass@{n} | pass@1 | entropy | guided success (i*) | solved in training |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        ok = [r for r in runs if r.get("diag")]
        lines.append(
            f"| {EXPERIMENTS[name]} | {len(ok)}/{len(runs)} | "
            + " | ".join(
                mean_sd(vals)
                for vals in (
                    [r["diag"][f"pass@{n}"] for r in ok],
                    [r["diag"]["pass@1"] for r in ok],
                    [r["final_entropy"] for r in ok],
                    [r["diag"]["guided_prefix"]["per_sample"] for r in ok],
                    [r["curves"]["hard_solved"][-1] for r in ok],
                )
            )
            + " |"
        )
    lines += [
        "",
        "## Diagnostics: the same hard problems under other prompts (per-sample success, n="
        f"{DIAG_N}; mean completion tokens unguided)",
        "",
        "| method | unguided | unguided tokens | guided + i* | guided, no prefix | prefix, unguided instruction "
        "| easy split, unguided |",
        "|---|---|---|---|---|---|---|",
        _diag_row("base model", [{"diag": base["diag"]}]),
    ]
    lines += [_diag_row(EXPERIMENTS[name], runs) for name, runs in results.items()]
    failures = [(name, r) for name, runs in results.items() for r in runs if r.get("error")]
    if failures:
        lines += ["", "Failed runs:", ""] + [
            f"- {name} seed {r['seed']}: {r['error']}" for name, r in failures
        ]
    lines += ["", "## Curves over training steps", ""]
    lines += [f"![{p.stem}]({os.path.relpath(p, path.parent)})" for p in plots]
    lines += ["", GEN_END]
    generated = "\n".join(lines)
    old = path.read_text() if path.is_file() else ""
    if GEN_START in old and GEN_END in old:
        head, rest = old.split(GEN_START, 1)
        text = head + generated + rest.split(GEN_END, 1)[1]
    else:
        text = "# Results: the POPE testbed (issue D)\n\n" + generated + "\n"
    path.write_text(text)


def _diag_row(label: str, runs: list[dict]) -> str:
    ok = [r for r in runs if r.get("diag")]
    keys = ["unguided", "unguided", "guided_prefix", "guided_no_prefix", "unguided_prefix", "easy"]
    fields = ["per_sample", "mean_tokens"] + ["per_sample"] * 4
    cells = [mean_sd([r["diag"][k][f] for r in ok]) for k, f in zip(keys, fields, strict=True)]
    return f"| {label} | " + " | ".join(cells) + " |"


# ---- the pipeline ----


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 3 steps, small splits: a smoke run")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per experiment")
    parser.add_argument("--steps", type=int, default=None, help="learner steps (default: the configs')")
    parser.add_argument(
        "--only", default=None, help="comma-separated experiments (default: all; 'none': base model only)"
    )
    parser.add_argument("--out", default="runs/reproduce", help="working folder")
    parser.add_argument("--report", default="RESULTS.md", help="the report (results/ holds its plots)")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    from experiments import testbed_v1 as testbed
    from orchestrator import method
    from orchestrator.launcher import ComponentFailed, _start_ray, train
    from orchestrator.pool import GenerationPool
    from pope.config import load_config

    t_start = time.monotonic()
    timings: dict[str, float] = {}
    seeds = [0] if args.quick else list(range(args.seeds))
    steps = args.steps or (3 if args.quick else None)
    names = [n for n in args.only.split(",") if n != "none"] if args.only else list(EXPERIMENTS)
    names = [n for n in names if not (args.quick and n == "pope_long")]
    out = Path(args.out)
    data_dir = out / "data"
    num_easy, num_hard = (16, 8) if args.quick else (64, 32)

    # 1. data and the base model
    splits = testbed.write_splits(data_dir, seed=0, num_easy=num_easy, num_hard=num_hard)
    t = time.monotonic()
    model = testbed.resolve_testbed_model(Path(".cache/pope"), log=log)
    testbed.link_current(model, Path(".cache/pope"))
    timings["base_model_s"] = time.monotonic() - t
    log(f"base model {model}")

    def config_for(name: str, seed: int, model_path: Path, extra: tuple[str, ...] = ()):
        path = ROOT / "configs" / "testbed" / f"{name}.yaml"
        overrides = [f"model.path={model_path}", f"run.seed={seed}", f"run.output_dir={out / 'runs'}"]
        overrides += (
            [f"learner.steps={steps}", f"learner.solve_window_steps={min(steps, 10)}"] if steps else []
        )
        data = load_config(path).data  # the configs name files under the default --out: follow --out
        for key in ("source", "easy_source"):
            value = getattr(data, key)
            if value and value.startswith(CONFIG_DATA_DIR):
                overrides.append(f"data.{key}={data_dir / value.removeprefix(CONFIG_DATA_DIR)}")
        return load_config(path, [*overrides, *extra])

    eval_config = config_for("grpo_hard", 1234, model, ("run.run_id=reproduce-eval",))  # one seed for all
    started_ray = _start_ray(eval_config)
    state = {"command": "python scripts/reproduce.py " + " ".join(argv or sys.argv[1:]), "seeds": seeds}
    state.update(model=str(model.relative_to(ROOT) if model.is_relative_to(ROOT) else model))
    try:
        # 2. filter-hard, find-prefixes, base-model properties, SFT traces: one pool on the base model
        t = time.monotonic()
        with GenerationPool(eval_config, str(model)) as pool:
            easy = load(splits["easy"])
            easy_table = method.evaluate(
                pool, {"easy": easy}, eval_config, EVAL_N, [1, EVAL_N], out / "base_eval_easy"
            )
            filtered = method.filter_hard(
                pool, load(splits["hard"]), eval_config, FILTER_K, data_dir / "hard.filtered.jsonl"
            )
            log(f"filter-hard: {filtered}")
            hard = load(data_dir / "hard.filtered.jsonl")
            prefixes = method.find_prefixes(
                pool, hard, eval_config, PREFIX_N, data_dir / "hard.prefixes.jsonl"
            )
            log(f"find-prefixes: {prefixes}")
            hard = load(data_dir / "hard.prefixes.jsonl")
            base = dict(num_easy=len(easy), num_hard_raw=num_hard, num_hard=len(hard), filter=filtered)
            base.update(easy=easy_table["easy"]["pass_at_k"], prefixes=prefixes)
            hist: dict[int, int] = {}
            for p in hard:
                hist[p.prefix_units] = hist.get(p.prefix_units, 0) + 1
            base["prefix_hist"] = dict(sorted(hist.items()))
            if not args.quick:
                base["hard_pass64"] = method.evaluate(
                    pool, {"hard": hard}, eval_config, 64, [64], out / "base_eval64"
                )["hard"]["pass_at_k"]["64"]
            traces = guided_traces(pool, hard, eval_config, seeds, 8) if "sft_rl" in names else {}
        with GenerationPool(eval_config, str(model)) as pool:  # a fresh pool: the checkpoints' samples
            base["diag"] = diagnose(
                pool, hard, easy[:16], eval_config, out / "base_eval_hard", EVAL_N, DIAG_N
            )
        state["base"] = base
        log(f"base model: {json.dumps(base)[:600]}")
        write_pope_easy_source(data_dir / "hard.prefixes.jsonl", data_dir / "hard.pope_easy.jsonl")
        timings["base_measurements_s"] = time.monotonic() - t

        # 3. SFT checkpoints for the SFT-then-RL baseline
        t = time.monotonic()
        start_models = {seed: model for seed in seeds}
        sft_models = sft_per_seed(model, traces, out, log)
        timings["sft_s"] = time.monotonic() - t

        # 4. every experiment x seed, then 5. its checkpoint's evaluation
        results: dict[str, list[dict]] = {name: [] for name in names}
        t_train = t_eval = 0.0
        for name in names:
            for seed in seeds[:1] if name == "pope_long" else seeds:
                start = sft_models.get(seed, model) if name == "sft_rl" else start_models[seed]
                run_id = f"{name}-s{seed}"
                extra = (f"learner.steps={LONG_STEPS}",) if name == "pope_long" else ()
                config = config_for(name.removesuffix("_long"), seed, start, (f"run.run_id={run_id}", *extra))
                record: dict = {"seed": seed, "run_id": run_id}
                results[name].append(record)
                t = time.monotonic()
                log(f"train {run_id}")
                try:
                    with open(out / f"{run_id}.log", "w") as handle:
                        summary = train(config, printer=lambda m, h=handle: print(m, file=h, flush=True))
                except (
                    ComponentFailed,
                    RuntimeError,
                    OSError,
                ) as exc:  # deliberate: one failed run is reported
                    record["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                    log(f"{run_id} failed: {record['error']}")
                    continue
                finally:
                    t_train += time.monotonic() - t
                run_dir = Path(summary["run_dir"])
                record["train_wall_s"] = summary["wall_s"]["total_s"]
                record["curves"] = curves(run_dir, len(hard), config.learner.solve_window_steps)
                tail = [e for e in record["curves"]["entropy"][-3:] if e == e]
                record["final_entropy"] = sum(tail) / len(tail) if tail else float("nan")
                t = time.monotonic()
                with GenerationPool(eval_config, str(run_dir / "checkpoint")) as pool:
                    record["diag"] = diagnose(
                        pool, hard, easy[:16], eval_config, run_dir / "eval_hard", EVAL_N, DIAG_N
                    )
                t_eval += time.monotonic() - t
                log(f"{run_id}: unguided pass@{EVAL_N} {record['diag'][f'pass@{EVAL_N}']:.3f}")
                (out / "results.json").write_text(json.dumps({"base": base, "results": results}, indent=2))
        timings["train_s"], timings["eval_s"] = t_train, t_eval
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    state["steps"] = steps or load_config(ROOT / "configs" / "testbed" / "pope.yaml").learner.steps
    timings["total_s"] = time.monotonic() - t_start
    state["timings"] = timings
    report_path = (
        out / "RESULTS.quick.md" if args.quick and args.report == "RESULTS.md" else ROOT / args.report
    )
    plots = plot(results, report_path.parent / "results")
    report(state, results, plots, report_path)
    log(f"wrote {report_path} in {timings['total_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
