"""The v2 testbed end to end (results/v2_preregistration.md): the paper's comparison, the ablations and
every pre-registered prediction, written up in RESULTS.md's v2 block.

    splits + base model (experiments.testbed_v2) ──> i* on train_hard (the gates' file when it was made
        on this model at this budget, else orchestrator.method.find_prefixes through the actor pool)
        ──> the base model measured (below) ──> correct guided traces ──> SFT per seed (sft_rl)
        ──> every config x seed through orchestrator.launcher.train (configs/testbed_v2/*.yaml), seed 0
            of every config first; a config whose seed-0 checkpoint is bit-identical to its start model
            trained nothing, so it gets that one seed
        ──> each final checkpoint measured like the base model, in a fresh pool (the same sampling seeds);
            P6's carry-over (scripts/testbed_v2_gates.carry_over) on POPE's checkpoints
        ──> results/v2_results.json (each prediction held / failed, with its numbers), RESULTS.md between
            its v2 markers, results/v2_hard_solved.png

Measured per checkpoint, per arm, at the budget B* of configs/testbed_v2/pope.yaml (assistant start):
unguided pass@1 / pass@8 on train_hard and heldout_hard; guided success at i* on train_hard; from the
same unguided samples (no extra sampling): reach (3 top locks opened), first tries at the top (the
oracle's key: memorised instances) and in the descent (key 1: the skill), correct answers that do not
follow from the trace (memorised); easy pass@1; mean token entropy (metrics.jsonl, last 3 steps).

``--quick``: the pilot model (PILOT_SPEC), 1 seed, 3 steps, 2 problems per arm, tiny samples: a plumbing
check, never a result; its report goes under --out, never to RESULTS.md or results/.
``--time-3-steps``: every config for 3 learner steps and one base evaluation, timed, and the full run
projected (<out>/timing.json). Any training on the real base model, timing included, is refused until
results/v2_preregistration.md is committed with no local changes and the gates script's gates.json
shows G1-G6 passed on this model at this budget (TESTBED.md principle 5; ``--despite-failed-gates``
overrides the second, and the report says so).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from experiments import testbed_v2 as tb  # noqa: E402
from scripts.reproduce import guided_traces, machine, sft_per_seed  # noqa: E402  (also sets Ray's env defaults)

METHODS = {  # configs/testbed_v2/<name>.yaml -> label: the paper's comparison
    "grpo_hard": "GRPO, hard only",
    "grpo_hard_easy": "GRPO, hard + easy",
    "entropy": "GRPO + entropy bonus",
    "clip_higher": "GRPO + clip-higher",
    "passk": "pass@k objective",
    "sft_rl": "SFT on guided traces, then GRPO",
    "pope": "POPE",
    "pope_easy": "POPE + easy",
}
ABLATIONS = {
    "pope_user_end": "A1: POPE, prefix at the user end (trained at B*+47)",
    "pope_long": "A1 control: POPE, assistant start (trained at B*+47)",
    "pope_guided_only": "A2: POPE, guided half only",
    "grpo_budget": "A3: GRPO hard, long training budget",
}
EXPERIMENTS = {**METHODS, **ABLATIONS}
ARMS = tuple(tb.ARMS)
SPLITS = ("train_hard", "heldout_hard")
CONFIG_DIR = ROOT / "configs" / "testbed_v2"
CONFIG_DATA_DIR = "runs/testbed_v2/data/"  # where the configs expect the data files
EVAL_CONFIG = "pope"  # evaluation at its budget (B*) and prompt settings
P6_CONFIGS = ("pope",)
# every seed fully measured (held-out, guided, easy) only where a prediction reads it (P4, P5, A2);
# the others' seeds after the first: unguided train_hard (TESTBED.md: full diagnostics for seed 0 only)
FULL_EVAL_CONFIGS = ("pope", "sft_rl", "pope_guided_only")
PREREG = "results/v2_preregistration.md"
UNGUIDED_COPY = "~u"  # id suffix of the unguided copies in a *.pope_easy.jsonl source (v1's layout)
START, END = "<!-- v2: start -->", "<!-- v2: end -->"
DEFAULT_TIMING = {"setup_s": 60.0, "step_s": 8.0, "eval_s": 150.0, "p6_s": 90.0}  # before any measurement


@dataclass(frozen=True)
class Sizes:
    per_arm: int | None  # problems per arm in each hard split (None: all 12)
    easy_eval: int  # easy problems evaluated (all are trained on)
    n_eval: int = 8  # unguided samples per problem: pass@1, pass@8 (so at least 8)
    n_guided: int = 8  # guided samples at i*
    n_easy: int = 4
    n_prefix: int = 8  # find-prefixes (the gates' n)
    n_sft: int = 8  # guided samples per problem and seed for the SFT traces
    n_carry: int = 8  # P6: continuations per reached state (the gates' n)
    steps: int | None = None  # learner steps; None: the configs' (30)


FULL = Sizes(per_arm=None, easy_eval=16)
QUICK = Sizes(per_arm=2, easy_eval=4, n_guided=2, n_easy=2, n_prefix=4, n_sft=2, n_carry=2, steps=3)


def log(message: str) -> None:
    print(f"[reproduce_v2 {time.strftime('%H:%M:%S')}] {message}", flush=True)


def read_rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def load(path: Path):
    from pope.datasets import FieldMap, load_file

    return load_file(path, FieldMap(id="id"))[0]


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def prereg_commit() -> tuple[str, bool]:
    """(the pre-registration's last commit, whether it is committed with no local changes)."""
    commit = git("log", "-1", "--format=%h", "--", PREREG)
    return commit, bool(commit) and not git("status", "--porcelain", "--", PREREG)


# ---- data ----


def write_data(data_dir: Path, per_arm: int | None) -> dict[str, list[dict]]:
    """Every split of experiments.testbed_v2 (seed 0) as <split>.jsonl; ``per_arm`` keeps the first
    problems of each arm (and 4x as many easy ones)."""
    rows = {}
    for name, instances in tb.make_splits(0).items():
        if per_arm is not None:
            limit = 4 * per_arm if name == "easy" else per_arm
            kept, seen = [], Counter()
            for instance in instances:
                seen[instance.arm] += 1
                if seen[instance.arm] <= limit:
                    kept.append(instance)
            instances = kept
        rows[name] = [tb.problem_row(i) for i in instances]
        write_rows(data_dir / f"{name}.jsonl", rows[name])
    return rows


def gates_prefixes(gates_dir: Path, model: Path, budget: int) -> tuple[Path | None, dict | None, str]:
    """The gates' train_hard.prefixes.jsonl when its gates.json was made on ``model`` at ``budget``."""
    path, report = gates_dir / "train_hard.prefixes.jsonl", gates_dir / "gates.json"
    if not (path.is_file() and report.is_file()):
        return None, None, f"no {path} with its gates.json"
    gates = json.loads(report.read_text())
    if Path(gates.get("model", "")).resolve() != model.resolve():
        return None, gates, f"{report} was made on {gates.get('model')}, not {model}"
    used = gates.get("budget", {}).get("used")
    if used != budget:
        return None, gates, f"{report} used budget {used}, the configs {budget}: i* is stale"
    return path, gates, f"from {path}"


def failed_gates(gates: dict | None, model: Path, budget: int) -> list[str]:
    """What stands between this base model and RL: G1-G6 as the gates script judged them on ``model`` at
    ``budget`` (results/v2_preregistration.md: every gate passes before any RL run)."""
    if gates is None or Path(gates.get("model", "")).resolve() != model.resolve():
        return [f"no gates.json of {model}"]
    if gates.get("budget", {}).get("used") != budget:
        return [f"gates.json used budget {gates.get('budget', {}).get('used')}, the configs {budget}"]
    failed = []
    for gate in ("G1", "G2", "G3", "G4", "G5", "G6"):
        report = gates.get(gate, {})
        verdicts = [report["pass"]] if "pass" in report else []
        verdicts += [v["pass"] for v in report.values() if isinstance(v, dict) and "pass" in v]
        if not verdicts or not all(verdicts):
            failed.append(gate)
    return failed


def prepare_prefixes(pool, config, rows, data_dir: Path, source: Path | None, n: int) -> dict:
    """train_hard with i* at ``data_dir``/train_hard.prefixes.jsonl (with each row's arm)."""
    from orchestrator import method

    target = data_dir / "train_hard.prefixes.jsonl"
    by_id = {r["id"]: r for r in rows["train_hard"]}
    if source is not None:
        write_rows(target, [r for r in read_rows(source) if r["id"] in by_id])
        how = f"scripts/testbed_v2_gates.py ({source})"
    else:
        stats = method.find_prefixes(pool, load(data_dir / "train_hard.jsonl"), config, n, target)
        write_rows(target, [{**by_id[r["id"]], **r} for r in read_rows(target)])
        how = (
            f"orchestrator.method.find_prefixes, n={n}: {stats['found']} found, {stats['fallback']} fallback"
        )
    hist = {arm: Counter() for arm in ARMS}
    fallback = 0
    for row in read_rows(target):
        hist[row["arm"]][row["pope_prefix_units"]] += 1
        fallback += bool(row.get("pope_prefix_fallback"))
    return {
        "how": how,
        "fallback": fallback,
        "histogram": {a: {str(k): v for k, v in sorted(h.items())} for a, h in hist.items()},
    }


def write_pope_easy_source(prefixes: Path, out: Path) -> Path:
    """Each hard row twice, with its solution (asked guided under mix=guided_easy) and without (asked
    unguided): the layout a config still on v1's mix reads."""
    rows = read_rows(prefixes)
    copies = [{**r, "id": r["id"] + UNGUIDED_COPY, "solution": "", "pope_prefix_units": None} for r in rows]
    return write_rows(out, rows + copies)


# ---- measurements through the actor pool ----


def generate(pool, specs, config, n: int) -> list[list[tuple[str, int, float]]]:
    """``n`` (text, tokens, reward) per prompt spec, at the config's budget."""
    from pope.prompts import render_prompt

    prompts = [render_prompt(pool.tokenizer, s, config.data) for s in specs]
    groups = pool.generate(prompts, n, config.actors.max_new_tokens)
    pairs = [(s.problem.answer, text) for s, g in zip(specs, groups, strict=True) for text, _ in g]
    rewards = iter(pool.score(pairs))
    return [[(text, tokens, next(rewards)) for text, tokens in g] for g in groups]


def unguided_stats(problems, groups, arm_of: dict[str, str]) -> dict:
    """Per arm: pass@1, pass@8 (unbiased, from n samples), and trace diagnostics of the same samples."""
    from pope.passk import pass_at_k

    out = {}
    for arm in ARMS:
        mine = [(p, g) for p, g in zip(problems, groups, strict=True) if arm_of[p.problem_id] == arm]
        if not mine:
            continue
        n = len(mine[0][1])
        counts = [sum(r > 0 for _, _, r in g) for _, g in mine]
        tally = Counter()
        for problem, group in mine:
            locks = tb.locks_of(problem)
            for text, tokens, reward in group:
                trace = tb.parse_trace(text)
                tally["samples"] += 1
                tally["tokens"] += tokens
                tally["reach"] += trace.top_end_char(locks) is not None
                tally["correct"] += reward > 0
                tally["correct_inconsistent"] += reward > 0 and not trace.consistent()
                for index, line in enumerate(trace.lines[: len(locks)]):
                    if not line.tries:
                        continue
                    part = "top" if index < tb.NUM_TOP else "descent"
                    tally[f"{part}_lines"] += 1
                    tally[f"{part}_first_oracle"] += line.tries[0].key == locks[index].key
                    tally[f"{part}_first_key1"] += line.tries[0].key == 1
        out[arm] = {
            "problems": len(mine),
            "n": n,
            "pass@1": sum(pass_at_k(n, c, 1) for c in counts) / len(counts),
            "pass@8": sum(pass_at_k(n, c, 8) for c in counts) / len(counts),
            "correct": counts,
            "mean_tokens": tally["tokens"] / tally["samples"],
            "reach_top": tally["reach"] / tally["samples"],
            "inconsistent_of_correct": tally["correct_inconsistent"] / max(1, tally["correct"]),
            **{f"{part}_first_{what}": tally[f"{part}_first_{what}"] / max(1, tally[f"{part}_lines"])
               for part in ("top", "descent") for what in ("oracle", "key1")},
        }  # fmt: skip
    return out


def measure(pool, config, sets: dict, arm_of: dict[str, str], sizes: Sizes, full: bool = True):
    """Every per-checkpoint number (``full``; else unguided train_hard only: what every prediction
    reads for every seed); and the unguided train_hard samples, which P6 reuses."""
    from pope.prompts import PromptSpec

    def unguided(problems, n):
        return generate(pool, [PromptSpec(p, "unguided", 0) for p in problems], config, n)

    out: dict = {}
    t = time.monotonic()
    train_groups = unguided(sets["train_hard"], sizes.n_eval)
    out["train_hard"] = unguided_stats(sets["train_hard"], train_groups, arm_of)
    if not full:
        out["unguided_s"] = time.monotonic() - t
        return out, train_groups
    out["heldout_hard"] = unguided_stats(
        sets["heldout_hard"], unguided(sets["heldout_hard"], sizes.n_eval), arm_of
    )
    out["unguided_s"] = time.monotonic() - t
    t = time.monotonic()
    hard = sets["train_hard"]
    groups = generate(pool, [PromptSpec(p, "guided", p.prefix_units) for p in hard], config, sizes.n_guided)
    guided = {
        arm: statistics.mean(
            sum(r > 0 for *_, r in g) / len(g) for p, g in zip(hard, groups, strict=True) if arm_of[p.problem_id] == arm
        )
        for arm in ARMS
    }  # fmt: skip
    out["guided_at_i*"] = {**guided, "pooled": statistics.mean(guided.values())}
    out["guided_s"] = time.monotonic() - t
    groups = unguided(sets["easy"][: sizes.easy_eval], sizes.n_easy)
    out["easy_pass@1"] = statistics.mean(sum(r > 0 for *_, r in g) / len(g) for g in groups)
    return out, train_groups


def carry(model_dir: Path, instances, groups, budget: int, n: int, seed: int) -> dict:
    """P6 through the gates' carry_over, on the unguided samples measure() drew (no new search)."""
    from scripts.testbed_v2_gates import Sample, Sampler, carry_over

    sampler = Sampler(model_dir, batch_rows=64, seed=seed)
    unguided = [[Sample(text, tokens, reward > 0) for text, tokens, reward in g] for g in groups]
    per_arm = carry_over(sampler, instances, unguided, budget, n)
    states = sum(v.get("states", 0) for v in per_arm.values())
    own = sum(v["own"] * v["states"] for v in per_arm.values() if v.get("states")) / max(1, states)
    oracle = sum(v["oracle"] * v["states"] for v in per_arm.values() if v.get("states")) / max(1, states)
    pooled = {"states": states, "own": own, "oracle": oracle, "ratio": own / oracle if oracle else math.nan}
    return {**per_arm, "pooled": pooled}


def same_weights(a: Path, b: Path) -> bool:
    """Every tensor of the two model folders equal, bit for bit (a tied lm_head may be in one only)."""
    import torch
    from safetensors.torch import load_file

    def tensors(folder: Path) -> dict:
        out = {}
        for f in sorted(Path(folder).glob("*.safetensors")):
            out.update(load_file(f))
        return out

    x, y = tensors(a), tensors(b)
    if not x or (set(x) ^ set(y)) - {"lm_head.weight"}:
        return False
    return all(x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]) for k in set(x) & set(y))


# ---- curves over learner steps ----


def curves(run_dir: Path, arm_of: dict[str, str], window: int) -> dict:
    """Per step, per arm: the share of the arm's train_hard problems solved unguided in the trailing
    ``window`` steps (lineage of metrics.jsonl; the learner's hard_solved_unguided_fraction per arm);
    and the entropy and mean guided reward."""
    sizes = Counter(arm_of.values())
    out: dict = {"step": [], "entropy": [], "reward_guided": [], "hard_solved": {a: [] for a in sizes}}
    history: list[tuple[int, str, bool]] = []
    for line in read_rows(run_dir / "metrics.jsonl"):
        step = line["step"]
        history += [
            (step, g["problem_id"].removesuffix(UNGUIDED_COPY), max(g["rewards"]) > 0)
            for g in line["groups"]
            if g["variant"] == "unguided"
        ]
        solved = {pid for s, pid, ok in history if ok and s > step - window and pid in arm_of}
        out["step"].append(step)
        out["entropy"].append(line.get("entropy", math.nan))
        out["reward_guided"].append(line.get("reward_mean_guided", math.nan))
        for arm, total in sizes.items():
            out["hard_solved"][arm].append(sum(arm_of[p] == arm for p in solved) / total)
    return out


TRAIN_BUDGET_NOTE = {"pope_user_end": "B*+47", "pope_long": "B*+47", "grpo_budget": "A3's budget"}


def plot(results: dict, path: Path) -> Path | None:
    """Per arm, the share of train_hard problems solved unguided in the learner's trailing window, at
    each config's training budget (A1's and A3's are longer than B*: their curves are not at B*)."""
    try:
        import matplotlib
    except ImportError:  # deliberate: the numbers do not need the plot (make reproduce installs it)
        log("matplotlib is not installed: no plot (pip install -e '.[reproduce]')")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ARMS), figsize=(5 * len(ARMS), 4), sharey=True)
    colors = plt.get_cmap("tab20").colors  # one color and style per config: twelve lines must stay apart
    for ax, arm in zip(axes, ARMS, strict=True):
        for index, (name, runs) in enumerate(results.items()):
            series = [r["curves"]["hard_solved"][arm] for r in runs if r.get("curves")]
            if not series:
                continue
            length = min(len(s) for s in series)
            mean = [statistics.mean(s[i] for s in series) for i in range(length)]
            style = {
                "color": colors[(2 * index) % 20 + (index >= 10)],
                "linestyle": ("-", "--", ":")[index % 3],
            }
            label = f"{name} ({len(series)})" + (
                f", trained at {TRAIN_BUDGET_NOTE[name]}" if name in TRAIN_BUDGET_NOTE else ""
            )
            line = ax.plot(range(1, length + 1), mean, label=label, **style)[0]
            if len(series) > 1:
                low = [min(s[i] for s in series) for i in range(length)]
                high = [max(s[i] for s in series) for i in range(length)]
                ax.fill_between(range(1, length + 1), low, high, alpha=0.12, color=line.get_color())
        ax.set_title(f"{arm}: solved unguided while training", fontsize=10)
        ax.set_xlabel("learner step")
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("share of the arm's problems")
    axes[-1].legend(fontsize=7, title="config (seeds)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---- over seeds, and the pre-registered predictions ----


def values(runs: list[dict], get) -> list[float]:
    return [v for v in (get(r) for r in runs if r.get("eval")) if v is not None and v == v]


def mean_of(runs, get) -> float | None:
    found = values(runs, get)
    return statistics.mean(found) if found else None


def cell(runs, get) -> str:
    found = values(runs, get)
    if not found:
        return "n/a"
    if len(found) == 1:
        return f"{found[0]:.3f}"
    return f"{statistics.mean(found):.3f} ± {statistics.stdev(found):.3f}"


def pass8(split: str, arm: str):
    return lambda r: r["eval"].get(split, {}).get(arm, {}).get("pass@8")


def ge(a: float, b: float) -> bool:
    """a >= b, a tie counted as held: means of counts over 12 problems land exactly on thresholds."""
    return a >= b - 1e-9


def le(a: float, b: float) -> bool:
    return a <= b + 1e-9


def judge(base: dict, runs: dict[str, list[dict]], g0: float | None) -> list[dict]:
    """Every prediction of results/v2_preregistration.md: held (True/False) or None (a run is missing),
    with the numbers it was judged on (means over seeds)."""
    out = []

    def add(pid, claim, numbers, held, note=""):
        missing = any(v is None for v in numbers.values()) or held is None
        out.append({"id": pid, "claim": claim, "numbers": numbers, "held": None if missing else bool(held),
                    "note": note})  # fmt: skip

    def per_arm(name, split="train_hard"):
        return {f"{name} {split} {arm}": mean_of(runs.get(name, []), pass8(split, arm)) for arm in ARMS}

    def all_below(numbers, limit):
        return None if None in numbers.values() else all(le(v, limit) for v in numbers.values())

    for pid, names, limit in (("P1", ("grpo_hard", "clip_higher", "passk"), 0.02), ("P2", ("entropy",), 0.02),
                              ("P3", ("grpo_hard_easy",), 0.05)):  # fmt: skip
        for name in names:
            numbers = per_arm(name)
            add(f"{pid} ({name})", f"{name}: unguided pass@8 <= {limit} in every arm", numbers,
                all_below(numbers, limit))  # fmt: skip
    pope = runs.get("pope", [])
    guided = mean_of(pope, lambda r: r["eval"].get("guided_at_i*", {}).get("pooled"))
    a = {"g0 (base guided success at i*)": g0, "POPE guided success at i*": guided}
    add("P4(a)", "POPE guided success at i* >= g0 + 0.3 (pooled over arms)", a,
        None if None in a.values() else ge(guided, g0 + 0.3))  # fmt: skip
    shared, unshared, blind = (mean_of(pope, pass8("train_hard", arm)) for arm in ARMS)
    held_shared = mean_of(pope, pass8("heldout_hard", "H-shared"))
    add(
        "P4(b)",
        "POPE H-unshared >= 0.15",
        {"H-unshared": unshared},
        unshared is not None and ge(unshared, 0.15),
    )
    add("P4(c)", "POPE H-shared >= H-unshared + 0.1", {"H-shared": shared, "H-unshared": unshared},
        None if None in (shared, unshared) else ge(shared, unshared + 0.1))  # fmt: skip
    add("P4(d)", "POPE H-blind <= 0.1", {"H-blind": blind}, blind is not None and le(blind, 0.1))
    add("P4(e)", "POPE held-out H-shared within 0.15 of train H-shared",
        {"train H-shared": shared, "heldout H-shared": held_shared},
        None if None in (shared, held_shared) else le(abs(held_shared - shared), 0.15))  # fmt: skip
    sft_runs = runs.get("sft_rl", [])
    numbers = {f"train {arm}": mean_of(sft_runs, pass8("train_hard", arm)) for arm in ARMS}
    numbers.update({f"heldout {arm}": mean_of(sft_runs, pass8("heldout_hard", arm)) for arm in ARMS})
    numbers.update({f"base train {arm}": base["train_hard"][arm]["pass@8"] for arm in ARMS})
    numbers.update({f"base heldout {arm}": base["heldout_hard"][arm]["pass@8"] for arm in ARMS})
    t_blind, h_blind = numbers["train H-blind"], numbers["heldout H-blind"]
    add("P5", "SFT then GRPO: train H-blind >= 0.2 and held-out H-blind <= 0.1", numbers,
        None if None in (t_blind, h_blind) else ge(t_blind, 0.2) and le(h_blind, 0.1),
        "judged on its quantified clauses; 'large train gains in every arm' is read off the base rows")  # fmt: skip
    own = mean_of(pope, lambda r: (r.get("p6") or {}).get("pooled", {}).get("own"))
    oracle = mean_of(pope, lambda r: (r.get("p6") or {}).get("pooled", {}).get("oracle"))
    states = mean_of(pope, lambda r: (r.get("p6") or {}).get("pooled", {}).get("states"))
    ratio = own / oracle if own is not None and oracle else None
    add("P6", "after POPE: success from own top states >= 0.8 x from the oracle's top lines",
        {"own": own, "oracle": oracle, "ratio": ratio, "states per seed": states},
        None if ratio is None or not states else ge(ratio, 0.8),
        "pooled over the arms' reached states, ratio of the means over seeds")  # fmt: skip
    verdict = {v["id"]: v["held"] for v in out}
    parts = [verdict["P4(a)"], verdict["P4(b)"], verdict["P4(c)"], verdict["P6"]]
    add("falsified", "falsified iff P4(a) holds but P4(b), P4(c) or P6 fails",
        {"P4(a)": verdict["P4(a)"], "P4(b)": verdict["P4(b)"], "P4(c)": verdict["P4(c)"], "P6": verdict["P6"]},
        None if None in parts else parts[0] and not all(parts[1:]))  # fmt: skip
    ue = mean_of(runs.get("pope_user_end", []), pass8("train_hard", "H-shared"))
    ctl = mean_of(runs.get("pope_long", []), pass8("train_hard", "H-shared"))
    add("A1", "user-end H-shared pass@8 >= assistant-start (same training budget)",
        {"pope_user_end": ue, "pope_long": ctl}, None if None in (ue, ctl) else ge(ue, ctl))  # fmt: skip
    go = runs.get("pope_guided_only", [])
    numbers = {f"{who} {arm}": mean_of(r, pass8("train_hard", arm)) for who, r in (("guided_only", go), ("pope", pope))
               for arm in ("H-shared", "H-unshared")}  # fmt: skip
    numbers["guided_only guided at i*"] = mean_of(
        go, lambda r: r["eval"].get("guided_at_i*", {}).get("pooled")
    )
    numbers["pope guided at i*"] = guided
    add("A2", "guided-only: H-shared and H-unshared within 0.1 of POPE's, guided success >= POPE's", numbers,
        None if None in numbers.values() else all(
            le(abs(numbers[f"guided_only {a}"] - numbers[f"pope {a}"]), 0.1) for a in ("H-shared", "H-unshared"))
        and ge(numbers["guided_only guided at i*"], guided))  # fmt: skip
    numbers = per_arm("grpo_budget")
    out.append({"id": "A3", "claim": "GRPO at a long training budget vs POPE (a question, no direction)",
                "numbers": {**numbers, **{f"pope train_hard {a}": mean_of(pope, pass8('train_hard', a)) for a in ARMS}},
                "held": None, "note": "reported, not judged"})  # fmt: skip
    return out


# ---- the report ----


def fmt(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown(state: dict) -> str:
    runs, base = state["runs"], state["base"]
    commit = state["prereg_commit"] or "NOT COMMITTED"
    lines = [
        START,
        "# Results v2: the locks testbed (results/v2_preregistration.md)",
        "",
        *(["**QUICK: a plumbing check on the pilot model, not a result.**", ""] if state["quick"] else []),
        f"Pre-registration: `{PREREG}` at commit {commit}.  ",
        *(
            [f"**Trained despite failed gates: {', '.join(state['failed_gates'])}.**  "]
            if state["failed_gates"]
            else []
        ),
        f"Command: `{state['command']}`  ",
        f"Machine: {machine()}  ",
        f"Finished {state['finished']}; took {state['timings']['total_s'] / 60:.1f} min "
        f"({', '.join(f'{k} {v / 60:.1f}' for k, v in state['timings'].items() if k != 'total_s')} min).  ",
        f"Base model `{state['model']}`; budget B* = {state['budget']} new tokens (configs/testbed_v2/pope.yaml); "
        f"seeds {state['seeds']} (ablations {state['ablation_seeds']}), {state['steps']} learner steps; "
        f"samples {state['sizes']}; every seed of {', '.join(FULL_EVAL_CONFIGS)} and the first of the others "
        "fully measured, the other seeds on unguided train_hard only.  ",
        f"i*: {state['prefixes']['how']}; per arm {state['prefixes']['histogram']}, "
        f"{state['prefixes']['fallback']} fallback.",
        "",
        "## Pre-registered predictions (unguided pass@8 on train_hard unless said, means over seeds)",
        "",
        "| id | claim | held | numbers |",
        "|---|---|---|---|",
    ]
    for p in state["predictions"]:
        numbers = ", ".join(f"{k} {fmt(v)}" for k, v in p["numbers"].items())
        note = f" ({p['note']})" if p["note"] else ""
        lines.append(f"| {p['id']} | {p['claim']} | {fmt(p['held'])} | {numbers}{note} |")
    for metric in ("pass@8", "pass@1"):
        lines += ["", f"## Unguided {metric} per arm (mean ± sd over seeds; n={state['sizes']['n_eval']})", "",
                  "| config | seeds | " + " | ".join(f"{s.split('_')[0]} {a}" for s in SPLITS for a in ARMS)
                  + " | guided at i* | entropy |", "|---" * (3 + 2 * len(ARMS) + 1) + "|"]  # fmt: skip
        rows = [("base model", [{"eval": base}])] + [(n, r) for n, r in runs.items()]
        for name, group in rows:
            cells = [
                cell(group, lambda r, s=s, a=a, m=metric: r["eval"].get(s, {}).get(a, {}).get(m))
                for s in SPLITS
                for a in ARMS
            ]
            cells.append(cell(group, lambda r: r["eval"].get("guided_at_i*", {}).get("pooled")))
            cells.append(cell(group, lambda r: r.get("final_entropy")))
            ok = sum(1 for r in group if r.get("eval"))
            lines.append(f"| {name} | {ok}/{len(group)} | " + " | ".join(cells) + " |")
    lines += ["", "## Diagnostics of the same unguided train_hard samples (mean over seeds, per arm "
              "H-shared / H-unshared / H-blind)", "",
              "| config | reach top | top first try = oracle key | descent first try = key 1 | correct but "
              "inconsistent | easy pass@1 | start weights unchanged |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, group in [("base model", [{"eval": base}])] + list(runs.items()):
        cells = [
            " / ".join(
                cell(group, lambda r, a=a, k=k: r["eval"]["train_hard"].get(a, {}).get(k)) for a in ARMS
            )
            for k in ("reach_top", "top_first_oracle", "descent_first_key1", "inconsistent_of_correct")
        ]
        cells.append(cell(group, lambda r: r["eval"].get("easy_pass@1")))
        cells.append(", ".join(str(r.get("identical_to_start", "-")) for r in group))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    notes = [f"- {n}: {r['seed_note']}" for n, rs in runs.items() for r in rs[:1] if r.get("seed_note")]
    notes += [
        f"- {n} seed {r['seed']} failed: {r['error']}" for n, rs in runs.items() for r in rs if r.get("error")
    ]
    if notes:
        lines += ["", "Notes:", "", *notes]
    if state.get("plot"):
        lines += [
            "",
            "## Train_hard solved unguided over learner steps, per arm",
            "",
            f"![v2]({state['plot']})",
        ]
    lines += ["", "Below: v1 (the digit-chain testbed), the documented negative result.", "", END]
    return "\n".join(lines)


def write_block(path: Path, block: str) -> None:
    """The v2 block between its markers; inserted at the top when absent (v1's content stays below)."""
    old = path.read_text() if path.is_file() else ""
    if START in old and END in old:
        head, rest = old.split(START, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = block + "\n\n" + old
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# ---- the pipeline ----


class Runner:
    """Configs resolved against --out; one training run and its measurement."""

    def __init__(self, out: Path, data_dir: Path, sizes: Sizes, printer=log):
        self.out, self.data_dir, self.sizes, self.log = out, data_dir, sizes, printer

    def config(self, name: str, seed: int, model: Path, *extra: str, steps: int | None = None):
        from pope.config import load_config

        path = CONFIG_DIR / f"{name}.yaml"
        steps = steps or self.sizes.steps
        overrides = [f"model.path={model}", f"run.seed={seed}", f"run.output_dir={self.out / 'runs'}",
                     "checkpoint.save_final=true"]  # fmt: skip
        if steps:
            overrides += [f"learner.steps={steps}", f"learner.solve_window_steps={min(steps, 10)}"]
        data = load_config(path).data
        for key in ("source", "easy_source"):
            value = getattr(data, key)
            if value and value.startswith(CONFIG_DATA_DIR):
                overrides.append(f"data.{key}={self.data_dir / value.removeprefix(CONFIG_DATA_DIR)}")
        return load_config(path, [*overrides, *extra])

    def train(self, config) -> dict:
        from orchestrator.launcher import train

        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        with open(self.out / "logs" / f"{config.run.run_id}.log", "w") as handle:
            return train(config, printer=lambda m: print(m, file=handle, flush=True))


def run_one(runner: Runner, name, seed, start: Path, ctx: dict, full: bool) -> dict:
    """Train one config x seed, then measure its checkpoint; a failed run is recorded, not raised."""
    from orchestrator.launcher import ComponentFailed
    from orchestrator.pool import GenerationPool

    run_id = f"v2-{name}-s{seed}"
    cached = runner.out / "records" / f"{run_id}.json"
    if ctx["resume"] and cached.is_file():
        record = json.loads(cached.read_text())
        if record.get("eval"):
            runner.log(f"{run_id}: kept from {cached}")
            return record
    config = runner.config(name, seed, start, f"run.run_id={run_id}")
    record: dict = {"seed": seed, "run_id": run_id, "start_model": str(start)}
    t = time.monotonic()
    runner.log(f"train {run_id} ({config.learner.steps} steps, budget {config.actors.max_new_tokens})")
    try:
        summary = runner.train(config)
    except (ComponentFailed, RuntimeError, OSError) as exc:  # deliberate: one failed run is reported
        record["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        runner.log(f"{run_id} failed: {record['error']}")
        return record
    finally:
        ctx["timings"]["train_s"] += time.monotonic() - t
    run_dir = Path(summary["run_dir"])
    record["train_wall_s"] = summary["wall_s"]["total_s"]
    record["curves"] = curves(run_dir, ctx["arm_of_train"], config.learner.solve_window_steps)
    tail = [e for e in record["curves"]["entropy"][-3:] if e == e]
    record["final_entropy"] = statistics.mean(tail) if tail else None
    record["identical_to_start"] = same_weights(run_dir / "checkpoint", start)
    t = time.monotonic()
    with GenerationPool(ctx["eval_config"], str(run_dir / "checkpoint")) as pool:
        record["eval"], groups = measure(
            pool, ctx["eval_config"], ctx["sets"], ctx["arm_of"], runner.sizes, full
        )
    if name in P6_CONFIGS:
        record["p6"] = carry(run_dir / "checkpoint", ctx["instances"], groups, ctx["budget"],
                             runner.sizes.n_carry, seed)  # fmt: skip
    ctx["timings"]["eval_s"] += time.monotonic() - t
    runner.log(
        f"{run_id}: train pass@8 "
        + ", ".join(f"{a} {record['eval']['train_hard'][a]['pass@8']:.3f}" for a in ARMS)
        + f"; guided {record['eval'].get('guided_at_i*', {}).get('pooled')}; unchanged {record['identical_to_start']}"
    )
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(record))
    return record


def plan(names: list[str], seeds_of: dict[str, list[int]], timing: dict, steps: int, sizes: Sizes) -> str:
    """The run plan and its estimated time (per config as timed by --time-3-steps when timing.json has it)."""
    rows, worst, expected = [], 0.0, 0.0
    full_eval = timing.get("eval_s", DEFAULT_TIMING["eval_s"])
    # a base model that reaches no top state (the pilot) times no continuation: keep the default
    p6_s = timing["p6_s"] if timing.get("p6_states") else DEFAULT_TIMING["p6_s"]
    parts = timing.get("eval_parts_s", {})
    train_eval = parts.get("unguided_s", full_eval / 2) / 2  # unguided train_hard only
    for name in names:
        seeds = seeds_of[name]
        run_s = timing.get("configs", {}).get(name, {}).get("projected_run_s") or (
            DEFAULT_TIMING["setup_s"] + steps * DEFAULT_TIMING["step_s"]
        )
        p6 = p6_s if name in P6_CONFIGS else 0.0
        later = full_eval if name in FULL_EVAL_CONFIGS else train_eval
        first = run_s + full_eval + p6
        worst += first + (len(seeds) - 1) * (run_s + later + p6)
        likely_one_seed = name in ("grpo_hard", "clip_higher", "passk")  # P1: no reward, no update (v1)
        expected += first + (0 if likely_one_seed else (len(seeds) - 1) * (run_s + later + p6))
        rows.append(f"  {name:<17} seeds {','.join(map(str, seeds)):<6} {run_s / 60:4.1f} min a run, "
                    f"eval {full_eval / 60:3.1f} (first seed) / {later / 60:3.1f} min")  # fmt: skip
    guided_s = parts.get("guided_s", full_eval / 4)
    # the base measurement and its P6, then i* (up to 3 guided rounds) and the SFT traces, priced by guided sampling
    seeds = max(len(v) for v in seeds_of.values()) if seeds_of else 0
    base = full_eval + p6_s
    base += guided_s * (3 * sizes.n_prefix + seeds * sizes.n_sft) / sizes.n_guided
    source = (
        "timed by --time-3-steps (timing.json)" if timing.get("configs") else "defaults: no timing.json yet"
    )
    if timing.get("pilot"):
        source += ", on the PILOT model"
    return "\n".join([f"plan ({source}):", *rows,
                      f"  base measurements, i*, SFT traces: ~{base / 60:.1f} min",
                      f"  total ~{(expected + base) / 60:.0f} min if the P1 configs stop at one seed, "
                      f"~{(worst + base) / 60:.0f} min with every seed"])  # fmt: skip


def time_configs(runner: Runner, names, model: Path, ctx: dict, full_steps: int) -> dict:
    """3 learner steps of each config, and one base measurement: wall times and the full run projected."""
    from orchestrator.launcher import ComponentFailed
    from orchestrator.pool import GenerationPool

    out: dict = {"model": str(model), "steps_timed": 3, "full_steps": full_steps, "configs": {}}
    for name in names:
        config = runner.config(name, 0, model, f"run.run_id=v2-time-{name}", steps=3)
        t = time.monotonic()
        try:
            summary = runner.train(config)
        except (ComponentFailed, RuntimeError, OSError) as exc:  # deliberate: reported per config
            out["configs"][name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            continue
        wall = time.monotonic() - t
        stamps = [line["time"] for line in read_rows(Path(summary["run_dir"]) / "metrics.jsonl")]
        steady = (
            statistics.mean(b - a for a, b in zip(stamps, stamps[1:], strict=False))
            if len(stamps) > 1
            else wall / 3
        )
        row = {"wall_s": wall, "setup_s": summary["wall_s"]["setup_s"],
               "train_loop_s": summary["wall_s"]["train_loop_s"], "steady_step_s": steady,
               "projected_run_s": wall + (full_steps - 3) * steady}  # fmt: skip
        out["configs"][name] = row
        runner.log(f"{name}: 3 steps in {wall:.0f} s (setup {row['setup_s']:.0f} s, steady step {steady:.1f} s)"
                   f" -> {full_steps} steps ~{row['projected_run_s'] / 60:.1f} min")  # fmt: skip
    t = time.monotonic()
    with GenerationPool(ctx["eval_config"], str(model)) as pool:
        numbers, groups = measure(pool, ctx["eval_config"], ctx["sets"], ctx["arm_of"], runner.sizes)
    out["eval_s"] = time.monotonic() - t
    out["eval_parts_s"] = {k: numbers[k] for k in ("unguided_s", "guided_s")}
    t = time.monotonic()
    p6 = carry(model, ctx["instances"], groups, ctx["budget"], runner.sizes.n_carry, 0)
    out["p6_s"], out["p6_states"] = time.monotonic() - t, p6["pooled"]["states"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="pilot model, 1 seed, 3 steps: a plumbing check")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2; --quick: 0)")
    parser.add_argument(
        "--ablation-seeds",
        default=None,
        help=f"seeds of {', '.join(ABLATIONS)} (default: the first of --seeds, for the ~90-minute budget)",
    )
    parser.add_argument("--only", default=None, help=f"comma-separated configs of {', '.join(EXPERIMENTS)}")
    parser.add_argument(
        "--out", default=None, help="working folder (default runs/testbed_v2, --quick: .../quick)"
    )
    parser.add_argument(
        "--report", default=None, help="the Markdown report (default RESULTS.md; --quick: in --out)"
    )
    parser.add_argument(
        "--results-dir", default=None, help="JSON and plot (default results/; --quick: in --out)"
    )
    parser.add_argument(
        "--gates", default="runs/testbed_v2/gates", help="the gates' output (i*, G3, base P6)"
    )
    parser.add_argument("--time-3-steps", action="store_true", help="time 3 steps of every config; project")
    parser.add_argument(
        "--despite-failed-gates", action="store_true", help="train although a gate failed (reported)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="keep runs already measured under --out/records"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    smoke = quick and not args.time_3_steps  # a timing projects the full run: its seeds, splits, samples
    seeds = [int(s) for s in (args.seeds or ("0" if smoke else "0,1,2")).split(",")]
    # the ablations get the first seed unless told: every config at 3 seeds projects to ~140 min (timing.json)
    ablation_seeds = [int(s) for s in (args.ablation_seeds or str(seeds[0])).split(",")]
    sizes = QUICK if smoke else FULL
    names = args.only.split(",") if args.only else list(EXPERIMENTS)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        parser.error(f"unknown configs {unknown}; known: {', '.join(EXPERIMENTS)}")
    out = (ROOT / (args.out or ("runs/testbed_v2/quick" if quick else "runs/testbed_v2"))).resolve()
    report_path = ROOT / (args.report or (out / "RESULTS.quick.md" if quick else "RESULTS.md"))
    results_dir = ROOT / (args.results_dir or (out / "results" if quick else "results"))
    commit, committed = prereg_commit()
    if not quick and not committed:
        parser.error(f"{PREREG} is not committed (or has local changes): no RL run on the base model before "
                     "the pre-registration is committed (TESTBED.md principle 5); --quick runs the pilot")  # fmt: skip

    from orchestrator.launcher import _start_ray
    from orchestrator.pool import GenerationPool

    t_start = time.monotonic()
    timings = {"base_s": 0.0, "sft_s": 0.0, "train_s": 0.0, "eval_s": 0.0}
    cache = ROOT / ".cache" / "pope"
    model = tb.resolve_base_model(cache, tb.PILOT_SPEC if quick else None, log=log)
    log(f"base model {model}{' (PILOT: plumbing check only)' if quick else ''}")
    data_dir = out / "data"
    runner = Runner(out, data_dir, sizes)
    eval_config = runner.config(EVAL_CONFIG, 1234, model, "run.run_id=v2-eval")  # one sampling seed for all
    budget = eval_config.actors.max_new_tokens
    for name in names:  # every config but the A1/A3 ones trains at B*
        b = runner.config(name, 0, model).actors.max_new_tokens
        if b != budget and name not in ("pope_user_end", "pope_long", "grpo_budget"):
            log(f"WARNING: {name}.yaml trains at max_new_tokens {b}, the evaluation at {budget}")
    source, gates, why = (None, None, "--quick: searched on the pilot") if quick else gates_prefixes(
        ROOT / args.gates, model, budget)  # fmt: skip
    log(f"i*: {why}")
    failed = [] if quick else failed_gates(gates, model, budget)
    if failed and not args.despite_failed_gates:
        parser.error(f"gates not passed on {model}: {', '.join(failed)} (scripts/testbed_v2_gates.py; "
                     f"{PREREG}: every gate passes before any RL run); --despite-failed-gates overrides, "
                     "and the report says so")  # fmt: skip
    if failed:
        log(f"WARNING: training despite failed gates {failed}")
    rows = write_data(data_dir, sizes.per_arm)
    timing_path = out / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    steps = sizes.steps or eval_config.learner.steps
    seeds_of = {n: ablation_seeds if n in ABLATIONS else seeds for n in names}
    print(plan(names, seeds_of, timing, steps, sizes), flush=True)

    started_ray = _start_ray(eval_config)
    try:
        with GenerationPool(eval_config, str(model)) as pool:
            t = time.monotonic()
            prefixes = prepare_prefixes(pool, eval_config, rows, data_dir, source, sizes.n_prefix)
            log(f"i* {prefixes}")
            hard = load(data_dir / "train_hard.prefixes.jsonl")
            traces = (
                guided_traces(pool, hard, eval_config, seeds_of["sft_rl"], sizes.n_sft)
                if "sft_rl" in names and not args.time_3_steps
                else {}
            )
            timings["base_s"] += time.monotonic() - t
        write_pope_easy_source(
            data_dir / "train_hard.prefixes.jsonl", data_dir / "train_hard.pope_easy.jsonl"
        )
        instances = {i.problem.problem_id: i for s in tb.make_splits(0).values() for i in s}
        ctx = {
            "resume": args.resume, "timings": timings, "eval_config": eval_config, "budget": budget,
            "sets": {"train_hard": hard, "heldout_hard": load(data_dir / "heldout_hard.jsonl"),
                     "easy": load(data_dir / "easy.jsonl")},
            "arm_of": {r["id"]: r["arm"] for split in rows.values() for r in split},
            "arm_of_train": {r["id"]: r["arm"] for r in rows["train_hard"]},
            "instances": [instances[p.problem_id] for p in hard],
        }  # fmt: skip
        if args.time_3_steps:
            result = time_configs(runner, names, model, ctx, eval_config.learner.steps)
            result["pilot"] = quick
            timing_path.write_text(json.dumps(result, indent=2))
            print(plan(names, seeds_of, result, eval_config.learner.steps, FULL), flush=True)
            log(f"wrote {timing_path}{' (PILOT timings)' if quick else ''}")
            return 0

        t = time.monotonic()
        with GenerationPool(eval_config, str(model)) as pool:  # a fresh pool: the checkpoints' seeds
            base, groups = measure(pool, eval_config, ctx["sets"], ctx["arm_of"], sizes)
        if any(n in P6_CONFIGS for n in names):
            base["p6"] = carry(model, ctx["instances"], groups, budget, sizes.n_carry, 0)
        timings["base_s"] += time.monotonic() - t
        log("base: train pass@8 " + ", ".join(f"{a} {base['train_hard'][a]['pass@8']:.3f}" for a in ARMS)
            + f"; guided at i* {base['guided_at_i*']}")  # fmt: skip
        g3 = (gates or {}).get("G3")
        g0 = (
            statistics.mean(g3[a]["guided_success_at_i*"] for a in ARMS)
            if g3
            else base["guided_at_i*"]["pooled"]
        )
        g0_source = "G3 (gates.json)" if g3 else "this script's base measurement"

        t = time.monotonic()
        sft_models = sft_per_seed(model, traces, out, log)
        timings["sft_s"] = time.monotonic() - t

        results: dict[str, list[dict]] = {name: [] for name in names}
        for index in range(max(map(len, seeds_of.values()))):  # every config's first seed first
            for name in names:
                if index >= len(seeds_of[name]):
                    continue
                seed, first = seeds_of[name][index], (results[name][0] if results[name] else {})
                if index > 0 and first.get("identical_to_start"):
                    first["seed_note"] = (f"one seed: its seed-{first['seed']} checkpoint is bit-identical to "
                                          "its start model (no update)")  # fmt: skip
                    continue
                start = sft_models.get(seed, model) if name == "sft_rl" else model
                full = index == 0 or name in FULL_EVAL_CONFIGS
                results[name].append(run_one(runner, name, seed, start, ctx, full))
                (out / "v2_partial.json").write_text(json.dumps({"base": base, "runs": results}, default=str))
    finally:
        if started_ray:
            import ray

            ray.shutdown()

    timings["total_s"] = time.monotonic() - t_start
    predictions = judge(base, results, g0)
    plot_path = plot(results, results_dir / "v2_hard_solved.png")
    state = {
        "quick": quick, "prereg_commit": commit, "prereg_committed": committed,
        "command": "python scripts/reproduce_v2.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "finished": time.strftime("%Y-%m-%d %H:%M"), "timings": timings, "seeds": seeds,
        "ablation_seeds": ablation_seeds, "steps": steps,
        "model": str(model.relative_to(ROOT) if model.is_relative_to(ROOT) else model), "budget": budget,
        "sizes": asdict(sizes), "prefixes": prefixes, "g0": g0, "g0_source": g0_source,
        "gates_P6_base": (gates or {}).get("P6_carry_over"), "failed_gates": failed, "base": base, "runs": results,
        "predictions": predictions,
        "plot": os.path.relpath(plot_path, report_path.parent) if plot_path else None,
    }  # fmt: skip
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "v2_results.json").write_text(json.dumps(state, indent=2, default=str))
    write_block(report_path, markdown(state))
    for p in predictions:
        log(f"{p['id']}: held={p['held']} {p['numbers']}")
    log(f"wrote {report_path}, {results_dir / 'v2_results.json'} in {timings['total_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
