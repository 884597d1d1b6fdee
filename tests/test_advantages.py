import math

import pytest

from preprocess.advantages import group_advantages

pytestmark = pytest.mark.unit


def test_mean_baseline_by_hand():
    # rewards 1,0,0,1 -> mean 0.5 -> +0.5, -0.5, -0.5, +0.5
    assert group_advantages([1, 0, 0, 1]) == [0.5, -0.5, -0.5, 0.5]
    # 1 of 4 correct -> mean 0.25
    assert group_advantages([1, 0, 0, 0]) == [0.75, -0.25, -0.25, -0.25]


def test_std_scaling_by_hand():
    # rewards 1,0,0,0: mean 0.25, population std sqrt(0.1875) = 0.4330127...
    std = math.sqrt((0.75**2 + 3 * 0.25**2) / 4)
    got = group_advantages([1, 0, 0, 0], scale_by_std=True, eps=0.0)
    assert got == pytest.approx([0.75 / std, -0.25 / std, -0.25 / std, -0.25 / std], rel=1e-12)
    assert got[0] == pytest.approx(1.7320508075688772)


def test_zero_variance_group_has_zero_advantage():
    assert group_advantages([0, 0, 0, 0]) == [0, 0, 0, 0]
    assert group_advantages([1, 1], scale_by_std=True) == [0, 0]


def test_a_group_needs_two_rollouts():
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages([1.0])
