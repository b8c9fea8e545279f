"""Every registered task declares probe targets and rate maps that fit its own batches."""

import dataclasses

import pytest
import torch

from tasks import TASKS, Batch, Task, build_task
from tasks.base import Curve
from tasks.linear_track import LinearTrackConfig, LinearTrackTask
from tasks.path_integration import PositionReadout
from tasks.reference import CountTable, fit_references
from tasks.targets import GraphMaps, ProbeTarget, TrackMaps


def small(name):
    fields = {f.name for f in dataclasses.fields(TASKS[name][0])}
    return build_task(name, {"n_steps": 24} if "n_steps" in fields else {})


@pytest.mark.parametrize("name", sorted(TASKS))
def test_declared_targets_and_maps_fit_the_batches(name):
    task = small(name)
    batch = task.sample(6, torch.Generator().manual_seed(0))
    targets, maps = task.probe_targets(), task.rate_maps()
    assert targets and maps
    for target in targets:
        value = batch.latents[target.latent]
        assert value.shape[:2] == batch.inputs.shape[:2]
        if target.at is not None:
            mask = batch.latents[target.at]
            assert mask.dtype == torch.bool and mask.any()
        if target.kind == "classification":
            assert not value.dtype.is_floating_point
            assert 0 <= value.min() and value.max() < target.n_classes
    for spec in maps:
        for field in dataclasses.fields(spec):
            if field.name in ("latent", "direction", "trial", "route", "group", "at"):
                name_ = getattr(spec, field.name)
                assert name_ is None or name_ in batch.latents, (spec, field.name)
        if isinstance(spec, GraphMaps):
            assert len(spec.node_xy) > batch.latents[spec.latent].max()


@pytest.mark.parametrize("name", sorted(TASKS))
def test_curves_pool_like_metrics(name):
    task = small(name)
    batch = task.sample(6, torch.Generator().manual_seed(1))
    logits = torch.randn(*batch.inputs.shape[:2], task.d_vocab_out)
    for curve in task.curves(logits, batch).values():
        assert isinstance(curve, Curve)
        assert curve.x.shape == curve.sums.shape == curve.counts.shape
        assert (curve.sums <= curve.counts + 1e-9).all() and curve.counts.sum() > 0
        pooled = curve + curve
        assert torch.equal(pooled.counts, 2 * curve.counts)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_reference_predictors_are_scored_like_a_model(name, monkeypatch):
    monkeypatch.setattr(CountTable, "fit_targets", 256)  # the shapes, not the estimates
    monkeypatch.setattr(PositionReadout, "fit_targets", 256)
    task = small(name)
    references = fit_references(task, lambda index: torch.Generator().manual_seed(index))
    assert references
    for prefix, evaluation in task.evaluation_tasks().items():
        batch = evaluation.sample(4, torch.Generator().manual_seed(9))
        shape = (*batch.inputs.shape[:2], task.d_vocab_out)
        expected = set(evaluation.metrics(torch.zeros(shape), batch))  # a model's metrics
        for reference in references.values():
            logits = reference(batch)
            assert logits.shape == shape, (prefix, name)
            assert torch.isfinite(evaluation.loss(logits, batch))
            assert set(evaluation.metrics(logits, batch)) == expected


def test_a_task_without_declarations_is_refused(monkeypatch):
    class Bare(Task):
        name = "bare"

        def __init__(self, config):
            self.config = config

        def sample(self, batch_size, generator) -> Batch:
            raise NotImplementedError

    @dataclasses.dataclass
    class BareConfig:
        size: int = 1

    monkeypatch.setitem(TASKS, "bare", (BareConfig, Bare))
    with pytest.raises(TypeError, match="declares no probe_targets and no rate_maps"):
        build_task("bare")


def test_bad_probe_target_declarations():
    with pytest.raises(ValueError, match="unknown kind 'ordinal'"):
        ProbeTarget("x", "ordinal")
    with pytest.raises(ValueError, match="n_classes is required"):
        ProbeTarget("x", "classification")


@pytest.mark.parametrize("circular", [False, True])
def test_track_transition_matrix_matches_the_walks(circular):
    config = LinearTrackConfig(n_positions=5, n_steps=400, p_backward=0.1, circular=circular)
    task = LinearTrackTask(config)
    T = task.transition_matrix()
    torch.testing.assert_close(T.sum(1), torch.ones(10, dtype=torch.float64))
    batch = task.sample(64, torch.Generator().manual_seed(0))
    pos, travel = batch.latents["pos"][:, ::2], batch.latents["travel"][:, ::2]
    state = 2 * pos + travel  # [batch, T]
    counts = torch.zeros(10, 10, dtype=torch.float64)
    counts.index_put_(
        (state[:, :-1].flatten(), state[:, 1:].flatten()),
        torch.ones(state[:, 1:].numel(), dtype=torch.float64),
        accumulate=True,
    )
    empirical = counts / counts.sum(1, keepdim=True)
    visited = counts.sum(1) > 200
    torch.testing.assert_close(empirical[visited], T[visited], atol=0.06, rtol=0)
    assert isinstance(task.rate_maps()[0], TrackMaps)
