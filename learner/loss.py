"""The GRPO loss: a clipped surrogate on importance ratios against the behaviour policy.

For every completion token t of rollout i (prompt tokens, oracle prefix included, carry no loss):

    r_t   = exp(logp_new_t - logp_behaviour_t)
    L_t   = -min(r_t * A_i, clip(r_t, 1 - eps_low, 1 + eps_high) * A_i)
    loss  = sum_t mask_t * L_t / sum_t mask_t          (token mean over the whole step)

The token mean weights every generated token equally, so long and short completions count by
their length; it is the aggregation of DAPO and the default here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SurrogateTerms:
    loss_sum: torch.Tensor  # sum over masked tokens of L_t (divide by the step's token count)
    clipped_low: torch.Tensor  # tokens where the lower clip was active (ratio < 1 - eps_low, A < 0)
    clipped_high: torch.Tensor  # tokens where the upper clip was active (ratio > 1 + eps_high, A > 0)
    ratio_sum: torch.Tensor


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / T)[target] per position; logits [B, T, V], targets [B, T] -> [B, T]."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def clipped_surrogate(
    logp_new: torch.Tensor,
    logp_behaviour: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float,
    eps_high: float,
) -> SurrogateTerms:
    """All inputs [B, T]; ``advantages`` already broadcast over each rollout's tokens."""
    ratio = torch.exp(logp_new - logp_behaviour)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * advantages
    per_token = -torch.minimum(unclipped, clipped)
    mask = mask.to(per_token.dtype)
    with torch.no_grad():
        low = ((ratio < 1.0 - eps_low) & (advantages < 0)).to(mask.dtype) * mask
        high = ((ratio > 1.0 + eps_high) & (advantages > 0)).to(mask.dtype) * mask
        ratio_sum = (ratio * mask).sum()
    return SurrogateTerms((per_token * mask).sum(), low.sum(), high.sum(), ratio_sum)
