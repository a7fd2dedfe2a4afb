"""Helpers of the guided bimetallic study (experiments/clusters/guided.py): baselines
compared at a set's composition histogram, weighted medians, diversity measures."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.clusters.guided import distinct_minima, matched, mean_pairwise, weighted_median


def test_weighted_median():
    assert weighted_median([3.0, 1.0, 2.0], [1, 1, 1]) == 2.0
    assert weighted_median([1.0, 2.0, 3.0], [0, 0, 1]) == 3.0
    assert weighted_median([1.0, 2.0, 3.0, 4.0], [3, 0, 0, 1]) == 1.0


def test_matched_baseline_follows_the_set_composition():
    # baseline: composition 1 has low energies, composition 2 high ones, 4 structures each
    f_base = np.array([-0.04, -0.03, -0.02, -0.01, 0.01, 0.02, 0.03, 0.04])
    nb_base = np.array([1, 1, 1, 1, 2, 2, 2, 2])
    # a set entirely of composition 2: the matched median is that composition's (0.02 or 0.03)
    m = matched(np.array([0.0, 0.05]), np.array([2, 2]), f_base, nb_base)
    assert m["median_matched"] in (0.02, 0.03)
    assert m["below_own_composition_median"] == pytest.approx(0.5)  # 0.0 < 0.025, 0.05 is not
    # the same energies as composition 1 are judged against composition 1's median
    m1 = matched(np.array([0.0, 0.05]), np.array([1, 1]), f_base, nb_base)
    assert m1["median_matched"] in (-0.03, -0.02) and m1["below_own_composition_median"] == 0.0


def test_diversity_measures():
    from ase import Atoms

    same = np.ones((4, 3))
    assert mean_pairwise(same) == pytest.approx(0.0)
    assert mean_pairwise(np.eye(3)) == pytest.approx(np.sqrt(2), abs=1e-4)
    a, b = Atoms("Pt2Cu"), Atoms("PtCu2")
    assert distinct_minima([a, a, b], [-0.01, -0.012, -0.01]) == pytest.approx(1.0)
    assert distinct_minima([a, a, b], [-0.01, -0.01, -0.01]) == pytest.approx(2 / 3, abs=1e-3)
