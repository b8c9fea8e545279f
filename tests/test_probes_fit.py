import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from probes.fit import fit_probe, probe_kinds
from probes.linear import LogisticConfig
from probes.mlp import MLPConfig
from probes.ridge import RidgeStats, cross_validated_ridge, fit, fold_of
from tasks.targets import ProbeTarget
from tests.probe_data import one_direction

POSITION = ProbeTarget("v")
CLASSES = ProbeTarget("v", kind="classification", n_classes=6)


def fold_rows(batches, folds=5, test_fraction=0.25):
    """All rows with their folds, concatenated (the reference implementations' view)."""
    acts = torch.cat([b[0] for b in batches]).double()
    labels = torch.cat([b[1] for b in batches])
    fold = fold_of(torch.cat([b[2] for b in batches]), folds, test_fraction)
    return acts, labels, fold


def penalised_logistic_optimum(z: np.ndarray, y: np.ndarray, classes: int, penalty: float):
    """scipy L-BFGS on mean cross-entropy + penalty / 2 * |W|² (bias free): the definition."""
    n, d = z.shape

    def objective(params):
        w, b = params[: d * classes].reshape(d, classes), params[d * classes :]
        logits = z @ w + b
        logits = logits - logits.max(1, keepdims=True)
        log_norm = np.log(np.exp(logits).sum(1))
        loss = (log_norm - logits[np.arange(n), y]).mean() + penalty / 2 * (w**2).sum()
        p = np.exp(logits - log_norm[:, None])
        p[np.arange(n), y] -= 1
        grad_w = z.T @ p / n + penalty * w
        return loss, np.concatenate([grad_w.ravel(), p.mean(0)])

    start = np.zeros(d * classes + classes)
    result = minimize(objective, start, jac=True, method="L-BFGS-B", options={"gtol": 1e-10})
    return result.x[: d * classes].reshape(d, classes), result.x[d * classes :], objective


def test_logistic_probe_reaches_the_optimum_of_the_penalised_objective():
    batches = one_direction(values=6, d=8, signal=0.8, classification=True)
    penalty = 1e-3
    config = LogisticConfig(penalties=(penalty,), steps=1500)
    result = fit_probe("logistic", batches, CLASSES, control=False, config=config)

    acts, labels, fold = fold_rows(batches)
    train = fold >= 0
    mean, std = acts[train].mean(0), acts[train].std(0, unbiased=False)
    z = ((acts - mean) / std).numpy()
    w, b, objective = penalised_logistic_optimum(z[train], labels[train].numpy(), 6, penalty)
    # the probe's weights, back in standardised coordinates
    ours_w = (result.probe.weight * std[:, None]).numpy()
    ours_b = (result.probe.bias + mean @ result.probe.weight).numpy()
    best = objective(np.concatenate([w.ravel(), b]))[0]
    ours = objective(np.concatenate([ours_w.ravel(), ours_b]))[0]
    assert ours == pytest.approx(best, rel=2e-3)
    np.testing.assert_allclose(ours_w, w, atol=0.05 * np.abs(w).max())
    test = ~train
    expected_accuracy = ((z[test] @ w + b).argmax(1) == labels[test].numpy()).mean()
    assert result.score == pytest.approx(expected_accuracy, abs=0.01)
    assert result.metric == "accuracy" and result.penalty == penalty
    assert result.n_train == int(train.sum()) and result.n_test == int(test.sum())


def test_ridge_probe_is_the_cross_validated_ridge_with_its_weights():
    batches = one_direction(signal=0.3)
    result = fit_probe("ridge", batches, POSITION, control=False)
    acts, labels, fold = fold_rows(batches)
    stats = [RidgeStats(acts.shape[1], 1) for _ in range(6)]
    for f in range(-1, 5):
        stats[f].add(acts[fold == f], labels[fold == f, None])
    expected = cross_validated_ridge(stats[-1], stats[:-1])
    assert result.score == pytest.approx(expected.r2_test, abs=1e-12)
    assert result.selection_score == pytest.approx(expected.r2_cv, abs=1e-12)
    assert result.penalty == expected.alpha
    w, b = fit(sum(stats[1:-1], stats[0]), expected.alpha)
    torch.testing.assert_close(result.probe.weight, w)
    torch.testing.assert_close(result.probe.predict(acts[:5]), acts[:5] @ w + b)


def carried_by_one_direction(target):
    classification = target is CLASSES
    return one_direction(
        values=6 if classification else 20,
        signal=4.0 if classification else 3.0,  # values 4 or 3 noise sd apart
        classification=classification,
    )


@pytest.mark.parametrize("kind, target", [("ridge", POSITION), ("logistic", CLASSES)])
def test_a_latent_carried_by_one_direction_is_decoded_selectively(kind, target):
    result = fit_probe(kind, carried_by_one_direction(target), target)
    assert result.score > 0.9
    assert result.selectivity == pytest.approx(result.score - result.control_score)
    assert result.selectivity > 0.5 and result.selectivity_over_chance > 0.5


@pytest.mark.parametrize("target", [POSITION, CLASSES])
def test_an_mlp_decodes_as_well_but_less_selectively_than_a_linear_probe(target):
    """Hewitt & Liang's finding: the MLP fits the control task's random map of the few
    latent values too, so its selectivity is lower."""
    batches = carried_by_one_direction(target)
    linear = fit_probe(probe_kinds(target)[0], batches, target)
    mlp = fit_probe("mlp", batches, target, config=MLPConfig(lr=1e-2, max_epochs=40))
    assert mlp.score == pytest.approx(linear.score, abs=0.03)
    assert mlp.control_score > linear.control_score
    assert mlp.selectivity < linear.selectivity


@pytest.mark.parametrize("kind, target", [("ridge", POSITION), ("logistic", CLASSES)])
def test_noise_has_no_selectivity_over_chance(kind, target):
    batches = one_direction(values=6, signal=0.0, classification=target is CLASSES)
    result = fit_probe(kind, batches, target)
    assert result.score < result.baseline + 0.05
    assert result.control_score < result.control_baseline + 0.05
    assert abs(result.selectivity_over_chance) < 0.05
    if target is POSITION:
        assert result.baseline == result.control_baseline == 0.0
        assert result.selectivity == result.selectivity_over_chance
    else:  # the merged control classes have a higher chance level
        assert result.control_baseline > result.baseline > 1 / 6 - 0.05


def test_an_mlp_memorises_the_control_task_of_pure_noise_yet_has_no_selectivity():
    """Hewitt & Liang's point: a probe with enough capacity fits random labels on its
    training data; only held-out scores and selectivity tell it apart from decoding."""
    batches = one_direction(
        values=6, d=32, signal=0.0, n_groups=20, rows_per_group=20, classification=True
    )
    config = MLPConfig(hidden=256, lr=1e-2, max_epochs=150, patience=None)
    result = fit_probe("mlp", batches, CLASSES, config=config)
    assert result.control_train_score > 0.9 and result.train_score > 0.9
    assert result.control_score < result.control_baseline + 0.1
    assert result.score < result.baseline + 0.1
    assert abs(result.selectivity_over_chance) < 0.15
    assert result.epoch == 150  # no early stopping: the last epoch


def test_mlp_decodes_what_no_linear_probe_can_and_stops_early():
    """A latent that is a noisy quadratic function of the activations (squared radius)."""
    g = torch.Generator().manual_seed(0)
    batches = []
    for i in range(8):
        acts = torch.randn(200, 4, generator=g)
        label = (acts[:, :2] ** 2).sum(1) + 0.3 * torch.randn(200, generator=g)
        batches.append((acts, label, i * 10 + torch.arange(200) // 20))
    target = ProbeTarget("r2")
    linear = fit_probe("ridge", batches, target, control=False)
    config = MLPConfig(hidden=256, lr=1e-2, max_epochs=200, patience=3)
    mlp = fit_probe("mlp", batches, target, control=False, config=config)
    assert linear.score < 0.1 < 0.8 < mlp.score
    assert mlp.epoch < 100  # stopped early on the validation fold


def test_circular_target_is_decoded_from_its_sine_and_cosine():
    g = torch.Generator().manual_seed(0)
    mixing = torch.randn(2, 12, generator=g)
    batches = []
    for i in range(6):
        angle = torch.rand(300, generator=g) * 360
        rad = angle * math.pi / 180
        acts = torch.stack([rad.cos(), rad.sin()], 1) @ mixing + 0.1 * torch.randn(
            300, 12, generator=g
        )
        batches.append((acts, angle, i * 10 + torch.arange(300) // 30))
    result = fit_probe("ridge", batches, ProbeTarget("heading", kind="circular", period=360.0))
    assert result.score > 0.95 and result.selectivity > 0.6


def test_spatial_target_reports_the_proximity_error():
    g = torch.Generator().manual_seed(0)
    mixing = torch.randn(2, 10, generator=g)
    coded, noise = [], []
    for i in range(6):
        pos = torch.randint(0, 6, (300, 2), generator=g).float()
        groups = i * 10 + torch.arange(300) // 30
        coded.append((pos @ mixing + 0.3 * torch.randn(300, 10, generator=g), pos, groups))
        noise.append((torch.randn(300, 10, generator=g), pos, groups))
    target = ProbeTarget("pos_xy", spatial=True)
    good = fit_probe("ridge", coded, target)
    bad = fit_probe("ridge", noise, target)
    assert good.proximity_error < 0.02 < 0.3 < bad.proximity_error
    assert fit_probe("ridge", coded, ProbeTarget("pos_xy")).proximity_error is None


def test_clear_errors():
    batches = one_direction(values=6, classification=True)
    with pytest.raises(
        ValueError,
        match=r"probe 'logistic' does not fit regression target 'v'; "
        r"use one of \['ridge', 'mlp'\]",
    ):
        fit_probe("logistic", batches, POSITION)
    with pytest.raises(
        ValueError, match=r"unknown probe kind 'svm'; valid: \['ridge', 'logistic', 'mlp'\]"
    ):
        fit_probe("svm", batches, POSITION)
    with pytest.raises(TypeError, match="one-shot iterator"):
        fit_probe("ridge", iter(batches), POSITION)
    with pytest.raises(TypeError, match="takes a LogisticConfig config"):
        fit_probe("logistic", batches, CLASSES, config=MLPConfig())
    with pytest.raises(ValueError, match=r"labels outside 0..2"):
        fit_probe("logistic", batches, ProbeTarget("v", kind="classification", n_classes=3))
    with pytest.raises(
        ValueError, match=r"expected acts \[n, d\], labels \[n, ...\], groups \[n\]"
    ):
        fit_probe("ridge", [(torch.zeros(4, 2, 3), torch.zeros(4), torch.zeros(4))], POSITION)
    with pytest.raises(ValueError, match="too few environments"):
        fit_probe("ridge", [(torch.randn(50, 3), torch.randn(50), torch.zeros(50))], POSITION)
    assert probe_kinds(CLASSES) == ["logistic", "mlp"]
