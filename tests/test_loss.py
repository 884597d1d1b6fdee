"""The GRPO surrogate and sequence packing, against naive float64 references."""

import math

import pytest
import torch

from broker.schemas import PackedArray, Rollout, RolloutGroup, ScoredGroup
from learner.loss import clipped_surrogate, token_logprobs
from learner.trainer import pack_groups

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
    got = (terms.loss_sum / mask.sum()).item()
    want = naive_loss(new.tolist(), old.tolist(), adv.tolist(), mask.tolist(), 0.2, 0.28)
    assert got == pytest.approx(want, rel=1e-12)


def test_clip_by_hand():
    # ratio e^0.5 = 1.6487 with A=+1: clipped at 1.2 -> loss -1.2; ratio e^-0.5 = 0.6065 with A=-1:
    # min(-0.6065, -0.8) = -0.8 -> loss +0.8. Mean = (-1.2 + 0.8) / 2 = -0.2
    new = torch.tensor([[0.5, -0.5]], dtype=torch.float64)
    old = torch.zeros(1, 2, dtype=torch.float64)
    adv = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    terms = clipped_surrogate(new, old, adv, torch.ones(1, 2), 0.2, 0.2)
    assert (terms.loss_sum / 2).item() == pytest.approx(-0.2, abs=1e-12)
    assert terms.clipped_high.item() == 1 and terms.clipped_low.item() == 1


def test_gradient_matches_finite_differences():
    torch.manual_seed(0)
    new = (torch.randn(2, 4, dtype=torch.float64) * 0.1).requires_grad_()
    old = torch.randn(2, 4, dtype=torch.float64) * 0.1
    adv = torch.tensor([[1.0] * 4, [-0.5] * 4], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 1], [1, 1, 1, 0]], dtype=torch.float64)

    def f(x):
        return clipped_surrogate(x, old, adv, mask, 0.2, 0.2).loss_sum / mask.sum()

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
    terms.loss_sum.backward()
    grad_per_position = logits.grad.abs().sum(-1)[0]
    assert grad_per_position[: len(prompt) - 1].sum().item() == 0.0
    assert (grad_per_position[len(prompt) - 1 : len(prompt) + 1] > 0).all()
