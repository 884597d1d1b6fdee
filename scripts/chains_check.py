"""How a model solves the chains (or totals) task: right answers, and how many are right at every step.

    python scripts/chains_check.py MODEL_FOLDER [MODEL_FOLDER ...] [--n 4] [--guided] [--task totals]

For each model folder (a built ``builtin:tiny-chains`` or ``builtin:tiny-totals``, a run's
``checkpoint/``), samples ``n`` completions of every problem of ``configs/data/chains_heldout.jsonl``
(``totals_heldout.jsonl`` with ``--task totals``) at temperature 1 with HF
``generate`` (seed 0), unguided (or, with ``--guided``, behind the longest prefix within
``prefix_fraction``), and prints:

- ``correct``: the share whose last ``\\boxed{}`` is the answer (the run's reward, without math-verify);
- ``exact``: the share that is the gold solution exactly (every step right: the procedure is
  deterministic, so a completion with every step right is the gold text);
- ``guessed``: the share that answers at once, with no step (the text starts with the answer line);
- ``right_for_right_steps``: ``exact`` among the correct ones. A correct answer reached through wrong
  steps is luck (an answer is one of 10 digits), and outcome reward pays for it all the same.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HELDOUT = {task: ROOT / f"configs/data/{task}_heldout.jsonl" for task in ("chains", "totals")}
BOXED = re.compile(r"\\boxed\{(\d+)\}")


def check(folder: Path, n: int, guided: bool, prefix_fraction: float = 0.5, task: str = "chains") -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pope.config import DataConfig
    from pope.problems import chain_from_text
    from pope.prompts import PromptSpec, max_prefix_units, prefix_text, render_prompt

    rows = [json.loads(line) for line in HELDOUT[task].read_text().splitlines()]
    data = DataConfig(prefix_fraction=prefix_fraction)
    specs = []
    for index, row in enumerate(rows):
        problem = chain_from_text(f"heldout-{index}", row["problem"])
        shown = max_prefix_units(problem, prefix_fraction) if guided else 0
        if shown or not guided:
            spec = PromptSpec(problem, "guided" if shown else "unguided", shown)
            specs.append((spec, row, prefix_text(problem, shown) if shown else ""))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    prompts = [render_prompt(tokenizer, spec, data) for spec, _, _ in specs] * n
    torch.manual_seed(0)
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(
            **batch, do_sample=True, temperature=1.0, max_new_tokens=128, pad_token_id=tokenizer.pad_token_id
        )
    correct = exact = both = guessed = 0
    for index, ids in enumerate(out):
        _, row, shown = specs[index % len(specs)]
        text = shown + tokenizer.decode(ids[batch["input_ids"].shape[1] :], skip_special_tokens=True)
        right, gold = score(text, row)
        correct += right
        exact += gold
        both += right and gold
        guessed += text.lstrip().startswith("The answer")
    total = len(out)
    return {
        "model": str(folder),
        "task": task,
        "variant": "guided" if guided else "unguided",
        "completions": total,
        "correct": correct / total,
        "exact": exact / total,
        "guessed": guessed / total,
        "right_for_right_steps": both / correct if correct else None,
    }


def score(text: str, row: dict) -> tuple[bool, bool]:
    """(the last boxed answer is right, the text is the gold solution) for one completion."""
    answers = BOXED.findall(text)
    return bool(answers) and answers[-1] == row["answer"], text.strip() == row["solution"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--n", type=int, default=4, help="completions per held-out problem")
    parser.add_argument(
        "--guided", action="store_true", help="behind the longest prefix within 0.5 of the solution"
    )
    parser.add_argument("--task", choices=sorted(HELDOUT), default="chains", help="which held-out set")
    args = parser.parse_args(argv)
    for folder in args.models:
        if not (folder / "config.json").is_file():
            parser.error(f"{folder}: not a model folder (no config.json)")
        print(json.dumps(check(folder, args.n, args.guided, task=args.task)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
