"""The test-set-size simulation behind the profiles' phantom.test_subjects (docs/protocol.md)."""

import numpy as np
import pytest

from benchmark.tools.ci_width import auprc, draw_test_set, half_widths, separation_for


def test_separation_reaches_the_target_auprc_and_labels_follow_the_phantom():
    separation = separation_for(0.72, 0.3)
    labels, scores, subjects = draw_test_set(20_000, separation, np.random.default_rng(5), 0.3)
    assert auprc(labels, scores).item() == pytest.approx(0.72, abs=0.01)
    assert labels.mean() == pytest.approx(0.55, abs=0.01)
    left, right = labels[0::2], labels[1::2]
    assert np.corrcoef(left, right)[0, 1] == pytest.approx(0.4, abs=0.03)
    assert (np.bincount(subjects) == 2).all()


def test_the_ci_narrows_as_the_square_root_of_the_test_subjects():
    separation = separation_for(0.72, 0.3)
    small = half_widths(45, separation, datasets=4, replicates=300, seed=0).mean()
    large = half_widths(180, separation, datasets=4, replicates=300, seed=0).mean()
    assert 0.09 < small < 0.18  # the 0.20-0.27 CI width at 45 subjects
    assert large == pytest.approx(small / 2, rel=0.25)
