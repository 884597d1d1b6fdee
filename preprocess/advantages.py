"""Group advantages for GRPO: each rollout's reward against its own group's.

    A_i = r_i - mean(r)                      (default)
    A_i = (r_i - mean(r)) / (std(r) + eps)   (scale_by_std; population std)

A group whose rewards are all equal has A = 0 for every rollout: it carries no signal.
"""

from __future__ import annotations

import numpy as np


def group_advantages(rewards: list[float], scale_by_std: bool = False, eps: float = 1e-6) -> list[float]:
    if len(rewards) < 2:
        raise ValueError(f"a group needs at least 2 rollouts, got {len(rewards)}")
    r = np.asarray(rewards, dtype=np.float64)
    centred = r - r.mean()
    if scale_by_std:
        centred = centred / (r.std() + eps)
    return centred.tolist()
