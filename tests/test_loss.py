"""The GRPO surrogate and sequence packing, against naive float64 references."""

import math

import pytest
import torch

from broker.schemas import PackedArray, Rollout, RolloutGroup, ScoredGroup
from learner.loss import clipped_surrogate, token_logprobs
from learner.policy import pack_groups

pytestmark = pytest.mark.unit


def naive_loss(logp_new, logp_old, adv, mask, eps_low, eps_high):
    total, count = 0.0, 0
    for i in range(len(mask)):
        for t in range(len(mask[i])):
            if not mask[i][t]:
                continue
            r = math.exp(logp_new[i][t] - logp_old[i][t])
            clipped = min(max(r, 1 - eps_low), 1 + eps_high)
            total += -min(r * adv[i][t], clipped * adv[i][t])
            count += 1
    return total / count


def test_surrogate_matches_naive_float64():
    gen = torch.Generator().manual_seed(0)
    new = torch.randn(3, 5, generator=gen, dtype=torch.float64) * 0.3 - 1
    old = torch.randn(3, 5, generator=gen, dtype=torch.float64) * 0.3 - 1
    adv = torch.tensor([[0.5] * 5, [-0.25] * 5, [1.5] * 5], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1], [1, 0, 1, 0, 1]], dtype=torch.float64)
    terms = clipped_surrogate(new, old, adv, mask, eps_low=0.2, eps_high=0.28)
    got = (terms.per_token.sum() / mask.sum()).item()
    want = naive_loss(new.tolist(), old.tolist(), adv.tolist(), mask.tolist(), 0.2, 0.28)
    assert got == pytest.approx(want, rel=1e-12)


def test_clip_by_hand():
    # ratio e^0.5 = 1.6487 with A=+1: clipped at 1.2 -> loss -1.2; ratio e^-0.5 = 0.6065 with A=-1:
    # min(-0.6065, -0.8) = -0.8 -> loss +0.8. Mean = (-1.2 + 0.8) / 2 = -0.2
    new = torch.tensor([[0.5, -0.5]], dtype=torch.float64)
    old = torch.zeros(1, 2, dtype=torch.float64)
    adv = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    terms = clipped_surrogate(new, old, adv, torch.ones(1, 2), 0.2, 0.2)
    assert (terms.per_token.sum() / 2).item() == pytest.approx(-0.2, abs=1e-12)
    assert terms.clipped_high.sum().item() == 1 and terms.clipped_low.sum().item() == 1


def test_gradient_matches_finite_differences():
    torch.manual_seed(0)
    new = (torch.randn(2, 4, dtype=torch.float64) * 0.1).requires_grad_()
    old = torch.randn(2, 4, dtype=torch.float64) * 0.1
    adv = torch.tensor([[1.0] * 4, [-0.5] * 4], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 1], [1, 1, 1, 0]], dtype=torch.float64)

    def f(x):
        return clipped_surrogate(x, old, adv, mask, 0.2, 0.2).per_token.sum() / mask.sum()

    f(new).backward()
    h = 1e-6
    for i in range(2):
        for t in range(4):
            plus, minus = new.detach().clone(), new.detach().clone()
            plus[i, t] += h
            minus[i, t] -= h
            numeric = (f(plus) - f(minus)).item() / (2 * h)
            assert new.grad[i, t].item() == pytest.approx(numeric, abs=1e-7)


def test_token_logprobs_with_temperature():
    logits = torch.tensor([[[2.0, 0.0, -1.0]]])
    got = token_logprobs(logits, torch.tensor([[0]]), temperature=2.0).item()
    z = [1.0, 0.0, -0.5]
    want = z[0] - math.log(sum(math.exp(v) for v in z))
    assert got == pytest.approx(want, rel=1e-6)


def _scored(prompt, completions, advantages):
    rollouts = [
        Rollout(
            completion_ids=PackedArray.of(c, "int32"),
            behaviour_logprobs=PackedArray.of([-0.1 * (k + 1) for k in range(len(c))], "float32"),
            text="",
            finish_reason="stop",
        )
        for c in completions
    ]
    group = RolloutGroup(
        run_id="r",
        group_id="g",
        problem_id="p",
        variant="guided",
        prefix_units=1,
        prefix_tokens=2,
        answer="1",
        prompt_ids=PackedArray.of(prompt, "int32"),
        rollouts=rollouts,
        temperature=1.0,
        max_new_tokens=64,
        policy_version_start=0,
        policy_version_end=0,
        actor_id="a",
        sampled_at=0.0,
        generate_s=0.0,
    )
    return ScoredGroup(
        group=group,
        rewards=[0.0] * len(completions),
        advantages=advantages,
        verdicts=["wrong"] * len(completions),
        worker_id="w",
    )


def test_pack_puts_loss_on_completion_tokens_only():
    # prompt = 3 chat tokens + 2 oracle-prefix tokens: none of the 5 may carry loss
    prompt = [10, 11, 12, 90, 91]
    scored = _scored(prompt, [[20, 21, 22], [30]], [0.5, -0.5])
    input_ids, attention, targets, mask, behaviour, adv = pack_groups([scored], pad_id=0)
    assert input_ids.tolist() == [prompt + [20, 21, 22], prompt + [30, 0, 0]]
    assert attention.tolist() == [[1] * 8, [1] * 6 + [0, 0]]
    # position j predicts targets[j] = input_ids[j+1]; loss exactly where the target is a completion token
    for row, completion in enumerate([[20, 21, 22], [30]]):
        masked_targets = [targets[row, j].item() for j in range(targets.shape[1]) if mask[row, j]]
        assert masked_targets == completion
        assert not any(mask[row, j] and targets[row, j].item() in prompt for j in range(targets.shape[1]))
    assert behaviour[0, 4:7].tolist() == pytest.approx([-0.1, -0.2, -0.3])
    assert adv[0, 4:7].tolist() == [0.5] * 3 and adv[1, 4].item() == -0.5 and mask[1].sum() == 1


def test_prefix_tokens_get_no_gradient():
    """A loss built from the packed mask has zero gradient on every prompt (and oracle-prefix) position."""
    prompt = [1, 2, 3, 4, 5]
    scored = _scored(prompt, [[6, 7]], [1.0])
    input_ids, _, targets, mask, behaviour, adv = pack_groups([scored], pad_id=0)
    logits = torch.randn(1, input_ids.shape[1] - 1, 16, requires_grad=True)
    logp = token_logprobs(logits, targets)
    terms = clipped_surrogate(logp, behaviour, adv, mask, 0.2, 0.2)
    terms.per_token.sum().backward()
    grad_per_position = logits.grad.abs().sum(-1)[0]
    assert grad_per_position[: len(prompt) - 1].sum().item() == 0.0
    assert (grad_per_position[len(prompt) - 1 : len(prompt) + 1] > 0).all()


# -- the options, each against a naive float64 per-token loop ---------------------------------------


def naive_token_loss(
    new, old, a, eps_low, eps_high, dual=None, w=1.0, ent=0.0, beta_h=0.0, ref=None, beta_kl=0.0, est="k3"
):
    r = math.exp(new - old)
    loss = -min(r * a, min(max(r, 1 - eps_low), 1 + eps_high) * a)
    if dual is not None and a < 0:
        loss = min(loss, -dual * a)
    loss *= w
    loss -= beta_h * ent
    if ref is not None:
        kl = (new - ref) if est == "k1" else (math.exp(ref - new) - (ref - new) - 1)
        loss += beta_kl * kl
    return loss


@pytest.fixture
def case():
    gen = torch.Generator().manual_seed(3)
    new = torch.randn(2, 4, generator=gen, dtype=torch.float64) * 0.5 - 1
    old = torch.randn(2, 4, generator=gen, dtype=torch.float64) * 0.5 - 1
    ref = torch.randn(2, 4, generator=gen, dtype=torch.float64) * 0.5 - 1
    ent = torch.rand(2, 4, generator=gen, dtype=torch.float64)
    adv = torch.tensor([[2.0] * 4, [-1.5] * 4], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.float64)
    return new, old, ref, ent, adv, mask


@pytest.mark.parametrize("est", ["k1", "k3"])
def test_all_terms_against_naive(case, est):
    new, old, ref, ent, adv, mask = case
    w = torch.full_like(new, 0.7)
    terms = clipped_surrogate(
        new, old, adv, mask, 0.2, 0.3, dual_clip=3.0, is_weight=w, entropy=ent, entropy_coef=0.01,
        logp_ref=ref, kl_coef=0.05, kl_estimator=est,
    )  # fmt: skip
    for i in range(2):
        for t in range(4):
            want = naive_token_loss(
                new[i, t].item(), old[i, t].item(), adv[i, t].item(), 0.2, 0.3, dual=3.0, w=0.7,
                ent=ent[i, t].item(), beta_h=0.01, ref=ref[i, t].item(), beta_kl=0.05, est=est,
            )  # fmt: skip
            assert terms.per_token[i, t].item() == pytest.approx(want * mask[i, t].item(), abs=1e-12)


def test_dual_clip_caps_negative_advantage_loss_by_hand():
    # ratio e^2 = 7.389 with A = -1: the clipped surrogate gives loss 7.389; dual clip c=3 caps it at 3
    new, old = torch.tensor([[2.0]], dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
    adv, mask = torch.tensor([[-1.0]], dtype=torch.float64), torch.ones(1, 1)
    assert clipped_surrogate(new, old, adv, mask, 0.2, 0.2).per_token.item() == pytest.approx(math.exp(2))
    assert clipped_surrogate(new, old, adv, mask, 0.2, 0.2, dual_clip=3.0).per_token.item() == pytest.approx(
        3.0
    )


def test_k3_is_nonnegative_and_zero_at_equality():
    from learner.loss import kl_k3

    x = torch.linspace(-3, 0, 7, dtype=torch.float64)
    assert (kl_k3(x, x) == 0).all()
    assert (kl_k3(x, x.flip(0)) >= 0).all()


def test_aggregations_by_hand():
    from learner.loss import AGGREGATIONS, StepNorm

    # two sequences: losses [1, 2, 3] (3 tokens) and [4] (1 token)
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    norm = StepNorm(tokens=4.0, sequences=2.0, constant=10.0)
    assert AGGREGATIONS["token_mean"](per_token, mask, norm).item() == pytest.approx(10 / 4)
    assert AGGREGATIONS["sequence_mean"](per_token, mask, norm).item() == pytest.approx((2.0 + 4.0) / 2)
    assert AGGREGATIONS["token_sum"](per_token, mask, norm).item() == pytest.approx(10 / 10)


def test_effective_sample_size_by_hand():
    from learner.loss import effective_sample_size

    w = torch.tensor([1.0, 1.0, 2.0, 9.0])
    m = torch.tensor([1.0, 1.0, 1.0, 0.0])
    assert effective_sample_size(w, m) == pytest.approx(16 / (3 * 6))  # (1+1+2)^2 / (3 (1+1+4))
    assert effective_sample_size(torch.ones(5), torch.ones(5)) == pytest.approx(1.0)


def test_entropy_by_hand():
    from learner.loss import token_entropy

    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25]]]))
    want = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert token_entropy(logits).item() == pytest.approx(want, rel=1e-6)


def test_batch_advantage_normalisation_by_hand():
    from learner.policy import normalize_batch_advantages

    g1 = _scored([1, 2], [[3], [4]], [0.5, -0.5])
    g2 = _scored([1, 2], [[3], [4]], [1.5, -1.5])
    flat = [0.5, -0.5, 1.5, -1.5]
    std = math.sqrt(sum(a * a for a in flat) / 4)  # mean is 0
    got = normalize_batch_advantages([g1, g2], "batch_std")
    assert [x for g in got for x in g] == pytest.approx([a / (std + 1e-6) for a in flat])
    assert normalize_batch_advantages([g1, g2], "none") == [[0.5, -0.5], [1.5, -1.5]]
