"""Group advantages: each rollout's reward against its own group's (``ESTIMATORS``).

    group_mean      A_i = r_i - mean(r)
    leave_one_out   A_i = r_i - mean_{j != i} r_j  =  n / (n - 1) * (r_i - mean(r))
    passk           the pass@k objective's unbiased per-sample weights for binary rewards
                    (``pope.passk.passk_advantages``)
    scale_by_std    any of the first two divided by (std(r) + eps), population std (GRPO)

A group whose rewards are all equal has A = 0 for every rollout: it carries no signal.
"""

from __future__ import annotations

import numpy as np


def group_mean(rewards: np.ndarray, k: int) -> np.ndarray:
    return rewards - rewards.mean()


def leave_one_out(rewards: np.ndarray, k: int) -> np.ndarray:
    n = len(rewards)
    return (rewards * n - rewards.sum()) / (n - 1)


def passk(rewards: np.ndarray, k: int) -> np.ndarray:
    from pope.passk import passk_advantages

    if not np.isin(rewards, (0.0, 1.0)).all():
        raise ValueError(f"the pass@k advantage needs binary rewards, got {sorted(set(rewards.tolist()))}")
    return np.asarray(passk_advantages(rewards.tolist(), k), dtype=np.float64)


ESTIMATORS = {"group_mean": group_mean, "leave_one_out": leave_one_out, "passk": passk}


def group_advantages(
    rewards: list[float],
    scale_by_std: bool = False,
    eps: float = 1e-6,
    estimator: str = "group_mean",
    k: int = 1,
) -> list[float]:
    if len(rewards) < 2:
        raise ValueError(f"a group needs at least 2 rollouts, got {len(rewards)}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"advantage estimator {estimator!r}: choose one of {sorted(ESTIMATORS)}")
    r = np.asarray(rewards, dtype=np.float64)
    advantages = ESTIMATORS[estimator](r, k)
    if scale_by_std and estimator != "passk":  # the pass@k weights are already normalised
        advantages = advantages / (r.std() + eps)
    return advantages.tolist()
