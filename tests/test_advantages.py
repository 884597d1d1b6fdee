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


def test_leave_one_out_by_hand():
    # r = [1, 0, 0, 1]: A_0 = 1 - (0+0+1)/3 = 2/3, A_1 = 0 - (1+0+1)/3 = -2/3
    got = group_advantages([1, 0, 0, 1], estimator="leave_one_out")
    assert got == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3], rel=1e-12)


def test_passk_estimator_is_wired():
    # n=4, c=1, k=2 by hand: rho = 1 - C(3,2)/C(4,2) = 1/2; unnormalised A_pos = 1/2,
    # A_neg = 1 - 1/2 - C(2,1)/C(3,1) = -1/6; sigma = 1/2 -> [1, -1/3, -1/3, -1/3]
    got = group_advantages([1, 0, 0, 0], estimator="passk", k=2)
    assert got == pytest.approx([1.0, -1 / 3, -1 / 3, -1 / 3], rel=1e-9)
    with pytest.raises(ValueError, match="binary"):
        group_advantages([0.5, 0, 0, 0], estimator="passk", k=2)
    with pytest.raises(ValueError, match="estimator"):
        group_advantages([1, 0], estimator="nope")
