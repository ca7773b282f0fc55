"""GFM (Dembczynski et al. 2011): the decoder against brute force over every subset for joint
distributions with strong label dependence, the empty set, min/max labels; the reduction to the
expected-F1 decoder under independence; the rule's learnt joint on miscalibrated probabilities."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from fashion_stack.core.metrics import samples_f1
from fashion_stack.ensemble.decision import make_rule
from fashion_stack.ensemble.gfm import gfm_decode
from fashion_stack.ensemble.label_sets import expected_f1_of_top_k


def _subsets(n_labels: int) -> np.ndarray:
    return np.array(list(itertools.product([0, 1], repeat=n_labels)), dtype=bool)


def _f1_table(subsets: np.ndarray) -> np.ndarray:
    """F1(prediction h, truth y) for every pair of subsets; F1(empty, empty) = 1."""
    overlap = subsets.astype(int) @ subsets.T.astype(int)
    sizes = subsets.sum(axis=1)
    denom = sizes[:, None] + sizes[None, :]
    return np.where(denom > 0, 2.0 * overlap / np.maximum(denom, 1), 1.0)


def _gfm_inputs(subsets: np.ndarray, weights: np.ndarray) -> tuple:
    """GFM's matrix P(y_i = 1, |y| = s) and P(y = empty) of a distribution over `subsets`."""
    sizes = subsets.sum(axis=1)
    n_labels = subsets.shape[1]
    joint = np.zeros((n_labels, n_labels))
    for s in range(1, n_labels + 1):
        joint[:, s - 1] = (subsets[sizes == s] * weights[sizes == s, None]).sum(axis=0)
    return joint, weights[sizes == 0].sum()


@pytest.mark.parametrize("n_labels", [1, 2, 3, 5, 7])
@pytest.mark.parametrize("limits", [(0, 23), (1, 23), (1, 2), (2, 3), (0, 1)])
def test_gfm_picks_the_best_of_all_subsets_for_dependent_labels(n_labels, limits):
    min_labels, max_labels = limits
    subsets = _subsets(n_labels)
    sizes = subsets.sum(axis=1)
    f1 = _f1_table(subsets)
    allowed = (sizes >= min(min_labels, n_labels)) & (sizes <= min(max_labels, n_labels))
    rng = np.random.default_rng(n_labels * 10 + min_labels)
    # sparse Dirichlet weights: a few label sets carry most of the mass, so labels are far from
    # independent (and the best set is often not the top-k by marginals)
    weights = rng.dirichlet(np.full(len(subsets), 0.2), size=30)
    weights[0] = 0.0
    weights[0, 0], weights[0, -1] = 0.6, 0.4  # mostly the empty set: GFM must consider it
    inputs = [_gfm_inputs(subsets, w) for w in weights]
    chosen, expected = gfm_decode(np.stack([j for j, _ in inputs]), np.array([e for _, e in inputs]),
                                  min_labels, max_labels)
    for w, row, value in zip(weights, chosen, expected):
        expected_f1 = f1 @ w  # E[F1] of every candidate prediction under this distribution
        best = expected_f1[allowed].max()
        picked = int(np.flatnonzero((subsets == row).all(axis=1))[0])
        assert allowed[picked]
        assert expected_f1[picked] == pytest.approx(best, abs=1e-12)
        assert value == pytest.approx(best, abs=1e-12)
    if min_labels == 0:
        assert not chosen[0].any()  # 60% empty: the empty set's expected F1 0.6 beats any other


def test_gfm_under_independence_equals_the_expected_f1_decoder():
    rng = np.random.default_rng(4)
    n_labels = 8
    subsets = _subsets(n_labels)
    marginals = np.vstack([rng.random((5, n_labels)), rng.random((3, n_labels)) ** 4])
    joint, empty = zip(*[_gfm_inputs(subsets, np.prod(np.where(subsets, p, 1 - p), axis=1)) for p in marginals])
    _, gfm_value = gfm_decode(np.stack(joint), np.array(empty), 1, n_labels)
    np.testing.assert_allclose(gfm_value, expected_f1_of_top_k(marginals, n_labels).max(axis=1), atol=1e-12)


def test_gfm_decode_refuses_bad_shapes_and_limits():
    with pytest.raises(ValueError, match="joint must be"):
        gfm_decode(np.zeros((2, 3)), np.zeros(2), 1, 3)
    with pytest.raises(ValueError, match="min_labels <= max_labels"):
        gfm_decode(np.zeros((2, 3, 3)), np.zeros(2), 3, 2)


def _world(n_images: int, rng, sharpen: float):
    """Calibrated probabilities, truth drawn from them; the rule sees them sharpened (log-odds x
    `sharpen`): overconfident members, as a small pool's stacker can be."""
    base = rng.normal(-2.5, 2.0, (n_images, 40))
    y = rng.random(base.shape) < 1 / (1 + np.exp(-base))
    return (1 / (1 + np.exp(-sharpen * base))).astype(np.float32), y


@pytest.mark.parametrize("sharpen, margin", [(1.0, -0.01), (2.5, 0.01)])
def test_gfm_rule_learns_the_joint_where_expected_f1_trusts_the_probabilities(sharpen, margin):
    rng = np.random.default_rng(0)
    fit_probs, fit_true = _world(3000, rng, sharpen)
    test_probs, test_true = _world(3000, rng, sharpen)
    scores = {name: samples_f1(test_true, make_rule(name).fit(fit_probs, fit_true).predict(test_probs))
              for name in ("gfm", "expected_f1")}
    # calibrated: GFM is within a hair of the decoder that is exact for it; overconfident: it wins
    assert scores["gfm"] > scores["expected_f1"] + margin, scores


def test_gfm_rule_predicts_the_empty_set_only_when_allowed():
    rng = np.random.default_rng(1)
    probs, y = _world(2000, rng, 1.0)
    mass = probs.sum(axis=1)
    y[mass < np.quantile(mass, 0.3)] = False  # the 30% lowest-mass images have no labels at all
    allowed = make_rule("gfm", min_labels=0).fit(probs, y).predict(probs)
    assert (allowed.sum(axis=1) == 0).mean() > 0.2
    forced = make_rule("gfm", min_labels=1, max_labels=4).fit(probs, y).predict(probs)
    assert forced.sum(axis=1).min() >= 1 and forced.sum(axis=1).max() <= 4


def test_gfm_fitted_parameters_go_into_a_json_record():
    rng = np.random.default_rng(2)
    probs, y = _world(500, rng, 1.0)
    record = make_rule("gfm").fit(probs, y).fitted_params()
    assert json.loads(json.dumps(record))["joint_model_"]["max_size"] == int(y.sum(axis=1).max())
