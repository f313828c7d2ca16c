"""The evaluation metrics of `studio eval` against closed forms."""
import numpy as np

from studio.training.evaluate import frechet, within_class_diversity


def test_frechet_matches_the_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    n, d = 200_000, 4
    a, b = np.array([1.0, 4.0, 0.25, 1.0]), np.array([1.0, 1.0, 1.0, 9.0])
    m1, m2 = np.zeros(d), np.array([1.0, -2.0, 0.0, 0.5])
    f1 = m1 + rng.standard_normal((n, d)) * np.sqrt(a)
    f2 = m2 + rng.standard_normal((n, d)) * np.sqrt(b)
    exact = ((m1 - m2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()  # = 5.25 + 1 + 0.25 + 4
    assert abs(frechet(f1, f2) - exact) < 0.05 * exact
    assert frechet(f1, f1) < 1e-6


def test_within_class_diversity_is_the_mean_pairwise_distance():
    feats = np.array([[0.0, 0.0], [3.0, 4.0], [10.0, 0.0], [10.0, 1.0], [10.0, 3.0]])
    labels = np.array([0, 0, 1, 1, 1])
    # class 0: one pair at distance 5; class 1: distances 1, 3, 2 → mean 2
    assert abs(within_class_diversity(feats, labels) - (5.0 + 2.0) / 2) < 1e-12
