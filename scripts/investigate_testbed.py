"""Why POPE does or does not transfer in the testbed: teacher-forced measurements on the hard split.

For each model (the base model and the final checkpoints a ``scripts/reproduce.py`` run left in
``--runs``), each hard problem and three prompts (unguided; guided instruction without a prefix;
guided instruction with the searched prefix i*(x), as POPE trains), the oracle solution is fed
token by token after the prompt (tokenized apart, as the actors see a prompt and a completion):

    stop@k       P(end of turn right after the k-th step line): the model quits with no answer
    step_lp      mean log-probability per token of the oracle step lines (is each step right?)
    log10_oracle log10 of the probability of the whole oracle continuation, end of turn included:
                 how far the prompt is from producing the answer at all

Usage: python scripts/investigate_testbed.py [--runs runs/reproduce] [--out results/investigation.json]
Writes the JSON and prints a Markdown table (RESULTS.md quotes it).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPTS = {  # name -> (variant, use the searched prefix)
    "unguided": ("unguided", False),
    "guided, no prefix": ("guided", False),
    "guided + i*": ("guided", True),
}


def measure(model_dir: Path, hard, data) -> dict:
    """Per prompt: mean stop@k for k = 1..4 (over problems that have a k-th step not in the prompt),
    mean step_lp and mean log10_oracle over the hard problems."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pope.prompts import PromptSpec, render_prompt

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    eos = tokenizer.eos_token_id
    out = {}
    for name, (variant, with_prefix) in PROMPTS.items():
        stops: dict[int, list[float]] = {k: [] for k in range(1, 5)}
        step_lps, log10s = [], []
        for problem in hard:
            shown = (problem.prefix_units or 1) if with_prefix else 0
            prompt = render_prompt(tokenizer, PromptSpec(problem, variant, shown), data)
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            units = problem.solution_steps[shown:]
            spans = []  # (first position, ids) of each unit
            for unit in units:
                unit_ids = tokenizer(unit, add_special_tokens=False)["input_ids"]
                spans.append((len(ids), unit_ids))
                ids = ids + unit_ids
            ids = ids + [eos]
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0].double()
            logp = torch.log_softmax(logits, -1)
            # logp[t] predicts token t + 1
            total = 0.0
            token_lps = []
            for index, (start, unit_ids) in enumerate(spans):
                lps = [logp[start - 1 + j, t].item() for j, t in enumerate(unit_ids)]
                total += sum(lps)
                is_step = index < len(spans) - 1  # the last unit is the answer line
                if is_step:
                    token_lps += lps
                    k = shown + index + 1  # step lines written after this unit
                    end = start + len(unit_ids)
                    if k in stops:
                        stops[k].append(math.exp(logp[end - 1, eos].item()))
            total += logp[len(ids) - 2, eos].item()
            step_lps.append(sum(token_lps) / len(token_lps) if token_lps else float("nan"))
            log10s.append(total / math.log(10))
        out[name] = {
            "stop@k": {k: (sum(v) / len(v) if v else None) for k, v in stops.items()},
            "step_lp": sum(step_lps) / len(step_lps),
            "log10_oracle": sum(log10s) / len(log10s),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default="runs/reproduce", help="the output folder of scripts/reproduce.py")
    parser.add_argument("--out", default="results/investigation.json")
    parser.add_argument(
        "--models", default="grpo_hard-s0,pope-s0,pope-s1,pope-s2,pope_easy-s0,pope_long-s0,sft_rl-s0"
    )
    args = parser.parse_args(argv)

    from experiments.testbed_v1 import resolve_testbed_model
    from pope.config import load_config
    from pope.datasets import FieldMap, load_file

    runs = Path(args.runs)
    hard = load_file(runs / "data" / "hard.prefixes.jsonl", FieldMap(id="id"))[0]
    data = load_config(ROOT / "configs" / "testbed" / "pope.yaml").data
    models = {"base model": resolve_testbed_model()}
    for run_id in args.models.split(","):
        checkpoint = runs / "runs" / run_id / "checkpoint"
        if checkpoint.is_dir():
            models[run_id] = checkpoint
    results = {name: measure(path, hard, data) for name, path in models.items()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))

    print("| model | prompt | stop@1 | stop@2 | stop@3 | stop@4 | step logprob/token | log10 P(oracle) |")
    print("|---|---|---|---|---|---|---|---|")
    for model_name, per_prompt in results.items():
        for prompt, m in per_prompt.items():
            stops = " | ".join("-" if v is None else f"{v:.3f}" for v in m["stop@k"].values())
            print(f"| {model_name} | {prompt} | {stops} | {m['step_lp']:.3f} | {m['log10_oracle']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
