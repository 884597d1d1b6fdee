"""pass@k: the unbiased estimate of a metric, and the per-rollout weights that train for it.

For a problem with n sampled rollouts of which c are correct, the unbiased pass@k estimate
(Chen et al. 2021, "Evaluating Large Language Models Trained on Code", eq. 1) is

    rho(n, c, k) = 1 - C(n-c, k) / C(n, k)
                 = 1 - prod_{i=n-c+1}^{n} (1 - k/i)      when n - c >= k
                 = 1                                     when n - c <  k

The product form never builds a binomial, so n = 10^5 is as cheap and as exact as n = 8.

Training for pass@k (binary rewards). Score every k-subset S of the group by max_{j in S} r_j;
the mean and std of that score over all subsets are rho and sigma = sqrt(rho (1 - rho)).
Rollout i's advantage is the average, over the C(n-1, k-1) subsets containing i, of the
subset's normalised score. In closed form (Chen et al. 2025, "Pass@k Training for Adaptively
Balancing Exploration and Exploitation of Large Reasoning Models", arXiv 2508.10751,
"analytical derivation"; also RUCAIBox/Passk_Training `code/passk_adv.py`):

    A_pos = (1 - rho) / sigma                                          r_i = 1
    A_neg = (1 - rho - C(n-c-1, k-1) / C(n-1, k-1)) / sigma            r_i = 0

A correct rollout makes every subset containing it score 1; a wrong one scores 1 only when some
other member is correct, which fails with probability C(n-c-1, k-1) / C(n-1, k-1). So, exactly,

    sigma * A_i = E[max_{j in S} r_j | i in S] - rho     (S uniform over the k-subsets)

and the advantages sum to zero over the group for every k (n C(n-c,k)/C(n,k) equals
(n-c) C(n-c-1,k-1)/C(n-1,k-1)). For k = 1 they reduce to GRPO's (r_i - mean r) / std r.

Walder & Karkhanis 2025 ("Pass@K Policy Optimization", arXiv 2505.15201, binary case) give the
unbiased gradient of pass@k as sum_i s_i grad log p(x_i) with s_i = k/n for a correct rollout
and s_i = (k/n) rho(n-1, c, k-1) for a wrong one: s_i = (k/n) E[max | i in S]. The unnormalised
advantage here is (n/k) s_i - rho, i.e. PKPO's weights rescaled with rho as the baseline.
"""

from __future__ import annotations

import math

import numpy as np


def _all_wrong_fraction(n: int, c: int, k: int) -> float:
    """C(n-c, k) / C(n, k): the share of k-subsets of n rollouts with no correct one (k >= 0)."""
    if n - c < k:
        return 0.0
    # C(n-c,k)/C(n,k) = prod_{i=n-c+1}^{n} (i-k)/i; an empty product (c = 0 or k = 0) is 1.
    return float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k)."""
    if n < 1:
        raise ValueError(f"n (samples) must be >= 1, got n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"c (correct samples) must be in [0, n={n}], got c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n={n}], got k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - _all_wrong_fraction(n, c, k)


def pass_at_k_table(counts: list[tuple[int, int]], ks: list[int]) -> dict[int, float]:
    """Mean pass@k over problems, for each k in ``ks``; ``counts[p] = (n, c)`` of problem p."""
    if not counts:
        raise ValueError("counts is empty: pass@k needs at least one problem")
    for index, (n, c) in enumerate(counts):
        if n < 1 or not 0 <= c <= n:
            raise ValueError(f"problem {index} has (n, c) = ({n}, {c}); need n >= 1 and 0 <= c <= n")
        for k in ks:
            if not 1 <= k <= n:
                raise ValueError(f"problem {index} has n={n} samples, too few for k={k} (need 1 <= k <= n)")
    return {k: math.fsum(pass_at_k(n, c, k) for n, c in counts) / len(counts) for k in ks}


def _check_group(rewards: list[float], k: int) -> tuple[int, int]:
    n = len(rewards)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, group size {n}], got k={k}")
    for index, reward in enumerate(rewards):
        if reward != 0 and reward != 1:
            raise ValueError(f"pass@k advantages need binary rewards; rewards[{index}] = {reward!r}")
    return n, sum(1 for reward in rewards if reward == 1)


def _group_terms(n: int, c: int, k: int) -> tuple[float, float, float]:
    """(1 - rho, sigma * A_pos, sigma * A_neg) for a group of n rollouts with c correct."""
    all_wrong = _all_wrong_fraction(n, c, k)  # 1 - rho, computed without the cancellation
    others_all_wrong = _all_wrong_fraction(n - 1, c, k - 1)  # C(n-c-1, k-1) / C(n-1, k-1)
    return all_wrong, all_wrong, all_wrong - others_all_wrong


def passk_advantages_unnormalized(rewards: list[float], k: int) -> list[float]:
    """E[max reward of a random k-subset | rollout i in it] - rho, for binary ``rewards``.

    Correct rollouts get 1 - rho, wrong ones 1 - rho - C(n-c-1, k-1) / C(n-1, k-1); the values
    sum to zero. A group that is all correct or all wrong gets zeros.
    """
    n, c = _check_group(rewards, k)
    _, positive, negative = _group_terms(n, c, k)
    return [positive if reward == 1 else negative for reward in rewards]


def passk_advantages(rewards: list[float], k: int) -> list[float]:
    """The pass@k advantages of Chen et al. 2025 (arXiv 2508.10751) for binary ``rewards``.

        A_pos = (1 - rho) / sigma
        A_neg = (1 - rho - C(n-c-1, k-1) / C(n-1, k-1)) / sigma
        rho   = 1 - C(n-c, k) / C(n, k),   sigma = sqrt(rho (1 - rho))

    When sigma == 0 (rho is 0 or 1: no correct rollout, or every k-subset holds one) every
    advantage is 0; the reference code adds 1e-6 to sigma instead, which gives the same zeros.
    """
    n, c = _check_group(rewards, k)
    all_wrong, positive, negative = _group_terms(n, c, k)
    sigma = math.sqrt((1.0 - all_wrong) * all_wrong)
    if sigma == 0.0:
        return [0.0] * n
    return [(positive if reward == 1 else negative) / sigma for reward in rewards]
