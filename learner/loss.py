"""The GRPO loss: a clipped surrogate on importance ratios, and the paper's optional terms.

For every completion token t of rollout i (prompt tokens, the oracle prefix included, carry no
loss and no ratio):

    r_t   = exp(logp_new_t - logp_old_t)
    L_t   = -min(r_t A_i, clip(r_t, 1 - eps_low, 1 + eps_high) A_i)
    dual clip (c > 1, only where A_i < 0):  L_t = min(L_t, -c A_i)
    truncated IS: L_t *= w_t,  w_t = min(exp(logp_old_t - logp_behaviour_t), cap)   (no gradient)
    entropy bonus:  L_t -= beta_H H_t
    KL penalty:     L_t += beta_KL k_t,  k1 = logp_new - logp_ref,
                                          k3 = exp(logp_ref - logp_new) - (logp_ref - logp_new) - 1

``logp_old`` is the behaviour logprob the actor recorded (default), or, under truncated IS, the
learner's own logprob at the start of the step: then the ratio measures the update and w_t
corrects the gap between the sampling engine (and its staleness) and the learner.

Aggregation of L_t over a step (``AGGREGATIONS``):
    token_mean     sum_t L_t / (tokens in the step)                    (default; DAPO)
    sequence_mean  mean over sequences of (mean over its tokens of L_t)   (GRPO paper)
    token_sum      sum_t L_t / (sequences x L_max)                    (Dr. GRPO; no length bias)

where L_max is the completion budget (``max_new_tokens``, carried by each group): Dr. GRPO's
(1/G) sum_i sum_t L_t / L_max, over every group of the step.

KL: k3 is the estimator to penalise with. k1 = logp_new - logp_ref has zero expected gradient under
on-policy sampling (E[grad log p_new] = 0), so as a loss term it does nothing in expectation; it is
kept as a logged diagnostic (``kl`` with learner.kl_coef = 0), and config rejects it as a penalty.
The default, token_mean, weighs each generated token equally, so a long wrong answer is not
diluted the way sequence_mean dilutes it, and it needs no constant to tune.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LossTerms:
    """Per-token loss and diagnostics, all [B, T] and zero outside the mask."""

    per_token: torch.Tensor
    clipped_low: torch.Tensor
    clipped_high: torch.Tensor
    kl: torch.Tensor | None


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / T)[target] per position; logits [B, T, V], targets [B, T] -> [B, T]."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """H = -sum_v p_v log p_v of softmax(logits / T); [B, T, V] -> [B, T]."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def kl_k1(logp_new: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    return logp_new - logp_ref


def kl_k3(logp_new: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """Schulman's k3: unbiased and always >= 0."""
    delta = logp_ref - logp_new
    return torch.exp(delta) - delta - 1.0


KL_ESTIMATORS = {"k1": kl_k1, "k3": kl_k3}


def clipped_surrogate(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float,
    eps_high: float,
    dual_clip: float | None = None,
    is_weight: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    logp_ref: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
) -> LossTerms:
    """All inputs [B, T]; ``advantages`` already broadcast over each rollout's tokens."""
    ratio = torch.exp(logp_new - logp_old)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * advantages
    per_token = -torch.minimum(unclipped, clipped)
    if dual_clip is not None:
        per_token = torch.where(advantages < 0, torch.minimum(per_token, -dual_clip * advantages), per_token)
    if is_weight is not None:
        per_token = per_token * is_weight.detach()
    if entropy_coef and entropy is not None:
        per_token = per_token - entropy_coef * entropy
    kl = None
    if logp_ref is not None:
        kl = KL_ESTIMATORS[kl_estimator](logp_new, logp_ref)
        if kl_coef:
            per_token = per_token + kl_coef * kl
    mask = mask.to(per_token.dtype)
    with torch.no_grad():
        low = ((ratio < 1.0 - eps_low) & (advantages < 0)).to(mask.dtype) * mask
        high = ((ratio > 1.0 + eps_high) & (advantages > 0)).to(mask.dtype) * mask
    return LossTerms(per_token * mask, low, high, kl)


def aggregate_token_mean(per_token: torch.Tensor, mask: torch.Tensor, step: StepNorm) -> torch.Tensor:
    return per_token.sum() / step.tokens


def aggregate_sequence_mean(per_token: torch.Tensor, mask: torch.Tensor, step: StepNorm) -> torch.Tensor:
    lengths = mask.sum(-1).clamp(min=1.0)
    return (per_token.sum(-1) / lengths).sum() / step.sequences


def aggregate_token_sum(per_token: torch.Tensor, mask: torch.Tensor, step: StepNorm) -> torch.Tensor:
    return per_token.sum() / step.constant


@dataclass(frozen=True)
class StepNorm:
    """Step-wide denominators (over every micro-batch and every data-parallel rank)."""

    tokens: float
    sequences: float
    constant: float  # token_sum: sequences x L_max


AGGREGATIONS = {
    "token_mean": aggregate_token_mean,
    "sequence_mean": aggregate_sequence_mean,
    "token_sum": aggregate_token_sum,
}


def effective_sample_size(weights: torch.Tensor, mask: torch.Tensor) -> float:
    """Normalised ESS of importance weights over masked tokens: (sum w)^2 / (n sum w^2), in (0, 1]."""
    w = weights[mask.bool()].double()
    if w.numel() == 0:
        return float("nan")
    return float(w.sum() ** 2 / (w.numel() * (w**2).sum()))
