import pytest

from openllm.evaluation.metrics import brier_score, expected_calibration_error, reliability_bins


def test_calibration_on_hand_made_predictions():
    confidences, correct = [0.95, 0.97, 0.30, 0.10], [1, 0, 1, 0]
    # bins (14/15, 1]: acc 0.5 vs conf 0.96; (4/15, 5/15]: 1 vs 0.3; (1/15, 2/15]: 0 vs 0.1
    assert expected_calibration_error(confidences, correct) == pytest.approx(0.5 * 0.46 + 0.25 * 0.7 + 0.25 * 0.1)
    bins = reliability_bins(confidences, correct)
    assert [b["count"] for b in bins] == [0, 1, 0, 0, 1] + [0] * 9 + [2]
    assert bins[14]["accuracy"] == 0.5 and bins[14]["confidence"] == pytest.approx(0.96)
    assert expected_calibration_error([0.7] * 10, [1] * 7 + [0] * 3) == pytest.approx(0, abs=1e-12)

    probs = [[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]
    assert brier_score(probs, [0, 1]) == pytest.approx((0.14 + 0.86) / 2)
    assert brier_score([[1.0, 0.0], [0.0, 1.0]], [0, 1]) == 0
    assert brier_score([[0.0, 1.0]], [0]) == 2
