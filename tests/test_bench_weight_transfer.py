"""bench/weight_transfer.py's numbers from hand-made samples, and its headline in bench/derived.py."""

import pytest

from bench.derived import derive
from bench.weight_transfer import summarize

pytestmark = pytest.mark.unit


def test_summarize_takes_medians_rates_and_ratios_by_hand():
    samples = [
        {"pope": 0.3, "receive_only": 0.2, "bucketed": 0.15, "raw": 0.1},
        {"pope": 0.5, "receive_only": 0.1, "bucketed": 0.05, "raw": 0.1},
        {"pope": 0.4, "receive_only": 0.3, "bucketed": 0.2, "raw": 0.2},
    ]
    entry = summarize(samples, num_bytes=200_000_000)
    # medians: pope 0.4 s, receive_only 0.2 s, bucketed 0.15 s, raw 0.1 s; 2e8 bytes = 0.2 GB
    assert entry["pope_s"] == pytest.approx(0.4)
    assert entry["receive_only_s"] == pytest.approx(0.2)
    assert entry["raw_s"] == pytest.approx(0.1)
    assert entry["pope_gb_per_s"] == pytest.approx(0.5)
    assert entry["raw_gb_per_s"] == pytest.approx(2.0)
    assert entry["pope_vs_raw"] == pytest.approx(4.0)
    assert entry["receive_only_vs_raw"] == pytest.approx(2.0)
    assert entry["bucketed_vs_raw"] == pytest.approx(1.5)
    assert entry["load_s"] == pytest.approx(0.2)
    assert entry["checksum_s"] == pytest.approx(0.05)
    assert entry["bucketing_s"] == pytest.approx(0.05)
    assert entry["reps"] == 3 and entry["mib"] == pytest.approx(200_000_000 / 2**20)


@pytest.mark.parametrize(("ratio", "met"), [(1.2, True), (1.5, True), (2.0, False)])
def test_weight_transfer_target_is_at_most_1_5(ratio, met):
    results = {
        "weight_transfer": {
            "weight_transfer_vs_raw": ratio,
            "tiny": {"pope_vs_raw": 3.0},
            "smollm2_135m": {"pope_vs_raw": ratio, "receive_only_vs_raw": 1.1},
        }
    }
    out = derive(results)
    assert out["weight_transfer_vs_raw"] == ratio
    assert out["targets"]["weight_transfer_vs_raw"] == {"value": ratio, "target": "<= 1.5", "met": met}
    assert out["derived"]["weight_transfer_vs_raw_tiny"] == 3.0
    assert out["derived"]["weight_transfer_receive_only_vs_raw"] == 1.1


def test_weight_transfer_missing_is_none():
    out = derive({})
    assert out["weight_transfer_vs_raw"] is None
    assert out["targets"]["weight_transfer_vs_raw"]["met"] is None
    assert out["derived"]["weight_transfer_vs_raw_tiny"] is None
