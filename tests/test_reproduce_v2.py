"""scripts/reproduce_v2.py: its pure parts by hand (curves per arm, the predictions' verdicts, the report
block, the split subsets, the per-arm pass@k), and its model parts on a tiny random model built here
(the weight-identity check, SFT, P6's carry-over). No Ray, no RL run."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

from experiments import testbed_v2 as tb

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parent.parent


def _load():
    """The script by path (scripts/ is not a package; the script puts the repository on sys.path)."""
    spec = importlib.util.spec_from_file_location("reproduce_v2", ROOT / "scripts" / "reproduce_v2.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["reproduce_v2"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


rv2 = _load()


def _line(step: int, groups: list[tuple[str, str, list[float]]]) -> str:
    return json.dumps(
        {
            "step": step,
            "entropy": 0.1 * step,
            "reward_mean_guided": 0.5,
            "groups": [{"problem_id": p, "variant": v, "rewards": r} for p, v, r in groups],
        }  # fmt: skip
    )


def test_curves_per_arm_by_hand(tmp_path):
    arm_of = {"a1": "H-shared", "a2": "H-shared", "b1": "H-blind"}
    lines = [
        _line(
            1, [("a1", "unguided", [0.0, 1.0]), ("b1", "guided", [1.0, 1.0])]
        ),  # a guided success: not counted
        _line(2, [("b1~u", "unguided", [1.0, 0.0])]),  # an unguided copy maps back to b1
        _line(3, [("a2", "unguided", [0.0, 0.0])]),
        _line(4, [("a2", "unguided", [1.0, 0.0])]),
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    out = rv2.curves(tmp_path, arm_of, window=2)
    # window 2: step t counts successes at steps t-1 and t
    assert out["hard_solved"]["H-shared"] == [0.5, 0.5, 0.0, 0.5]
    assert out["hard_solved"]["H-blind"] == [0.0, 1.0, 1.0, 0.0]
    assert out["step"] == [1, 2, 3, 4] and out["entropy"][2] == pytest.approx(0.3)


def _eval(train: dict, heldout: dict | None = None, guided: float = 0.0) -> dict:
    heldout = heldout or train
    return {
        "train_hard": {a: {"pass@8": v} for a, v in train.items()},
        "heldout_hard": {a: {"pass@8": v} for a, v in heldout.items()},
        "guided_at_i*": {"pooled": guided},
    }


def _verdicts(predictions) -> dict:
    return {p["id"]: p["held"] for p in predictions}


def test_judge_by_hand():
    zero = dict.fromkeys(tb.ARMS, 0.0)
    base = _eval(zero)
    runs = {
        "grpo_hard": [{"eval": _eval(zero)}],
        "passk": [{"eval": _eval({**zero, "H-blind": 0.03})}],  # 0.03 > 0.02: P1 fails for passk
        "pope": [  # means: H-shared 0.5, H-unshared 0.2, H-blind 0.05; guided (0.6 + 0.8) / 2 = 0.7
            {
                "eval": _eval(
                    {"H-shared": 0.4, "H-unshared": 0.2, "H-blind": 0.0},
                    {"H-shared": 0.3, "H-unshared": 0.1, "H-blind": 0.0},
                    0.6,
                ),
                "p6": {"pooled": {"own": 0.4, "oracle": 0.5, "states": 10}},
            },
            {
                "eval": _eval(
                    {"H-shared": 0.6, "H-unshared": 0.2, "H-blind": 0.1},
                    {"H-shared": 0.4, "H-unshared": 0.1, "H-blind": 0.0},
                    0.8,
                ),
                "p6": {"pooled": {"own": 0.2, "oracle": 0.5, "states": 10}},
            },
        ],  # fmt: skip
        "pope_user_end": [{"eval": _eval({"H-shared": 0.3, "H-unshared": 0.1, "H-blind": 0.0})}],
        "pope_long": [{"eval": _eval({"H-shared": 0.2, "H-unshared": 0.1, "H-blind": 0.0})}],
    }
    v = _verdicts(rv2.judge(base, runs, g0=0.35))
    assert v["P1 (grpo_hard)"] is True and v["P1 (passk)"] is False
    assert v["P1 (clip_higher)"] is None and v["P2 (entropy)"] is None  # not run: not judged
    assert v["P4(a)"] is True  # 0.7 >= 0.35 + 0.3
    assert v["P4(b)"] is True  # 0.2 >= 0.15
    assert v["P4(c)"] is True  # 0.5 >= 0.2 + 0.1
    assert v["P4(d)"] is True  # 0.05 <= 0.1
    assert v["P4(e)"] is True  # |0.35 - 0.5| = 0.15 <= 0.15
    assert v["P6"] is False  # mean own 0.3 / mean oracle 0.5 = 0.6 < 0.8
    assert v["falsified"] is True  # P4(a) holds, P6 fails
    assert v["A1"] is True and v["A2"] is None and v["P5"] is None and v["A3"] is None
    v = _verdicts(rv2.judge(base, runs, g0=0.45))  # 0.7 < 0.75: P4(a) fails, so not falsified
    assert v["P4(a)"] is False and v["falsified"] is False


def test_write_block_inserts_at_the_top_then_replaces(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results: v1\n\nold\n")
    rv2.write_block(path, f"{rv2.START}\nfirst\n{rv2.END}")
    assert path.read_text().startswith(rv2.START) and path.read_text().endswith("# Results: v1\n\nold\n")
    rv2.write_block(path, f"{rv2.START}\nsecond\n{rv2.END}")
    text = path.read_text()
    assert "second" in text and "first" not in text and text.count(rv2.START) == 1 and text.count("old") == 1


def test_write_data_keeps_the_first_problems_of_each_arm(tmp_path):
    rows = rv2.write_data(tmp_path, per_arm=2)
    for split in ("train_hard", "heldout_hard", "calibration"):
        assert sorted(r["arm"] for r in rows[split]) == sorted(list(tb.ARMS) * 2)
        assert len(rv2.read_rows(tmp_path / f"{split}.jsonl")) == 6
    assert len(rows["easy"]) == 8
    full = {name: [tb.problem_row(i) for i in inst] for name, inst in tb.make_splits(0).items()}
    assert rows["train_hard"][0] == full["train_hard"][0]


def test_unguided_stats_by_hand():
    instances = [i for i in tb.make_splits(0)["train_hard"] if i.arm == "H-shared"][:2]
    problems = [i.problem for i in instances]
    oracle = problems[0].solution
    # problem 0: 2 of 8 samples are the oracle solution (correct, reach the top, first tries right)
    groups = [[(oracle, 100, 1.0)] * 2 + [("", 0, 0.0)] * 6, [("", 0, 0.0)] * 8]
    arm_of = {p.problem_id: "H-shared" for p in problems}
    out = rv2.unguided_stats(problems, groups, arm_of)["H-shared"]
    assert out["pass@1"] == pytest.approx((2 / 8 + 0) / 2)
    assert out["pass@8"] == pytest.approx(0.5)  # problem 0 solved in every 8 of 8; problem 1 never
    assert out["reach_top"] == pytest.approx(2 / 16)
    assert out["top_first_oracle"] == 1.0 and out["inconsistent_of_correct"] == 0.0
    assert "H-blind" not in rv2.unguided_stats(problems, groups, arm_of)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from pope.models.tiny import new_qwen2, save_model_folder

    spec = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 1,
            "num_key_value_heads": 1, "head_dim": 32, "max_position_embeddings": 1024}  # fmt: skip
    tokenizer = tb.build_tokenizer(0)
    import torch

    torch.manual_seed(0)
    return save_model_folder(
        new_qwen2(spec, tokenizer), tokenizer, spec, tmp_path_factory.mktemp("m") / "tiny"
    )


def test_same_weights_sft_and_carry_on_a_tiny_model(tiny_folder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_folder, copy)
    assert rv2.same_weights(copy, tiny_folder)
    instance = tb.make_splits(0)["train_hard"][0]
    from transformers import AutoTokenizer

    from pope.prompts import PromptSpec, render_prompt

    prompt = render_prompt(
        AutoTokenizer.from_pretrained(tiny_folder),
        PromptSpec(instance.problem, "unguided", 0),
        tb.data_config(),
    )
    from scripts.reproduce import sft

    tuned = sft(tiny_folder, [(prompt, instance.problem.solution)] * 4, tmp_path / "sft", seed=0)
    assert not rv2.same_weights(tuned, tiny_folder)
    # P6: the oracle solution as the model's "own" sample reaches the top; continuations are sampled
    p6 = rv2.carry(
        tiny_folder, [instance], [[(instance.problem.solution, 171, 1.0)]], budget=224, n=2, seed=0
    )
    assert p6[instance.arm]["states"] == 1 and p6["pooled"]["states"] == 1
    assert 0.0 <= p6["pooled"]["own"] <= 1.0 and 0.0 <= p6["pooled"]["oracle"] <= 1.0


def test_failed_gates_names_each_failing_gate(tmp_path):
    model = tmp_path / "base"
    model.mkdir()
    per_arm = {arm: {"pass": True} for arm in tb.ARMS}
    gates = {"model": str(model), "budget": {"used": 234}, "G1": {"pass": True}, "G2": per_arm,
             "G3": {**per_arm, "H-blind": {"pass": False}}, "G4": {"pass": False}, "G5": {"pass": True},
             "G6": {"pass": True}}  # fmt: skip
    assert rv2.failed_gates(gates, model, 234) == ["G3", "G4"]
    assert rv2.failed_gates(gates, model, 224) == ["gates.json used budget 234, the configs 224"]
    assert rv2.failed_gates(gates, tmp_path / "other", 234) == [f"no gates.json of {tmp_path / 'other'}"]
    assert rv2.failed_gates({**gates, "G3": per_arm, "G4": {"pass": True}}, model, 234) == []
