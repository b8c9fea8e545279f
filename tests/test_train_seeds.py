"""Seed-batched training (models/train_seeds.py, models/ensemble.py, models/vmap.py): each
seed of a batch ends as it would trained alone, for every registered architecture."""

import json

import pytest
import torch

from lab.streams import EVAL, TRAIN, generator
from models import MODELS
from models.checkpoint import load_checkpoint
from models.ensemble import Ensemble
from models.registry import build_model
from models.run import build_run, resolve_run
from models.train import TrainConfig, adamw, make_optimizer, train
from models.train_seeds import train_seeds, why_not_batched
from models.vmap import folded, per_member

TRAIN_FIELDS = {
    "steps": 8,
    "checkpoint_every": 4,
    "log_every": 2,
    "eval_every": 4,
    "eval_batches": 1,
    "batch_size": 4,
}
SEEDS = (0, 1, 2)
# Batched matrix products sum in another order than one model's: the weights agree to float
# rounding, amplified a little by Adam (an update is lr * m / sqrt(v), about 1e-3 a step
# whatever the gradient's size); a wrong member, batch or clip is off by the updates themselves.
WEIGHTS = {"atol": 1e-4, "rtol": 1e-4}
VALUES = {"atol": 1e-5, "rtol": 1e-5}


def seed_runs(
    model: str, task="graph_nav", task_fields=None, seeds=SEEDS, model_fields=None, **train_fields
):
    task_fields = {"width": 3, "height": 3, "n_steps": 8} if task_fields is None else task_fields
    model_fields = {"d_model": 16, **(model_fields or {})}
    config = vars(TrainConfig(**{**TRAIN_FIELDS, **train_fields}))
    keys = {"experiment": "test", "study": "unit", "condition": "c", "model": model}
    return [
        resolve_run({**keys, "seed": s}, task, task_fields, model, model_fields, None, config)
        for s in seeds
    ]


def checkpoint(run_dir, run):
    """(weights, optimizer state, step, totals) of a run's checkpoint, read the ordinary way."""
    model = build_model(run["architecture"], run["model_config"])
    optimizer = make_optimizer(model, TrainConfig(**run["train"]))
    info = load_checkpoint(run_dir / "checkpoint.safetensors", model, optimizer, expect_run=run)
    return model.state_dict(), optimizer.state_dict(), info.step, info.totals


def metrics(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_close(value, expected, what):
    """Equal, or for floats equal to float rounding."""
    if isinstance(expected, float):
        assert value == pytest.approx(expected, rel=1e-4, abs=1e-5), what
    else:
        assert value == expected, what


def assert_same_run(alone_dir, batched_dir, run):
    """The two directories hold the same run, to float rounding."""
    assert json.loads((batched_dir / "config.json").read_text()) == run
    a_weights, a_optim, a_step, a_totals = checkpoint(alone_dir, run)
    b_weights, b_optim, b_step, b_totals = checkpoint(batched_dir, run)
    assert a_step == b_step and a_totals.keys() == b_totals.keys()
    assert a_totals["tokens"] == b_totals["tokens"]
    for name in a_weights:
        torch.testing.assert_close(b_weights[name], a_weights[name], **WEIGHTS, msg=name)
    assert a_optim["param_groups"] == b_optim["param_groups"]
    for index, state in a_optim["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(b_optim["state"][index][key], value, **WEIGHTS)
    a_lines, b_lines = metrics(alone_dir), metrics(batched_dir)
    assert [sorted(x) for x in a_lines] == [sorted(x) for x in b_lines]
    for a, b in zip(a_lines, b_lines, strict=True):
        for key, value in a.items():
            assert_close(b[key], value, key)
    timing = json.loads((batched_dir / "timing.json").read_text())
    assert sorted(timing) == sorted(json.loads((alone_dir / "timing.json").read_text()))


def assert_same_summary(alone, batched):
    assert batched["batch_seeds"] == list(SEEDS)
    for key in ("study", "condition", "model", "task", "seed", "n_params", "steps"):
        assert batched[key] == alone[key]
    assert batched["final"].keys() == alone["final"].keys()
    for key, value in alone["final"].items():
        assert_close(batched["final"][key], value, key)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_architecture_trains_its_seeds_as_one_vmapped_batch(model):
    runs = seed_runs(model)
    task, first = build_run(runs[0])
    models = [first] + [build_run(r)[1] for r in runs[1:]]
    assert why_not_batched(task, models, torch.device("cpu")) is None


@pytest.mark.parametrize("model", sorted(MODELS))
def test_batched_seeds_end_as_the_same_runs_trained_alone(tmp_path, model):
    runs = seed_runs(model)
    alone = [train(r, tmp_path / "alone" / str(r["seed"]), progress=False) for r in runs]
    dirs = [tmp_path / "batched" / str(r["seed"]) for r in runs]
    batched = train_seeds(runs, dirs, progress=False)
    for run, a, b in zip(runs, alone, batched, strict=True):
        assert_same_summary(a, b)
        assert_same_run(
            tmp_path / "alone" / str(run["seed"]), tmp_path / "batched" / str(run["seed"]), run
        )


@pytest.mark.parametrize(
    "scan", ["fast", pytest.param("compiled", marks=pytest.mark.slow)]
)  # the default (native) is above; "compiled" is the GPU's
def test_every_mamba_scan_trains_its_seeds_batched(tmp_path, scan):
    runs = seed_runs("mamba", seeds=(0, 1), model_fields={"scan": scan})
    alone = [train(r, tmp_path / "alone" / str(r["seed"]), progress=False) for r in runs]
    batched = train_seeds(runs, [tmp_path / "b" / str(r["seed"]) for r in runs], progress=False)
    for run, a, b in zip(runs, alone, batched, strict=True):
        assert b["batch_seeds"] == [0, 1]
        for key, value in a["final"].items():
            assert_close(b["final"][key], value, key)
        assert_same_run(
            tmp_path / "alone" / str(run["seed"]), tmp_path / "b" / str(run["seed"]), run
        )


def test_continuous_inputs_and_a_task_s_own_loss_batch_too(tmp_path):
    fields = {"n_steps": 6, "n_place_cells": 8, "map_bins": 4}
    runs = seed_runs("mamba", task="path_integration", task_fields=fields)
    alone = [train(r, tmp_path / "alone" / str(r["seed"]), progress=False) for r in runs]
    batched = train_seeds(runs, [tmp_path / "b" / str(r["seed"]) for r in runs], progress=False)
    for run, a, b in zip(runs, alone, batched, strict=True):
        assert_same_summary(a, b)
        assert_same_run(
            tmp_path / "alone" / str(run["seed"]), tmp_path / "b" / str(run["seed"]), run
        )


@pytest.mark.parametrize("model", ["transformer", "lstm"])
def test_a_batched_checkpoint_resumes_alone_and_batched(tmp_path, model):
    runs = seed_runs(model, log_every=3)  # logs at 3, 6, 8; checkpoints at 4, 8
    for r in runs:
        train(r, tmp_path / "alone" / str(r["seed"]), progress=False)
    dirs = [tmp_path / "batched" / str(r["seed"]) for r in runs]
    stopped = train_seeds(runs, dirs, stop_at=6, progress=False)  # killed after step 6
    assert stopped == [{}, {}, {}]
    # one seed goes on alone from the batch's checkpoint at step 4, the others batched
    alone = train(runs[1], dirs[1], resume=True, progress=False)
    assert "batch_seeds" not in alone
    rest = train_seeds([runs[0], runs[2]], [dirs[0], dirs[2]], resume=True, progress=False)
    assert [r["batch_seeds"] for r in rest] == [[0, 2], [0, 2]]
    for run in runs:
        assert_same_run(tmp_path / "alone" / str(run["seed"]), dirs[run["seed"]], run)
    assert [x["step"] for x in metrics(dirs[0])] == [3, 6, 8]
    # finished runs are not trained again
    again = train_seeds(runs, dirs, resume=True, progress=False)
    assert again == [rest[0], alone, rest[1]]


def test_seeds_resumed_from_different_steps_train_in_one_batch_per_step(tmp_path):
    runs = seed_runs("lstm")
    for r in runs:
        train(r, tmp_path / "alone" / str(r["seed"]), progress=False)
    dirs = [tmp_path / "batched" / str(r["seed"]) for r in runs]
    train(runs[0], dirs[0], stop_at=4, progress=False)
    results = train_seeds(runs, dirs, resume=True, progress=False)
    assert [r["batch_seeds"] for r in results] == [[0], [1, 2], [1, 2]]
    for run in runs:
        assert_same_run(tmp_path / "alone" / str(run["seed"]), dirs[run["seed"]], run)


def test_a_seed_whose_loss_is_not_finite_stops_as_alone_and_the_others_finish(
    tmp_path, monkeypatch
):
    """Seed 1's loss is NaN at step 5 (after the checkpoint at 4): it stops there with the
    error it raises alone, keeping that checkpoint; seeds 0 and 2 train to the end."""
    from tasks.graph_nav import GraphNavTask

    runs = seed_runs("transformer")
    poisoned = GraphNavTask(build_run(runs[1])[0].config).sample(4, generator(1, TRAIN, 5))
    loss = GraphNavTask.loss

    def nan_for_seed_1_at_step_5(self, logits, batch):
        value = loss(self, logits, batch)
        return value * torch.nan if torch.equal(batch.inputs, poisoned.inputs) else value

    monkeypatch.setattr(GraphNavTask, "loss", nan_for_seed_1_at_step_5)
    with pytest.raises(FloatingPointError) as alone_error:
        train(runs[1], tmp_path / "alone", progress=False)
    dirs = [tmp_path / "batched" / str(r["seed"]) for r in runs]
    results = train_seeds(runs, dirs, progress=False)
    assert isinstance(results[1], FloatingPointError)
    assert str(results[1]) == str(alone_error.value)
    assert "loss is nan at step 5" in str(results[1])
    assert [r["batch_seeds"] for r in (results[0], results[2])] == [[0, 2], [0, 2]]
    assert sorted(p.name for p in dirs[1].iterdir()) == sorted(
        p.name for p in (tmp_path / "alone").iterdir()
    )
    assert_same_run(tmp_path / "alone", dirs[1], runs[1])  # stopped at the same place
    monkeypatch.setattr(GraphNavTask, "loss", loss)
    for run in (runs[0], runs[2]):
        alone = train(run, tmp_path / "clean" / str(run["seed"]), progress=False)
        assert_same_run(tmp_path / "clean" / str(run["seed"]), dirs[run["seed"]], run)
        for key, value in alone["final"].items():
            assert_close(results[run["seed"]]["final"][key], value, key)


def test_only_runs_that_differ_in_their_seed_batch(tmp_path):
    runs = seed_runs("lstm", seeds=(0, 1))
    other = seed_runs("lstm", seeds=(2,), lr=0.5)
    with pytest.raises(ValueError, match="differ only in their seed"):
        train_seeds([*runs, *other], [tmp_path / str(i) for i in range(3)], progress=False)
    with pytest.raises(ValueError, match="distinct seeds"):
        train_seeds([runs[0], runs[0]], [tmp_path / "a", tmp_path / "b"], progress=False)


def test_an_architecture_that_does_not_vmap_trains_one_by_one_with_a_warning(tmp_path, monkeypatch):
    import models.lstm

    monkeypatch.setattr(models.lstm, "fused_lstm", models.lstm.fused_lstm.__wrapped__)
    runs = seed_runs("lstm", seeds=(0, 1))
    with pytest.warns(UserWarning, match="aten::lstm.*one by one"):
        results = train_seeds(runs, [tmp_path / "0", tmp_path / "1"], progress=False)
    assert all("batch_seeds" not in r for r in results)


def test_each_member_s_gradients_are_clipped_by_its_own_norm():
    models = [
        build_model("lstm", {"d_vocab": 5, "d_vocab_out": 3, "d_model": 8, "seed": s})
        for s in range(3)
    ]
    ensemble = Ensemble(models)
    generator = torch.Generator().manual_seed(0)
    for stacked in ensemble.params.values():
        stacked.grad = torch.randn(stacked.shape, generator=generator)
        stacked.grad[1] *= 1e-3  # member 1 under the limit, the others over it
    expected = []
    for index, model in enumerate(models):
        for name, p in model.named_parameters():
            p.grad = ensemble.params[name].grad[index].clone()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        expected.append((norm, {n: p.grad for n, p in model.named_parameters()}))
    assert expected[1][0] < 1.0 < min(expected[0][0], expected[2][0])
    norms = ensemble.clip_grad_norms_(1.0)
    for index, (norm, grads) in enumerate(expected):
        assert norms[index].item() == pytest.approx(norm.item(), rel=1e-6)
        for name, grad in grads.items():
            torch.testing.assert_close(ensemble.params[name].grad[index], grad)


def test_a_member_s_optimizer_state_round_trips_through_the_stacked_optimizer():
    runs = seed_runs("mamba", seeds=(0, 1))
    task, _ = build_run(runs[0])
    models = [build_run(r)[1] for r in runs]
    config = TrainConfig(**runs[0]["train"])
    own = [make_optimizer(m, config) for m in models]
    for model, optimizer in zip(models, own, strict=True):  # one step alone: some state
        batch = task.sample(2, generator(0, EVAL, 0))
        task.loss(model(batch.inputs), batch).backward()
        optimizer.step()
    ensemble = Ensemble(models)
    stacked = adamw(ensemble.parameter_groups(config.weight_decay), config)
    ensemble.load_optimizer_states(stacked, [o.state_dict() for o in own])
    for index, optimizer in enumerate(own):
        back = ensemble.member_optimizer_state(stacked, index)
        state = optimizer.state_dict()
        assert back["param_groups"] == state["param_groups"]
        assert back["state"].keys() == state["state"].keys()
        for i, entry in state["state"].items():
            for key, value in entry.items():
                assert torch.equal(back["state"][i][key], value)


class _NoRule(torch.autograd.Function):
    """A kernel with no batching rule (old-style Function, like the Mamba scans)."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x * w.exp()

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        return grad * w.exp(), (grad * x * w.exp()).sum(0)


def test_per_member_gives_a_kernel_with_no_batching_rule_exact_values_and_gradients():
    x = torch.randn(3, 4, 5, requires_grad=True)
    w = torch.randn(3, 5, requires_grad=True)
    with pytest.raises(RuntimeError, match="setup_context"):
        torch.func.vmap(_NoRule.apply)(x, w)
    looped = per_member(lambda x, w: _NoRule.apply(x, w))
    torch.func.vmap(looped)(x, w).square().sum().backward()
    grads = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    torch.stack([_NoRule.apply(x[i], w[i]) for i in range(3)]).square().sum().backward()
    assert torch.equal(grads[0], x.grad) and torch.equal(grads[1], w.grad)
    shared = torch.randn(5)  # an unbatched argument is passed to every member
    out = torch.func.vmap(looped, in_dims=(0, None))(x.detach(), shared)
    assert torch.equal(out, torch.stack([_NoRule.apply(x[i].detach(), shared) for i in range(3)]))


def test_folded_runs_the_members_as_one_batch():
    calls = []

    @folded
    def attention(q, k, bias):
        calls.append(q.shape)
        return torch.softmax(q @ k.transpose(-1, -2) + bias, -1)

    q, k = torch.randn(3, 2, 4, 6), torch.randn(3, 2, 4, 6)
    bias = torch.randn(4, 4)
    out = torch.func.vmap(attention, in_dims=(0, 0, None))(q, k, bias)
    assert calls == [torch.Size([6, 4, 6])]  # members x batch in one call
    expected = torch.stack(
        [torch.softmax(q[i] @ k[i].transpose(-1, -2) + bias, -1) for i in range(3)]
    )
    torch.testing.assert_close(out, expected)


def test_batched_seeds_with_loader_workers_train_bit_for_bit_the_same(tmp_path):
    runs = seed_runs("mamba", seeds=(0, 1))
    here = [tmp_path / "here" / str(r["seed"]) for r in runs]
    ahead = [tmp_path / "ahead" / str(r["seed"]) for r in runs]
    train_seeds(runs, here, progress=False)
    train_seeds(runs, ahead, progress=False, loader_workers=2)
    for a, b in zip(here, ahead, strict=True):
        ckpt = "checkpoint.safetensors"
        assert (a / ckpt).read_bytes() == (b / ckpt).read_bytes()
        assert metrics(a) == metrics(b)
