"""The v2 testbed (experiments/testbed_v2.py): the task's invariants, the trace parser, the splits, the
prompt identity, and one short build of a pilot model."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from experiments import testbed_v2 as tb

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tokenizer():
    return tb.build_tokenizer(0)


@pytest.fixture(scope="module")
def splits():
    return tb.make_splits(0)


def _p(k: int, times: int = 1) -> int:
    """P by hand: the 7-cycle as written in PERMUTATION, and the swap (8 9)."""
    for _ in range(times):
        k = tb.PERMUTATION[k]
    return k


def test_the_permutation_has_the_promised_cycles():
    perm = tb.PERMUTATION
    assert sorted(perm[1:]) == list(range(1, 10))
    orbit, k = [], 1
    while k not in orbit:
        orbit.append(k)
        k = perm[k]
    assert sorted(orbit) == list(range(1, 8))  # 1..7 is one 7-cycle
    assert (perm[8], perm[9]) == (9, 8)
    assert [k for k in tb.KEYS if _p(k, 1) == k] == []
    assert [k for k in tb.KEYS if _p(k, 9) == k] == []  # a d=9 lock never opens with its own code
    assert [k for k in tb.KEYS if _p(k, 4) == k] == [8, 9]


def test_a_lock_line_worked_by_hand():
    # P = (0, 7, 4, 5, 3, 1, 2, 6, 9, 8): 1 -> 7 -> 6 -> 2 -> 4 -> 3 -> 5 -> 1
    assert tb.PERMUTATION == (0, 7, 4, 5, 3, 1, 2, 6, 9, 8)
    lock = tb.Lock(4, 4)  # P^4(1) = 4: 1 -> 7 -> 6 -> 2 -> 4
    assert lock.key == 1
    assert tb.lock_line("A", lock, [3, 1]) == "A44 35176 17624 key 1.\n"
    assert tb.oracle_line("B", tb.Lock(1, 4)) == "B14 24 key 2.\n"
    # d=9: 1 -> 7 6 2 4 3 5 1 7 6, so P^9(1) = 6 and lock 96 opens with key 1
    assert tb.oracle_line("C", tb.Lock(9, 6)) == "C96 1762435176 key 1.\n"
    with pytest.raises(AssertionError):
        tb.lock_line("A", lock, [1, 1])


def test_every_lock_has_exactly_one_key():
    for depth in (1, 4, 9):
        codes = [tb.chain(k, depth)[-1] for k in tb.KEYS]
        assert sorted(codes) == list(tb.KEYS)  # P^d is a bijection: one key per code
        for k in tb.KEYS:
            assert tb.Lock.of_key(depth, k).key == k


def test_solutions_have_13_units_and_the_top_is_a_quarter_of_the_characters(splits):
    from pope.units import split_units

    for instance in splits["train_hard"] + splits["heldout_hard"] + splits["calibration"]:
        problem = instance.problem
        steps = problem.solution_steps
        assert len(steps) == 13
        assert tuple(split_units(problem.solution)) == steps  # the units the pipeline cuts
        total = len(problem.solution)
        top = sum(len(s) for s in steps[:3])
        # our own count: 3 top lines fit in 25% of the characters, 4 lines do not (the limit is exactly 3)
        assert top <= 0.25 * total < top + len(steps[3]), (instance.arm, top, total)
        assert tb.prefix_limit_units(problem) == 3
    # by hand for H-blind: 3 lines of 3+11+8 = 22 chars (header, " k" and 9 values, " key k.\n"), 9 lines
    # of 3+3+8 = 14, the answer 64+12 = 76: 66 <= 0.25 * 268 = 67; for d=4, 4 lines 3*17+14 = 65 > 63.25
    assert len(tb.ANSWER.format("1" * 12)) == 76
    assert 3 * 22 <= 0.25 * (3 * 22 + 9 * 14 + 76) and 3 * 17 + 14 > 0.25 * (3 * 17 + 9 * 14 + 76)


def test_oracle_lines_are_first_try_lines_the_parser_accepts(splits):
    for instance in splits["train_hard"][:6]:
        problem = instance.problem
        locks = tb.locks_of(problem)
        parsed = tb.parse_trace(problem.solution)
        assert len(parsed.lines) == 12 and not parsed.malformed
        for line, lock, label in zip(parsed.lines, locks, tb.LABELS, strict=True):
            assert line.label == label and line.lock == lock and line.complete
            assert len(line.tries) == 1 and line.tries[0].key == lock.key
            assert line.tries[0].chain_ok and line.tries[0].opens and line.decisions_ok
        assert parsed.answer == problem.answer and parsed.consistent()
        assert parsed.top_end_char(locks) == sum(len(s) for s in problem.solution_steps[:3])


def test_the_parser_reads_searches_and_catches_mistakes():
    locks = (tb.Lock(4, 4), tb.Lock(1, 4))  # keys 1 and 2
    good = "A44 35176 17624 key 1.\nB14 71 24 key 2.\nAll locks are open, so the answer is the row of keys $\\boxed{12}$."
    parsed = tb.parse_trace(good)
    assert [len(line.tries) for line in parsed.lines] == [2, 2]
    assert [t.key for t in parsed.lines[0].tries] == [3, 1] and parsed.lines[0].tries[0].chain == (5, 1, 7, 6)
    assert all(line.decisions_ok and line.repeats == 0 for line in parsed.lines)
    assert parsed.consistent() and parsed.top_end_char(locks, num_top=1) == len("A44 35176 17624 key 1.\n")
    # a wrong chain value, a repeated key, a stop at a try that does not open, an inconsistent answer
    bad = "A44 35176 35176 17724 key 1.\nB14 71 key 7.\nAll locks are open, so the answer is the row of keys $\\boxed{13}$."
    parsed = tb.parse_trace(bad)
    first, second = parsed.lines
    assert first.repeats == 1 and not first.tries[2].chain_ok and not first.decisions_ok
    assert not second.decisions_ok  # 7 -> 1 does not open lock 14
    assert not parsed.consistent() and parsed.top_end_char(locks, num_top=1) is None
    truncated = tb.parse_trace("A44 35176 176")
    assert len(truncated.lines) == 1 and not truncated.lines[0].complete and truncated.answer is None
    assert tb.parse_trace("hello\n").malformed


def test_tokens_are_digit_by_digit_and_lines_cost_what_the_budget_assumes(tokenizer):
    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    assert count("1234567890") == 10
    for depth, tries in ((1, 1), (1, 9), (4, 3), (9, 2)):
        lock = tb.Lock.of_key(depth, 5)
        order = [k for k in tb.KEYS if k != 5][: tries - 1] + [5]
        line = tb.lock_line("C", lock, order)
        # header 3, each try a space, the key and d chain values, " key", " k", ".", newline
        assert count(line) == 3 + tries * (depth + 2) + 5 == tb.line_tokens(depth, tries)
    assert count(tb.ANSWER.format("1" * 12)) == tb.ANSWER_TOKENS
    labels = tokenizer("\n".join(tb.LABELS), add_special_tokens=False)["input_ids"]
    assert len(labels) == 2 * len(tb.LABELS) - 1  # each label one token


def test_guided_prompt_is_the_unguided_prompt_plus_the_prefix(tokenizer, splits):
    from pope.prompts import PromptSpec, render_prompt

    data = tb.data_config()
    assert data.instruction("guided") == data.instruction("unguided")
    for instance in splits["train_hard"][:3]:
        problem = instance.problem
        unguided = render_prompt(tokenizer, PromptSpec(problem, "unguided", 0), data)
        for shown in (1, 2, 3):
            prefix = "".join(problem.solution_steps[:shown])
            guided = render_prompt(tokenizer, PromptSpec(problem, "guided", shown), data)
            assert guided == unguided + prefix
            ids = tokenizer(guided, add_special_tokens=False)["input_ids"]
            apart = tokenizer(unguided, add_special_tokens=False)["input_ids"]
            assert ids == apart + tokenizer(prefix, add_special_tokens=False)["input_ids"]


def test_answers_check_with_math_verify():
    from math_verify import parse, verify

    gold = parse("$123456789123$")
    assert verify(gold, parse(tb.ANSWER.format("123456789123")))
    assert not verify(gold, parse(tb.ANSWER.format("123456789124")))
    assert not verify(gold, parse(tb.ANSWER.format("12345678912")))
    # math-verify reads the last number of a completion without \boxed: a truncated trace would match a
    # 2-digit answer with a d=1 try, hence easy problems have 3..4 locks and hard ones 12 (a trace only
    # writes numbers of 1, 2, 5 or 10 digits)
    assert verify(parse("$41$"), parse("A13 43 key 4.\nB17 41"))
    locks = (tb.Lock(1, 3), tb.Lock(1, 7), tb.Lock(1, 4))  # keys 4, 1 and 2
    assert tb.answer_of(locks) == "412"
    assert not verify(parse("$412$"), parse("A13 43 key 4.\nB17 41 key 1.\nC14 24"))
    assert not verify(parse("$412$"), parse("A13 43 key 4.\nB17 41 key 1.\nC14 24 key 2."))
    rng = random.Random(0)
    assert {len(tb.easy_locks(rng)) for _ in range(200)} == {3, 4}


def test_splits_are_deterministic_disjoint_and_reserved(tmp_path, splits):
    first = tb.write_splits(tmp_path / "a", seed=0)
    again = tb.write_splits(tmp_path / "b", seed=0)
    other = tb.write_splits(tmp_path / "c", seed=1)
    assert set(first) == {"train_hard", "heldout_hard", "calibration", "easy"}
    for name in first:
        assert first[name].read_bytes() == again[name].read_bytes() != other[name].read_bytes()
    rows = {name: [json.loads(x) for x in path.read_text().splitlines()] for name, path in first.items()}
    assert [len(rows[n]) for n in ("train_hard", "heldout_hard", "calibration", "easy")] == [36, 36, 36, 32]
    for name in ("train_hard", "heldout_hard", "calibration"):
        arms = [r["arm"] for r in rows[name]]
        assert arms[:3] == ["H-shared", "H-unshared", "H-blind"] and all(arms.count(a) == 12 for a in tb.ARMS)
    all_rows = [r for rs in rows.values() for r in rs]
    contents = [tb.locks_id(tb.locks_of(r["problem"])) for r in all_rows]
    assert len(set(contents)) == len(contents) == 140  # no lock list twice, across splits too
    assert len({r["id"] for r in all_rows}) == 140
    assert all(tb.is_eval_locks(tb.locks_of(r["problem"])) for r in all_rows)
    # pretraining never draws a reserved list
    tokenizer_free_rng = random.Random(0)
    for kind in ("mechanics", "mixed", "blind", "hard"):
        drawn = [tb._corpus_locks(tokenizer_free_rng, kind) for _ in range(400)]
        assert 0.15 < sum(map(tb.is_eval_locks, drawn)) / 400 < 0.35  # the hash reserves about a quarter
    configs = {"assistant_start": tb.data_config(), "user_end": tb.data_config("user_end")}
    tok = tb.build_tokenizer(0)
    for _ in range(30):
        prompt, _, _ = tb.document(tokenizer_free_rng, tok, tb.BASE_SPEC, configs)
        text = tok.decode(prompt)
        user = text.split("<|im_start|>user\n")[1].split("<|im_end|>")[0]
        assert not tb.is_eval_locks(tb.locks_of(user))


def test_split_files_load_through_the_pipeline_loader(tmp_path, splits):
    from pope.datasets import FieldMap, load_file

    paths = tb.write_splits(tmp_path, seed=0)
    problems, report = load_file(paths["train_hard"], FieldMap(id="id"))
    assert report.rows_bad == 0
    assert [p.solution_steps for p in problems] == [i.problem.solution_steps for i in splits["train_hard"]]
    assert problems[0].problem_id == "train_hard-shared-00"


def test_arms_key_distributions(splits):
    """Top keys: skewed in H-shared, uniform elsewhere; descent keys skewed everywhere.

    Bounds by hand. Skewed P(k) = 0.5^k / (1 - 2^-9): P(1) = 0.501, E[k] = 1.98, sd(k) = 1.39.
    Uniform: P(1) = 1/9, E[k] = 5, sd(k) = 2.58. Over many draws the share of key 1 must sit within
    5 standard errors of its value: sqrt(p(1-p)/n).
    """
    rng = random.Random(7)
    n = 3000
    for arm, (depth, weights) in tb.ARMS.items():
        keys = [lock.key for _ in range(n // 3) for lock in tb.hard_locks(rng, arm)[:3]]
        share = keys.count(1) / len(keys)
        expected = 0.5 / (1 - 2**-9) if weights is tb.SKEWED else 1 / 9
        assert abs(share - expected) < 5 * math.sqrt(expected * (1 - expected) / len(keys)), arm
        assert all(lock.depth == depth for lock in tb.hard_locks(rng, arm)[:3])
    descent = [lock.key for _ in range(300) for lock in tb.hard_locks(rng, "H-blind")[3:]]
    assert all(lock.depth == 1 for lock in tb.hard_locks(rng, "H-blind")[3:])
    mean = sum(descent) / len(descent)
    assert abs(mean - 1.98) < 5 * 1.39 / math.sqrt(len(descent))
    # and the split itself: 36 top keys per arm; H-shared's mean top key is far below uniform's 5
    for arm in tb.ARMS:
        top = [lock.key for i in splits["train_hard"] if i.arm == arm for lock in tb.locks_of(i.problem)[:3]]
        m = sum(top) / len(top)
        assert (m < 3.0) if arm == "H-shared" else (m > 3.5), (arm, m)


def test_base_model_search_is_random_order_never_small_first():
    """The corpus's first tries are uniform over 1..9, whatever the key distribution."""
    rng = random.Random(3)
    firsts = [tb.random_order(tb._draw(rng, 1, tb.SKEWED), rng)[0] for _ in range(9000)]
    for k in tb.KEYS:
        assert abs(firsts.count(k) / 9000 - 1 / 9) < 5 * math.sqrt((1 / 9) * (8 / 9) / 9000)
    assert tb.small_first(tb.Lock.of_key(1, 3)) == [1, 2, 3]


def test_testbed_v2_configs_parse():
    from pope.config import load_config

    files = sorted((ROOT / "configs" / "testbed_v2").glob("*.yaml"))
    names = {f.stem for f in files}
    assert names >= {"pope", "grpo_hard", "grpo_hard_easy", "entropy", "clip_higher", "passk", "sft_rl"}
    assert names >= {"pope_easy", "pope_user_end"}
    for path in files:
        config = load_config(path)
        assert config.model.path == "builtin:testbed-v2"
        assert config.data.instruction_version == tb.INSTRUCTION_VERSION
        assert config.data.source.startswith("runs/testbed_v2/data/")
        expected = "user_end" if path.stem == "pope_user_end" else "assistant_start"
        assert config.data.prefix_placement == expected
    assert load_config(ROOT / "configs/testbed_v2/passk.yaml").preprocess.advantage == "passk"
    assert load_config(ROOT / "configs/testbed_v2/clip_higher.yaml").learner.eps_high == 0.28


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_a_pilot_build_loads_and_generates(tmp_path):
    """A few training steps of a reduced spec: the build path, the cache, and a model transformers loads."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    first = {
        **tb.STAGE1_SPEC,
        "name": "testbed-v2-test",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 1,
        "num_attention_heads": 1,
        "num_key_value_heads": 1,
        "train_steps": 3,
        "batch_size": 4,
        "warmup_steps": 1,
    }
    spec = {**first, "version": 2, "init": first, "train_steps": 2, "doc_mix": tb.BASE_SPEC["doc_mix"],
            "first_try_share": 0.5}  # fmt: skip
    folder = tb.resolve_base_model(tmp_path, spec, seed=0)  # builds stage 1, then continues it
    parent = tmp_path / f"testbed-v2-test-v1-{tb.spec_hash(first, 0)}"
    assert (parent / "config.json").is_file() and folder != parent.resolve()
    assert (parent / "model.safetensors").read_bytes() != (folder / "model.safetensors").read_bytes()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert tb.resolve_base_model(tmp_path, spec, seed=0) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert json.loads((folder / "pope_spec.json").read_text())["spec_hash"] == tb.spec_hash(spec, 0)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    from pope.prompts import PromptSpec, render_prompt

    problem = tb.make_splits(0)["easy"][0].problem
    prompt = render_prompt(tokenizer, PromptSpec(problem, "unguided", 0), tb.data_config())
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    torch.manual_seed(0)
    out = model.generate(ids, max_new_tokens=5, do_sample=True, top_k=0, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] <= ids.shape[1] + 5 and out.shape[1] > ids.shape[1]


def test_short_documents_mask_exactly_the_first_tried_key_of_every_line():
    """Stage 3's short documents: many first-try lines, and no loss on any line's first key, so they
    teach continuing after short lines without teaching which key to try first."""
    from pope.units import split_units

    configs = {"assistant_start": tb.data_config(), "user_end": tb.data_config("user_end")}
    tok = tb.build_tokenizer(0)
    spec = {**tb.BASE_SPEC, "doc_mix": {"short": 1.0}}
    rng = random.Random(7)
    first_try = lines = 0
    for _ in range(60):
        prompt, target, masked = tb.document(rng, tok, spec, configs)
        text = tok.decode(target[:-1])
        parsed = tb.parse_trace(text)
        assert parsed.lines and len(masked) == len(parsed.lines)
        # the masked tokens, decoded one by one, are the lines' first keys in order
        assert [tok.decode([target[i]]) for i in masked] == [str(line.tries[0].key) for line in parsed.lines]
        first_try += sum(len(line.tries) == 1 for line in parsed.lines)
        lines += len(parsed.lines)
        assert len(split_units(text)) == len(parsed.lines) + 1
    # each line first-try with probability 0.5, plus 1/9 of the others: 0.5 + 0.5/9 = 0.556
    assert 0.47 < first_try / lines < 0.64
    plain = tb.document(random.Random(7), tok, {**tb.BASE_SPEC, "doc_mix": {"long": 1.0}}, configs)
    assert plain[2] == ()


def test_the_base_spec_chain_keeps_the_built_stages():
    """Stage 1 and stage 2 keep the hashes their gate measurements were made on."""
    assert tb.spec_hash(tb.STAGE1_SPEC, 0) == "3f00d69730d5"
    assert tb.spec_hash(tb.STAGE2_SPEC, 0) == "1502d8e4649c"
    assert tb.spec_hash(tb.STAGE3_SPEC, 0) == "4d0ace88a04f"
    assert tb.BASE_SPEC["init"] == tb.STAGE3_SPEC and tb.STAGE3_SPEC["init"] == tb.STAGE2_SPEC
    assert tb.STAGE2_SPEC["init"] == tb.STAGE1_SPEC
