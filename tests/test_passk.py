import math
from fractions import Fraction
from itertools import combinations, product

import pytest

from pope.passk import pass_at_k, pass_at_k_table, passk_advantages, passk_advantages_unnormalized

pytestmark = pytest.mark.unit


def _subset_max_scores(rewards: list[int], k: int) -> dict[tuple[int, ...], int]:
    """Every k-subset of the rollouts (as indices) with the best reward in it."""
    return {subset: max(rewards[i] for i in subset) for subset in combinations(range(len(rewards)), k)}


def _brute_force_pass_at_k(n: int, c: int, k: int) -> Fraction:
    # c correct samples first, then n - c wrong ones; the share of k-subsets holding a correct one
    scores = _subset_max_scores([1] * c + [0] * (n - c), k)
    return Fraction(sum(scores.values()), len(scores))


def test_pass_at_k_matches_enumeration_of_subsets():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                expected = _brute_force_pass_at_k(n, c, k)
                assert expected == 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
                assert pass_at_k(n, c, k) == pytest.approx(float(expected), rel=1e-12, abs=1e-15)


def test_pass_at_k_is_exactly_one_when_every_subset_has_a_correct_sample():
    assert pass_at_k(5, 3, 3) == 1.0  # only 2 wrong samples, so every 3-subset holds a correct one
    assert pass_at_k(8, 8, 1) == 1.0


def test_pass_at_k_is_stable_for_large_n():
    # C(1023, 512) / C(1024, 512) = (1024 - 512) / 1024 = 1/2
    assert pass_at_k(1024, 1, 512) == pytest.approx(0.5, abs=1e-12)
    for k in (1, 7, 64, 128):
        assert pass_at_k(128, 0, k) == 0.0
    got = pass_at_k(100_000, 5, 10)
    assert math.isfinite(got) and 0.0 <= got <= 1.0
    # Python's big integers give the exact value to compare against
    exact = 1 - Fraction(math.comb(100_000 - 5, 10), math.comb(100_000, 10))
    assert got == pytest.approx(float(exact), rel=1e-12)


@pytest.mark.parametrize(
    ("n", "c", "k", "bad"),
    [(0, 0, 1, "n"), (4, 5, 1, "c"), (4, -1, 1, "c"), (4, 1, 0, "k"), (4, 1, 5, "k")],
)
def test_pass_at_k_names_the_bad_argument(n, c, k, bad):
    with pytest.raises(ValueError, match=rf"\b{bad}="):
        pass_at_k(n, c, k)


def test_pass_at_k_table_averages_over_problems():
    # problem 0: n=4, c=1 -> pass@1 = 1/4, pass@2 = 1 - C(3,2)/C(4,2) = 1/2, pass@4 = 1
    # problem 1: n=4, c=0 -> 0 for every k
    table = pass_at_k_table([(4, 1), (4, 0)], [1, 2, 4])
    assert table == pytest.approx({1: 0.125, 2: 0.25, 4: 0.5}, rel=1e-12)


def test_pass_at_k_table_names_the_problem_with_too_few_samples():
    with pytest.raises(ValueError, match="problem 1 has n=2"):
        pass_at_k_table([(8, 3), (2, 1), (8, 0)], [1, 4])
    with pytest.raises(ValueError, match="problem 0"):
        pass_at_k_table([(4, 5)], [1])
    with pytest.raises(ValueError, match="empty"):
        pass_at_k_table([], [1])


def _brute_force_advantages(rewards: list[int], k: int) -> tuple[list[Fraction], Fraction]:
    """E[max reward of a k-subset | i in it] - rho per rollout, and the variance of the subset max."""
    scores = _subset_max_scores(rewards, k)
    rho = Fraction(sum(scores.values()), len(scores))
    variance = sum((score - rho) ** 2 for score in scores.values()) / len(scores)
    advantages = []
    for i in range(len(rewards)):
        containing = [score for subset, score in scores.items() if i in subset]
        advantages.append(Fraction(sum(containing), len(containing)) - rho)
    return advantages, variance


def test_passk_advantages_match_enumeration_of_subsets():
    # every binary group up to 7 rollouts, every k
    for n in range(1, 8):
        for rewards in product((0, 1), repeat=n):
            rewards = list(rewards)
            for k in range(1, n + 1):
                expected, variance = _brute_force_advantages(rewards, k)
                rho = _brute_force_pass_at_k(n, sum(rewards), k)
                assert variance == rho * (1 - rho)  # sigma^2 = rho (1 - rho), as the papers use
                assert sum(expected) == 0
                unnormalized = passk_advantages_unnormalized(rewards, k)
                assert unnormalized == pytest.approx([float(a) for a in expected], abs=1e-12)
                sigma = math.sqrt(variance)
                normalized = [float(a) / sigma if sigma else 0.0 for a in expected]
                assert passk_advantages(rewards, k) == pytest.approx(normalized, rel=1e-12, abs=1e-12)


def test_k_equal_one_is_the_mean_baseline():
    # rewards 1,0,0,1: mean 1/2 and population std 1/2
    assert passk_advantages_unnormalized([1, 0, 0, 1], 1) == pytest.approx([0.5, -0.5, -0.5, 0.5], abs=1e-15)
    assert passk_advantages([1, 0, 0, 1], 1) == pytest.approx([1.0, -1.0, -1.0, 1.0], rel=1e-12)
    # rewards 1,0,0,0: mean 1/4, population std sqrt(3/16)
    std = math.sqrt(3 / 16)
    assert passk_advantages_unnormalized([1, 0, 0, 0], 1) == pytest.approx([0.75, -0.25, -0.25, -0.25])
    assert passk_advantages([1, 0, 0, 0], 1) == pytest.approx([0.75 / std] + [-0.25 / std] * 3, rel=1e-12)


def test_passk_advantages_by_hand():
    # n=4, c=1, k=2: rho = 1 - C(3,2)/C(4,2) = 1/2, sigma = 1/2
    # A_pos = (1 - 1/2) / (1/2) = 1;  A_neg = (1/2 - C(2,1)/C(3,1)) / (1/2) = (1/2 - 2/3) * 2 = -1/3
    assert passk_advantages_unnormalized([0, 1, 0, 0], 2) == pytest.approx([-1 / 6, 0.5, -1 / 6, -1 / 6])
    assert passk_advantages([0, 1, 0, 0], 2) == pytest.approx([-1 / 3, 1.0, -1 / 3, -1 / 3], rel=1e-12)


def test_passk_advantages_are_stable_for_large_groups():
    # n=1024, c=1, k=512: rho = 1/2, sigma = 1/2; C(1022,511)/C(1023,511) = 512/1023
    # A_pos = 1, A_neg = (1/2 - 512/1023) * 2 = -1/1023
    rewards = [1.0] + [0.0] * 1023
    got = passk_advantages(rewards, 512)
    assert got[0] == pytest.approx(1.0, rel=1e-12)
    assert got[1:] == pytest.approx([-1 / 1023] * 1023, rel=1e-9)
    assert math.fsum(got) == pytest.approx(0.0, abs=1e-9)


def test_advantages_sum_to_zero_for_every_k():
    for c in (1, 5, 31, 63):
        rewards = [1] * c + [0] * (64 - c)
        for k in (1, 2, 8, 32, 64):
            assert math.fsum(passk_advantages_unnormalized(rewards, k)) == pytest.approx(0.0, abs=1e-12)


def test_uniform_groups_give_zero_advantages():
    for k in (1, 2, 4):
        for rewards in ([1, 1, 1, 1], [0, 0, 0, 0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]):
            assert passk_advantages(rewards, k) == [0.0] * 4
            assert passk_advantages_unnormalized(rewards, k) == [0.0] * 4
    # one wrong rollout and k = 2: every pair holds a correct one, so rho = 1 and nothing to learn
    assert passk_advantages([1, 1, 1, 0], 2) == [0.0] * 4
    assert passk_advantages_unnormalized([1, 1, 1, 0], 2) == [0.0] * 4


def test_passk_advantages_reject_bad_input():
    with pytest.raises(ValueError, match=r"rewards\[2\] = 0.5"):
        passk_advantages([1, 0, 0.5], 1)
    with pytest.raises(ValueError, match="k=4"):
        passk_advantages([1, 0, 0], 4)
    with pytest.raises(ValueError, match="k=0"):
        passk_advantages_unnormalized([1, 0, 0], 0)
