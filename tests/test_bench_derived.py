"""bench/derived.py: the headline numbers of `make bench` from hand-made benchmark entries, each
expected value worked out by hand below."""

import pytest

from bench.derived import derive

pytestmark = pytest.mark.unit


def entries() -> dict:
    return {
        "pipeline": {
            "completions_per_s": 120.0, "tokens_per_s": 3000.0, "steady_completions_per_s": 130.0,
            "completion_tokens_trained": 20_000.0, "padded_tokens_trained": 100_000.0,
            "steps": 20, "groups_per_step": 4, "train_loop_s": 5.0, "step_period_s": 0.25,
        },
        "generation": {"vllm": {"tokens_per_s": 10_000.0}},
        "learner_step": {"step_s_mean": 0.1, "padded_tokens_per_s": 25_000.0},
        "sync": {"completions_per_s": 100.0, "steady_completions_per_s": 104.0, "steps": 20,
                 "stage_total_s": {"generate_s": 1.5, "train_s": 2.5}},
        "trl": {"completions_per_s": 80.0, "tokens_per_s": 2500.0},
        "broker": {"tokens_64": {"per_group_ms": 0.5}},
        "broadcast": {"broadcast_vs_raw": 1.2},
        "scoring": {"scoring_vs_raw": 0.95},
    }  # fmt: skip


def test_headline_numbers_by_hand():
    out = derive(entries())
    # generation only: 20,000 tokens / 10,000 tokens/s = 2 s; training only: 100,000 padded
    # tokens / 25,000 per s = 4 s; bound 6 s over a 5 s loop
    bound = out["derived"]["compute_bound"]
    assert bound["generate_only_s"] == pytest.approx(2.0)
    assert bound["train_only_s"] == pytest.approx(4.0)
    assert bound["train_only_s_by_steps"] == pytest.approx(20 * 0.1)
    assert out["pipeline_efficiency"] == pytest.approx(6.0 / 5.0)
    assert out["ratio_vs_trl"] == pytest.approx(120 / 80)
    assert out["derived"]["ratio_vs_trl_tokens"] == pytest.approx(3000 / 2500)
    assert out["async_gain"] == pytest.approx(120 / 100)
    assert out["derived"]["async_gain_steady"] == pytest.approx(130 / 104)
    # 0.5 ms per hop x 2 hops x 4 groups = 4 ms of a 250 ms step
    assert out["broker_share_of_step"] == pytest.approx(4.0 / 250.0)
    # the sync run's generate + train time (same number of steps) over the pipeline's loop
    assert out["derived"]["pipeline_efficiency_vs_sync_stages"] == pytest.approx(4.0 / 5.0)
    targets = out["targets"]
    assert targets["pipeline_efficiency"]["met"] is True
    assert targets["ratio_vs_trl"]["met"] is False  # 1.5 < 10
    assert targets["broker_share_of_step"]["met"] is True  # 0.016 <= 0.02
    assert targets["broadcast_vs_raw"]["met"] is True and targets["scoring_vs_raw"]["met"] is True


def test_missing_inputs_give_none_not_an_error():
    results = entries()
    del results["learner_step"]["padded_tokens_per_s"]  # an entry from before the padded-token rate
    del results["trl"]
    out = derive(results)
    assert out["pipeline_efficiency"] is None and out["derived"]["compute_bound"] is None
    assert out["ratio_vs_trl"] is None and out["targets"]["ratio_vs_trl"]["met"] is None
    assert out["async_gain"] == pytest.approx(1.2)


def long_entries() -> dict:
    return {
        **entries(),
        "pipeline_long": {
            "completions_per_s": 40.0, "steady_completions_per_s": 48.0, "completion_length_mean": 256.0,
            "step_median": {"step_s": 0.8, "data_wait_s": 0.2},
        },
        "trl_long": {"completions_per_s": 12.0, "completion_length_mean": 256.0},
    }  # fmt: skip


def test_long_workload_ratio_by_hand():
    out = derive(long_entries())
    # same span on both sides: 48 completions/s (pope, steps 2..N) / 12 (TRL after its warm-up) = 4
    assert out["ratio_vs_trl_long"] == pytest.approx(4.0)
    assert out["targets"]["ratio_vs_trl_long"] == {
        "value": pytest.approx(4.0),
        "target": ">= 3.0",
        "met": True,
    }
    # the whole loop, step 1 in: 40 / 12
    assert out["derived"]["ratio_vs_trl_long_loop"] == pytest.approx(40 / 12)
    # tokens: 48 x 256 = 12,288 tokens/s over 12 x 256 = 3,072
    assert out["derived"]["ratio_vs_trl_long_tokens"] == pytest.approx(12288 / 3072)
    # the learner waits 0.2 s of a 0.8 s step for generation
    assert out["derived"]["pipeline_long_data_wait_share"] == pytest.approx(0.25)
    # the demo workload's numbers are untouched by the long entries
    assert out["ratio_vs_trl"] == pytest.approx(120 / 80)


def test_long_workload_missed_and_missing():
    results = long_entries()
    results["pipeline_long"]["steady_completions_per_s"] = 30.0  # 30 / 12 = 2.5 < 3
    assert derive(results)["targets"]["ratio_vs_trl_long"]["met"] is False
    del results["trl_long"]
    out = derive(results)
    assert out["ratio_vs_trl_long"] is None and out["targets"]["ratio_vs_trl_long"]["met"] is None
    assert out["derived"]["ratio_vs_trl_long_tokens"] is None


def test_policy_lag_mean_is_the_lag_benchmarks_continuous_run_against_its_target():
    assert derive({})["policy_lag_mean"] is None
    for value, met in ((0.75, True), (1.0, True), (1.5, False)):
        out = derive({"policy_lag": {"policy_lag_mean": value}})
        assert out["policy_lag_mean"] == value
        assert out["targets"]["policy_lag_mean"] == {"value": value, "target": "<= 1.0", "met": met}
