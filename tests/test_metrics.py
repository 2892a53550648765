import math

import numpy as np
import pytest

from clbench import metrics

# R[i][j]: accuracy on task j after training task i (3 tasks).
R = [
    [0.90, 0.20, 0.30],
    [0.70, 0.80, 0.40],
    [0.60, 0.50, 0.85],
]
INIT = [0.50, 0.25, 0.10]


def test_average_accuracy_is_mean_of_last_row():
    assert metrics.average_accuracy(R) == pytest.approx((0.60 + 0.50 + 0.85) / 3)


def test_average_forgetting_by_hand():
    # (0.90 - 0.60) and (0.80 - 0.50), the last task is excluded
    assert metrics.average_forgetting(R) == pytest.approx((0.30 + 0.30) / 2)
    assert metrics.backward_transfer(R) == pytest.approx(-0.30)


def test_forward_transfer_by_hand():
    # R[0][1] - b1 = 0.20 - 0.25 ; R[1][2] - b2 = 0.40 - 0.10
    assert metrics.forward_transfer(R, INIT) == pytest.approx((-0.05 + 0.30) / 2)


def test_intransigence_by_hand():
    joint = np.array(R) + np.diag([0.05, 0.10, 0.0])
    assert metrics.intransigence(R, joint) == pytest.approx(0.05)


def test_ap_curve():
    assert metrics.average_accuracy_curve(R) == pytest.approx([0.90, 0.75, 0.65])


def test_no_forgetting_is_exactly_zero_and_not_negative_zero():
    flat = [[0.8, 0.1], [0.8, 0.9]]
    assert metrics.average_forgetting(flat) == 0.0
    assert math.copysign(1.0, metrics.backward_transfer(flat)) == 1.0


def test_single_task_forgetting_undefined():
    assert math.isnan(metrics.average_forgetting([[0.5]]))
    assert math.isnan(metrics.forward_transfer([[0.5]], [0.1]))


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        metrics.average_accuracy([[1.0, 2.0]])
    with pytest.raises(ValueError):
        metrics.forward_transfer(R, [0.1])


def test_summarize_keys():
    s = metrics.summarize(R, INIT, R)
    assert set(s) == {"AP", "AF", "BWT", "FWT", "INT"}
    assert s["INT"] == 0.0
