"""Gates G1-G6 of the v2 testbed (results/v2_preregistration.md) on a base model, before any RL.

Sampling is HF transformers on CPU, temperature 1, no top-k/top-p, a batch of rows at a time, each
prompt tokenized alone (as the actors do). Every completion is parsed by
``experiments.testbed_v2.parse_trace``; a completion is correct when math-verify accepts it
(``pope.verify.verify_one``, as the pipeline scores) and it fits the budget.

    budget    calibration split, guided prompts with the 3 top lines: B* = the smallest budget
              (max_new_tokens) whose success is >= 0.3, unless --budget is given
    G1        easy split, unguided, pass@1 >= 0.9
    G2        train_hard, unguided, n samples: per arm, pass@n = 0 on >= 11 of 12 problems
    G3        i* = the shortest prefix of 1..3 locks with >= 1 correct of 8; guided success at i*
              from fresh samples, per arm in [0.1, 0.4]; the i* histogram
    G4        mechanics over every sampled line: chain values right >= 99%, stop decisions right
              >= 99%, repeated tries <= 2%, first-try keys uniform within 0.03, boxed answer
              consistent with the trace >= 99%
    G5        render(guided) == render(unguided) + prefix (text and tokens); teacher-forced log-prob
              per token of the oracle descent lines after the oracle top lines vs after the model's
              own (sampled, right) top lines, equal within 0.02 nats per arm
    G6        reach: share of unguided samples that open the 3 top locks with budget left for the
              oracle descent (gate: H-blind <= 0.05, the others >= 0.1); also for a small-first one
    ideal     no model: the same quantities for the corpus's search (random order) and for the
              skill (small keys first), computed exactly by convolution, at B*

Usage: python scripts/testbed_v2_gates.py --model DIR [--n 64] [--out runs/testbed_v2/gates] [--quick]
       python scripts/testbed_v2_gates.py --ideal-only --budget 224 --out runs/testbed_v2/ideal
Writes <out>/gates.json and <out>/gates.md (and <out>/train_hard.prefixes.jsonl: the rows with i*).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from experiments import testbed_v2 as tb  # noqa: E402

TARGET_GUIDED_SUCCESS = (
    0.3  # the budget calibration's target (TESTBED.md says 0.2; see results/v2_preregistration.md)
)
MAX_BUDGET = 300  # calibration samples run this long; success at any budget below is read off them
TARGET_A3_UNGUIDED = 0.2  # A3's training budget: base unguided success ~0.2 pooled (the pre-registration)
A3_MAX_BUDGET = 640  # A3's unguided calibration samples run this long (prompt ~90 + 640 < the model's 1024)


@dataclass
class Sample:
    text: str
    num_tokens: int  # generated tokens before the end of turn
    correct: bool  # math-verify accepts the whole text (the budget is applied by ``ok``)

    def ok(self, budget: int) -> bool:
        return self.correct and self.num_tokens <= budget


class Sampler:
    """Batched sampling and teacher-forced log-probs with one HF model."""

    def __init__(self, model_dir: Path, batch_rows: int, seed: int):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(seed)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.batch_rows = batch_rows
        self.data = tb.data_config()
        self.rows_sampled = 0

    def prompt(self, problem, shown: int = 0) -> str:
        from pope.prompts import PromptSpec, render_prompt

        return render_prompt(
            self.tokenizer, PromptSpec(problem, "guided" if shown else "unguided", shown), self.data
        )

    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def sample(self, jobs: list[tuple[object, int | str]], n: int, budget: int) -> list[list[Sample]]:
        """n samples of each job, ``budget`` new tokens at most. A job is (problem, shown units): its
        guided prompt (unguided when 0), or (problem, text): the unguided prompt continued by the text
        (a state the model reached itself; the same thing for an oracle prefix, by G5's identity)."""
        from pope.verify import verify_one

        torch, tok = self.torch, self.tokenizer

        def text(problem, context) -> str:
            return (
                self.prompt(problem) + context if isinstance(context, str) else self.prompt(problem, context)
            )

        rows = [(j, self.ids(text(p, context))) for j, (p, context) in enumerate(jobs) for _ in range(n)]
        out: list[list[Sample]] = [[] for _ in jobs]
        for start in range(0, len(rows), self.batch_rows):
            chunk = rows[start : start + self.batch_rows]
            width = max(len(ids) for _, ids in chunk)
            input_ids = torch.tensor([[tok.pad_token_id] * (width - len(ids)) + ids for _, ids in chunk])
            mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for _, ids in chunk])
            with torch.no_grad():
                gen = self.model.generate(
                    input_ids=input_ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                    top_p=1.0, max_new_tokens=budget, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                )  # fmt: skip
            for (job, _), row in zip(chunk, gen[:, width:].tolist(), strict=True):
                tokens = row[: row.index(tok.eos_token_id)] if tok.eos_token_id in row else row
                tokens = [t for t in tokens if t != tok.pad_token_id]
                text = tok.decode(tokens)
                out[job].append(Sample(text, len(tokens), verify_one(jobs[job][0].answer, text)))
            self.rows_sampled += len(chunk)
        return out

    def mean_logprob(self, prompt: str, context: str, target: str) -> float:
        """Mean log-prob per token of ``target`` after prompt + context (tokenized apart, as generated)."""
        torch = self.torch
        head = self.ids(prompt) + self.ids(context)
        tail = self.ids(target)
        ids = torch.tensor([head + tail])
        with torch.no_grad():
            logits = self.model(input_ids=ids).logits[0, len(head) - 1 : -1]
        logp = torch.log_softmax(logits.double(), -1).gather(1, torch.tensor(tail)[:, None])
        return logp.mean().item()


# ---- the idealised searches (no model) ----


def _convolve(a: dict[int, float], b: dict[int, float]) -> dict[int, float]:
    out: dict[int, float] = {}
    for x, p in a.items():
        for y, q in b.items():
            out[x + y] = out.get(x + y, 0.0) + p * q
    return out


def success_probability(locks, shown: int, policy: str, budget: int, top_policy: str | None = None) -> float:
    """P(the completion fits ``budget``) for a search that tries keys in random order ('random') or
    small first ('small'); ``top_policy`` overrides the policy on the top locks; the first ``shown``
    locks are in the prompt. Every line's token count is ``tb.line_tokens``."""
    total = {tb.ANSWER_TOKENS if len(locks) == tb.NUM_LOCKS else 0: 1.0}
    for index, lock in enumerate(locks[shown:], start=shown):
        rule = top_policy if (top_policy and index < tb.NUM_TOP) else policy
        if rule == "random":
            dist = {tb.line_tokens(lock.depth, t): 1 / 9 for t in tb.KEYS}
        else:
            dist = {tb.line_tokens(lock.depth, lock.key): 1.0}
        total = _convolve(total, dist)
    return sum(p for tokens, p in total.items() if tokens <= budget)


def ideal(splits, budget: int) -> dict:
    """Per arm of train_hard: the corpus's search (the base model if it learned its corpus exactly) and
    the skill (small keys first) at ``budget``: pass@1 and pass@8 averaged over the problems."""
    out = {}
    for arm in tb.ARMS:
        problems = [tb.locks_of(i.problem) for i in splits["train_hard"] if i.arm == arm]
        cases = {
            "base_unguided": lambda lk: success_probability(lk, 0, "random", budget),
            "base_guided_3": lambda lk: success_probability(lk, tb.NUM_TOP, "random", budget),
            "descent_skill_unguided": lambda lk: success_probability(
                lk, 0, "small", budget, top_policy="random"
            ),
            "skill_everywhere_unguided": lambda lk: success_probability(lk, 0, "small", budget),
        }
        row = {}
        for name, fn in cases.items():
            ps = [fn(lk) for lk in problems]
            row[name] = {"pass@1": sum(ps) / len(ps), "pass@8": sum(1 - (1 - p) ** 8 for p in ps) / len(ps)}
        out[arm] = row
    locks = tb.locks_of(splits["train_hard"][0].problem)  # random order: the same for every problem
    budgets = {b: success_probability(locks, tb.NUM_TOP, "random", b) for b in range(180, 262, 6)}
    return {"budget": budget, "arms": out, "base_guided_3_by_budget": budgets}


# ---- the gates ----


def mechanics(records: list[tuple[tuple, object, int]]) -> dict:
    """G4 over (locks, parsed trace, shown units) records: only the lines the model wrote."""
    tries = chain_ok = repeats = lines = decisions = headers = consistent = answered = 0
    first_keys: Counter = Counter()
    for locks, parsed, shown in records:
        for index, line in enumerate(parsed.lines):
            if index < shown:
                continue
            lines += 1
            headers += index < len(locks) and line.label == tb.LABELS[index] and line.lock == locks[index]
            decisions += line.decisions_ok
            done = line.tries if line.complete else line.tries[:-1]  # the last try of a cut line is partial
            seen = set()
            for t in done:
                tries += 1
                chain_ok += t.chain_ok
                repeats += t.key in seen
                seen.add(t.key)
            if line.tries:
                first_keys[line.tries[0].key] += 1
        if parsed.answer is not None and all(line.complete for line in parsed.lines):
            answered += 1
            consistent += parsed.consistent()
    num_first = sum(first_keys.values()) or 1
    freq = {k: first_keys[k] / num_first for k in tb.KEYS}
    return {
        "lines": lines,
        "tries": tries,
        "chain_ok": chain_ok / max(1, tries),
        "decisions_ok": decisions / max(1, lines),
        "header_ok": headers / max(1, lines),
        "repeated_tries": repeats / max(1, tries),
        "first_try_key_freq": freq,
        "first_try_max_dev": max(abs(f - 1 / 9) for f in freq.values()),
        "answered": answered,
        "consistent": consistent / max(1, answered),
    }


def run(args) -> dict:
    splits = tb.make_splits(0)
    hard = splits["train_hard"]
    n = args.n
    sizes = (
        {"cal": 8, "easy": 4, "search": 8, "star": 8, "carry": 4}
        if args.quick
        else {"cal": 32, "easy": 16, "search": 8, "star": 32, "carry": 8}
    )
    report: dict = {"model": str(args.model), "n": n, "quick": args.quick, "sizes": sizes}
    started = time.time()
    sampler = Sampler(Path(args.model), args.batch_rows, args.seed)
    records = []  # (locks, parsed, shown) for G4

    def keep(instances, samples, shown):
        """G4 reads prefix + completion (the answer copies the prefix's keys too) and skips the prefix lines."""
        for inst, group in zip(instances, samples, strict=True):
            prefix = "".join(inst.problem.solution_steps[:shown])
            records.extend((tb.locks_of(inst.problem), tb.parse_trace(prefix + s.text), shown) for s in group)

    # budget: guided with the 3 top lines on the calibration split
    cal = splits["calibration"]
    cal_samples = sampler.sample([(i.problem, tb.NUM_TOP) for i in cal], sizes["cal"], MAX_BUDGET)
    keep(cal, cal_samples, tb.NUM_TOP)
    curve = {
        b: sum(s.ok(b) for g in cal_samples for s in g) / sum(map(len, cal_samples))
        for b in range(150, MAX_BUDGET + 1, 4)
    }
    calibrated = next((b for b, rate in curve.items() if rate >= TARGET_GUIDED_SUCCESS), MAX_BUDGET)
    budget = args.budget or calibrated
    report["budget"] = {
        "calibrated": calibrated,
        "used": budget,
        "curve": curve,
        "target": TARGET_GUIDED_SUCCESS,
    }
    print(f"budget: calibrated {calibrated}, using {budget} ({time.time() - started:.0f} s)", file=sys.stderr)

    # A3's training budget: unguided on the calibration split, long samples, success read off per budget
    cal_unguided = sampler.sample([(i.problem, 0) for i in cal], sizes["cal"] // 2, A3_MAX_BUDGET)
    a3_curve = {
        b: sum(s.ok(b) for g in cal_unguided for s in g) / sum(map(len, cal_unguided))
        for b in range(budget, A3_MAX_BUDGET + 1, 10)
    }
    a3 = next((b for b, rate in a3_curve.items() if rate >= TARGET_A3_UNGUIDED), None)
    report["A3_budget"] = {"calibrated": a3, "curve": a3_curve, "target": TARGET_A3_UNGUIDED,
                           "samples_per_problem": sizes["cal"] // 2}  # fmt: skip
    print(f"A3 budget: {a3} ({time.time() - started:.0f} s)", file=sys.stderr)

    # G1: easy, unguided
    easy = splits["easy"]
    easy_samples = sampler.sample([(i.problem, 0) for i in easy], sizes["easy"], budget)
    keep(easy, easy_samples, 0)
    g1 = sum(s.ok(budget) for g in easy_samples for s in g) / sum(map(len, easy_samples))
    report["G1"] = {"easy_pass@1": g1, "pass": g1 >= 0.9}

    # G2 (and G6): train_hard, unguided
    unguided = sampler.sample([(i.problem, 0) for i in hard], n, budget)
    keep(hard, unguided, 0)
    g2, g6 = {}, {}
    for arm in tb.ARMS:
        groups = [(i, g) for i, g in zip(hard, unguided, strict=True) if i.arm == arm]
        solved = [sum(s.ok(budget) for s in g) for _, g in groups]
        g2[arm] = {"problems": len(groups), f"pass@{n}_zero": sum(c == 0 for c in solved), "correct": solved}
        g2[arm]["pass"] = g2[arm][f"pass@{n}_zero"] >= len(groups) - 1
        reach_oracle = reach_small = total = 0
        for inst, group in groups:
            locks = tb.locks_of(inst.problem)
            need_oracle = sum(tb.line_tokens(1, 1) for _ in locks[3:]) + tb.ANSWER_TOKENS
            need_small = sum(tb.line_tokens(lock.depth, lock.key) for lock in locks[3:]) + tb.ANSWER_TOKENS
            for s in group:
                total += 1
                end = tb.parse_trace(s.text).top_end_char(locks)
                if end is None:
                    continue
                left = budget - len(sampler.ids(s.text[:end]))
                reach_oracle += left >= need_oracle
                reach_small += left >= need_small
        g6[arm] = {
            "reach_oracle_descent": reach_oracle / total,
            "reach_small_first_descent": reach_small / total,
        }
    report["G2"] = g2
    g6["pass"] = g6["H-blind"]["reach_oracle_descent"] <= 0.05 and all(
        g6[a]["reach_oracle_descent"] >= 0.1 for a in ("H-shared", "H-unshared")
    )
    report["G6"] = g6
    print(f"G1, G2, G6 done ({time.time() - started:.0f} s)", file=sys.stderr)

    # G3: i* search (1..3 locks, >= 1 correct of sizes['search']), then fresh samples at i*
    star: dict[str, int | None] = {i.problem.problem_id: None for i in hard}
    found_correct: dict[str, int] = {}
    for shown in range(1, tb.NUM_TOP + 1):
        todo = [i for i in hard if star[i.problem.problem_id] is None]
        if not todo:
            break
        groups = sampler.sample([(i.problem, shown) for i in todo], sizes["search"], budget)
        keep(todo, groups, shown)
        for inst, group in zip(todo, groups, strict=True):
            if any(s.ok(budget) for s in group):
                star[inst.problem.problem_id] = shown
                found_correct[inst.problem.problem_id] = sum(s.ok(budget) for s in group)
    with_star = [i for i in hard if star[i.problem.problem_id]]
    fresh = sampler.sample(
        [(i.problem, star[i.problem.problem_id]) for i in with_star], sizes["star"], budget
    )
    for inst, group in zip(with_star, fresh, strict=True):
        keep([inst], [group], star[inst.problem.problem_id])
    rate = {
        i.problem.problem_id: sum(s.ok(budget) for s in g) / len(g)
        for i, g in zip(with_star, fresh, strict=True)
    }
    g3 = {}
    for arm in tb.ARMS:
        ids = [i.problem.problem_id for i in hard if i.arm == arm]
        rates = [rate[p] for p in ids if p in rate]
        mean = sum(rates) / len(rates) if rates else 0.0
        hist = Counter(star[p] or 0 for p in ids)
        g3[arm] = {"guided_success_at_i*": mean, "i*_histogram": {str(k): hist.get(k, 0) for k in (1, 2, 3, 0)},
                   "pass": 0.1 <= mean <= 0.4}  # fmt: skip
    report["G3"] = g3
    write_prefixes(Path(args.out) / "train_hard.prefixes.jsonl", hard, star, found_correct, sizes["search"])
    print(f"G3 done ({time.time() - started:.0f} s)", file=sys.stderr)

    # G4: mechanics over every sampled completion
    g4 = mechanics(records)
    g4["pass"] = (
        g4["chain_ok"] >= 0.99 and g4["decisions_ok"] >= 0.99 and g4["repeated_tries"] <= 0.02
        and g4["first_try_max_dev"] <= 0.03 and g4["consistent"] >= 0.99
    )  # fmt: skip
    report["G4"] = g4

    # G5: prompt identity, then the descent's log-prob after oracle vs own top lines
    identity = all(
        sampler.prompt(i.problem, k) == sampler.prompt(i.problem) + "".join(i.problem.solution_steps[:k])
        and sampler.ids(sampler.prompt(i.problem, k))
        == sampler.ids(sampler.prompt(i.problem)) + sampler.ids("".join(i.problem.solution_steps[:k]))
        for i in hard
        for k in (1, 2, 3)
    )
    g5 = {"identity": identity}
    for arm in tb.ARMS:
        pairs = []
        for inst, group in zip(hard, unguided, strict=True):
            if inst.arm != arm:
                continue
            locks, steps = tb.locks_of(inst.problem), inst.problem.solution_steps
            own = next(
                (s.text[:end] for s in group if (end := tb.parse_trace(s.text).top_end_char(locks))), None
            )
            if own is None:
                continue
            prompt, descent = sampler.prompt(inst.problem), "".join(steps[tb.NUM_TOP : tb.NUM_LOCKS])
            oracle = sampler.mean_logprob(prompt, "".join(steps[: tb.NUM_TOP]), descent)
            pairs.append((oracle, sampler.mean_logprob(prompt, own, descent)))
        diff = sum(a - b for a, b in pairs) / len(pairs) if pairs else float("nan")
        g5[arm] = {"problems": len(pairs), "after_oracle_top": sum(a for a, _ in pairs) / max(1, len(pairs)),
                   "after_own_top": sum(b for _, b in pairs) / max(1, len(pairs)), "diff_nats": diff}  # fmt: skip
    g5["pass"] = identity and all(abs(g5[a]["diff_nats"]) <= 0.02 for a in tb.ARMS if g5[a]["problems"])
    report["G5"] = g5
    report["P6_carry_over"] = carry_over(sampler, hard, unguided, budget, sizes["carry"])
    report["ideal"] = ideal(splits, budget)
    report["rows_sampled"] = sampler.rows_sampled
    report["wall_s"] = time.time() - started
    return report


def carry_over(sampler, hard, unguided, budget: int, n: int, states_per_problem: int = 2) -> dict:
    """P6's measure: continuation success from states the model reached by its own search (the 3 top
    locks opened, t tokens used) vs from the oracle's top lines, same problems, same remaining budget."""
    jobs, left = [], []
    for inst, group in zip(hard, unguided, strict=True):
        locks, steps = tb.locks_of(inst.problem), inst.problem.solution_steps
        states = [s.text[:end] for s in group if (end := tb.parse_trace(s.text).top_end_char(locks))]
        for own in states[:states_per_problem]:
            remaining = budget - len(sampler.ids(own))
            jobs += [(inst, own), (inst, "".join(steps[: tb.NUM_TOP]))]
            left += [remaining, remaining]
    if not jobs:
        return {arm: {"states": 0} for arm in tb.ARMS}
    groups = sampler.sample([(inst.problem, context) for inst, context in jobs], n, max(left))
    out = {}
    for arm in tb.ARMS:
        rates = {"own": [], "oracle": []}
        for index, ((inst, _), group) in enumerate(zip(jobs, groups, strict=True)):
            if inst.arm == arm:
                rates["own" if index % 2 == 0 else "oracle"] += [s.ok(left[index]) for s in group]
        own, oracle = (sum(r) / len(r) if r else float("nan") for r in (rates["own"], rates["oracle"]))
        out[arm] = {"states": len(rates["own"]) // n, "own": own, "oracle": oracle,
                    "ratio": own / oracle if oracle else float("nan")}  # fmt: skip
    return out


def write_prefixes(path: Path, hard, star, correct, n: int) -> None:
    """train_hard rows with i* (``pope_prefix_units``); no i* found: the 3 top lines, flagged fallback."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for inst in hard:
            pid = inst.problem.problem_id
            row = {**tb.problem_row(inst), "pope_prefix_units": star[pid] or tb.NUM_TOP,
                   "pope_prefix_fallback": star[pid] is None, "pope_prefix_correct": correct.get(pid, 0),
                   "pope_prefix_n": n}  # fmt: skip
            handle.write(json.dumps(row) + "\n")


def markdown(report: dict) -> str:
    lines = [f"# v2 gates: `{report.get('model', '-')}`", ""]
    if "budget" in report:
        b = report["budget"]
        lines += [f"Budget: calibrated {b['calibrated']} (guided success >= {b['target']} on the calibration split "
                  f"with the 3 top lines), used {b['used']}. Samples: n={report['n']}, sizes {report['sizes']}, "
                  f"{report['rows_sampled']} rows, {report['wall_s']:.0f} s.", ""]  # fmt: skip
        if "A3_budget" in report:
            a3 = report["A3_budget"]
            lines += [f"A3's training budget: {a3['calibrated']} (base unguided success >= {a3['target']} pooled on "
                      f"the calibration split, {a3['samples_per_problem']} samples per problem).", ""]  # fmt: skip
        n = report["n"]
        lines += ["| gate | measure | H-shared | H-unshared | H-blind | pass |", "|---|---|---|---|---|---|"]
        lines.append(f"| G1 | easy pass@1 | {report['G1']['easy_pass@1']:.3f} | | | {report['G1']['pass']} |")
        g2 = report["G2"]
        cells = " | ".join(f"{g2[a][f'pass@{n}_zero']}/{g2[a]['problems']}" for a in tb.ARMS)
        lines.append(f"| G2 | problems with pass@{n} = 0 | {cells} | {all(g2[a]['pass'] for a in tb.ARMS)} |")

        def arm_row(gate: str, measure: str, cell, verdict) -> str:
            return f"| {gate} | {measure} | {' | '.join(cell(a) for a in tb.ARMS)} | {verdict} |"

        g3, g4, g5, g6 = report["G3"], report["G4"], report["G5"], report["G6"]
        lines.append(arm_row("G3", "guided success at i* (i* histogram, 0 = none)",
                             lambda a: f"{g3[a]['guided_success_at_i*']:.3f} (i* {g3[a]['i*_histogram']})",
                             all(g3[a]["pass"] for a in tb.ARMS)))  # fmt: skip
        lines.append(
            f"| G4 | chain ok {g4['chain_ok']:.4f}, decisions ok {g4['decisions_ok']:.4f}, header ok "
            f"{g4['header_ok']:.4f}, repeats {g4['repeated_tries']:.4f}, first-try max dev "
            f"{g4['first_try_max_dev']:.4f}, consistent {g4['consistent']:.4f} ({g4['answered']} answers, "
            f"{g4['tries']} tries) | | | | {g4['pass']} |"
        )
        lines.append(arm_row("G5", f"identity {g5['identity']}; descent log-prob oracle - own top (nats/token)",
                             lambda a: f"{g5[a]['diff_nats']:+.4f} ({g5[a]['after_oracle_top']:.3f} vs "
                                       f"{g5[a]['after_own_top']:.3f}, {g5[a]['problems']})", g5["pass"]))  # fmt: skip
        lines.append(arm_row("G6", "reach: top opened, budget left for the oracle (small-first) descent",
                             lambda a: f"{g6[a]['reach_oracle_descent']:.3f} ({g6[a]['reach_small_first_descent']:.3f})",
                             g6["pass"]))  # fmt: skip
        p6 = report["P6_carry_over"]
        cells = " | ".join(
            f"{p6[a].get('own', float('nan')):.3f} vs {p6[a].get('oracle', float('nan')):.3f} ({p6[a]['states']} states)"
            for a in tb.ARMS
        )
        lines.append(
            f"| P6 (base) | success from own top states vs oracle top, same budget left | {cells} | |"
        )
        lines.append("")
    ideal_ = report["ideal"]
    lines += [f"Idealised searches at budget {ideal_['budget']} (exact; pass@1 / pass@8 over train_hard):", "",
              "| search | H-shared | H-unshared | H-blind |", "|---|---|---|---|"]  # fmt: skip
    for case in ideal_["arms"]["H-shared"]:
        cells = " | ".join(
            f"{ideal_['arms'][a][case]['pass@1']:.4f} / {ideal_['arms'][a][case]['pass@8']:.3f}"
            for a in tb.ARMS
        )
        lines.append(f"| {case} | {cells} |")
    curve = ", ".join(f"{b}: {p:.3f}" for b, p in ideal_["base_guided_3_by_budget"].items())
    lines += ["", f"Random-order guided success (3 top lines shown) by budget: {curve}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="the base model folder (python -m experiments.testbed_v2 build)")
    parser.add_argument("--n", type=int, default=64, help="unguided samples per train_hard problem (G2, G6)")
    parser.add_argument("--out", default="runs/testbed_v2/gates", help="folder for gates.json and gates.md")
    parser.add_argument("--quick", action="store_true", help="fewer samples everywhere (n=16 unless given)")
    parser.add_argument("--budget", type=int, default=None, help="max_new_tokens; default: calibrated")
    parser.add_argument("--batch-rows", type=int, default=64, help="sequences generated at once")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ideal-only", action="store_true", help="no model: the idealised table at --budget")
    args = parser.parse_args(argv)
    if args.quick and "--n" not in " ".join(argv if argv is not None else sys.argv[1:]):
        args.n = 16
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.ideal_only:
        report = {"ideal": ideal(tb.make_splits(0), args.budget or 218)}
    else:
        if not args.model:
            parser.error("--model is required (or --ideal-only)")
        import torch

        torch.set_num_threads(1)
        report = run(args)
    (out / "gates.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "gates.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
