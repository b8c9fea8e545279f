import json

import pytest
import torch
from safetensors import safe_open

from lab.config import ConfigError
from lab.streams import TRAIN as TRAIN_STREAM
from lab.streams import generator
from models import MODELS
from models.checkpoint import CheckpointError, load_checkpoint
from models.registry import build_model
from models.run import build_run, resolve_run
from models.train import TrainConfig, train
from studies.preset import load_preset

TRAIN = {
    "steps": 8,
    "checkpoint_every": 4,
    "log_every": 2,
    "eval_every": 4,
    "eval_batches": 1,
    "batch_size": 4,
}
KEYS = {"experiment": "test", "study": "unit", "condition": "c", "seed": 0}


def smoke_run(model="lstm", task="graph_nav", train_fields=(), task_fields=None):
    task_fields = {"width": 3, "height": 3, "n_steps": 8} if task_fields is None else task_fields
    config = vars(TrainConfig(**{**TRAIN, **dict(train_fields)}))
    return resolve_run(
        {**KEYS, "model": model}, task, task_fields, model, {"d_model": 16}, None, config
    )


def weights(run_dir, run):
    model = build_model(run["architecture"], run["model_config"])
    load_checkpoint(run_dir / "checkpoint.safetensors", model, expect_run=run)
    return model.state_dict()


def metrics(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("model", sorted(MODELS))
def test_killed_and_resumed_run_ends_bitwise_equal(tmp_path, model):
    run = smoke_run(model, train_fields={"log_every": 3})  # logs at 3, 6, 8; checkpoints at 4, 8
    straight = train(run, tmp_path / "straight", progress=False)
    train(run, tmp_path / "resumed", stop_at=6, progress=False)  # killed after step 6
    resumed = train(run, tmp_path / "resumed", resume=True, progress=False)  # from step 4
    a, b = weights(tmp_path / "straight", run), weights(tmp_path / "resumed", run)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # weights, optimiser state, step and running sums: the whole file is the same
    ckpt = "checkpoint.safetensors"
    assert (tmp_path / "straight" / ckpt).read_bytes() == (tmp_path / "resumed" / ckpt).read_bytes()
    # the log line at step 6 averages steps 4-6 although the resumed session began at step 5
    assert metrics(tmp_path / "resumed") == metrics(tmp_path / "straight")
    assert [x["step"] for x in metrics(tmp_path / "resumed")] == [3, 6, 8]
    for key in ("n_params", "steps", "final", "curves"):
        assert resumed[key] == straight[key]


def test_resumed_run_reports_the_time_and_tokens_of_the_whole_run(tmp_path, monkeypatch):
    """A clock that advances one second per training batch: the resumed run reports the
    eight seconds of its eight steps, not the four of its last session."""
    import models.prefetch
    import models.train

    batches = []

    def counting_generator(seed, stream, index):
        batches.extend([index] if stream == TRAIN_STREAM else [])
        return generator(seed, stream, index)

    monkeypatch.setattr(models.prefetch, "generator", counting_generator)
    monkeypatch.setattr(models.train.time, "perf_counter", lambda: float(len(batches)))
    run = smoke_run()
    straight = train(run, tmp_path / "straight", progress=False)
    train(run, tmp_path / "resumed", stop_at=6, progress=False)
    resumed = train(run, tmp_path / "resumed", resume=True, progress=False)
    assert straight["train_seconds"] == resumed["train_seconds"] == 8.0
    tokens = 8 * TRAIN["batch_size"] * build_run(run)[0].seq_len
    assert resumed["tokens_per_second"] == straight["tokens_per_second"] == tokens / 8.0


@pytest.mark.parametrize("model", sorted(MODELS))
def test_training_draws_nothing_from_the_global_rng(tmp_path, model):
    """So the checkpoint need not (and does not) carry it."""
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    train(smoke_run(model), tmp_path, progress=False)
    assert torch.equal(torch.get_rng_state(), before)
    assert not [k for k in safe_open_keys(tmp_path / "checkpoint.safetensors") if "rng" in k]


def safe_open_keys(path):
    with safe_open(path, framework="pt") as f:
        return list(f.keys())


def test_run_writes_config_metrics_and_summary(tmp_path):
    run = smoke_run()
    summary = train(run, tmp_path, progress=False)
    assert json.loads((tmp_path / "config.json").read_text()) == run
    assert {"accuracy", "zero_shot_accuracy", "loss"} <= set(summary["final"])
    evals = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "eval_zero_shot_accuracy" in evals[-1]


def test_existing_run_is_never_overwritten_without_resume(tmp_path):
    run = smoke_run()
    train(run, tmp_path, progress=False)
    before = (tmp_path / "checkpoint.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="--resume"):
        train(run, tmp_path, progress=False)
    assert (tmp_path / "checkpoint.safetensors").read_bytes() == before


def test_corrupt_checkpoint_names_the_file_and_is_left_alone(tmp_path):
    run = smoke_run()
    train(run, tmp_path, stop_at=4, progress=False)
    ckpt = tmp_path / "checkpoint.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    corrupt = ckpt.read_bytes()
    with pytest.raises(CheckpointError, match="checkpoint.safetensors"):
        train(run, tmp_path, resume=True, progress=False)
    assert ckpt.read_bytes() == corrupt


def test_checkpoint_of_another_model_is_refused(tmp_path):
    run = smoke_run()
    train(run, tmp_path, stop_at=4, progress=False)
    other = build_model("lstm", {**run["model_config"], "d_model": 8})
    with pytest.raises(CheckpointError, match="do not fit the model"):
        load_checkpoint(tmp_path / "checkpoint.safetensors", other)


def test_changed_config_refuses_to_resume(tmp_path):
    train(smoke_run(), tmp_path, stop_at=4, progress=False)
    with pytest.raises(ValueError, match=r"differs from this run in \['train.lr'\]"):
        train(smoke_run(train_fields={"lr": 0.5}), tmp_path, resume=True, progress=False)


def test_nan_loss_stops_with_a_clear_error(tmp_path, monkeypatch):
    from tasks.graph_nav import GraphNavTask

    monkeypatch.setattr(GraphNavTask, "loss", lambda self, logits, batch: logits.sum() * torch.nan)
    with pytest.raises(FloatingPointError, match="loss is nan at step 0"):
        train(smoke_run(), tmp_path, progress=False)


def test_bad_preset_and_fields_are_named():
    with pytest.raises(ConfigError, match="known presets.*smoke"):
        load_preset("nonexistent")
    with pytest.raises(ConfigError, match="stpes"):
        load_preset("smoke", ["train.stpes=3"])
    with pytest.raises(ValueError, match="unknown task 'maze'"):
        smoke_run(task="maze")


def test_resuming_a_finished_run_keeps_its_summary(tmp_path):
    run = smoke_run()
    summary = train(run, tmp_path, progress=False)
    lines = (tmp_path / "metrics.jsonl").read_text()
    assert train(run, tmp_path, resume=True, progress=False) == summary
    assert (tmp_path / "metrics.jsonl").read_text() == lines


def test_evaluation_covers_a_task_s_generalisation_variants(tmp_path):
    run = smoke_run(task="copying", task_fields={"n_letters": 5, "max_train_len": 3})
    summary = train(run, tmp_path, progress=False)
    assert {"accuracy", "long_accuracy", "long_string_accuracy"} <= set(summary["final"])
    by_length = [c for c in summary["curves"] if c["curve"] == "token_accuracy_by_length"]
    lengths = {c["x"] for c in by_length if c["count"]}
    assert min(lengths) <= 3 < max(lengths) <= 12  # training lengths and longer, up to 4x


def test_per_model_tuning_changes_only_optimiser_settings():
    preset, _ = load_preset("smoke", ["tune.lstm.lr=0.5"])
    assert preset.train_for("lstm").lr == 0.5
    assert preset.train_for("transformer").lr == preset.train.lr


def test_summary_scores_the_reference_predictors_beside_the_network(tmp_path):
    """Every reference predictor has a value of every final metric; a summary written
    before they existed is made again from the final checkpoint, without retraining."""
    run = smoke_run()
    summary = train(run, tmp_path, progress=False)
    assert set(summary["references"]) == {"history_free", "clock", "unigram"}
    for metrics in summary["references"].values():
        assert set(metrics) == set(summary["final"])
    checkpoint = (tmp_path / "checkpoint.safetensors").read_bytes()
    (tmp_path / "summary.json").unlink()  # as the tables' error message asks
    assert train(run, tmp_path, resume=True, progress=False) == summary
    assert (tmp_path / "checkpoint.safetensors").read_bytes() == checkpoint


def test_batches_drawn_by_worker_processes_are_the_loop_s_own():
    from models.prefetch import training_batches

    task, _ = build_run(smoke_run())
    here = list(training_batches(task, [0, 3], 4, range(2, 9)))
    ahead = list(training_batches(task, [0, 3], 4, range(2, 9), workers=2))
    assert len(here) == len(ahead) == 7
    for a, b in zip(here, ahead, strict=True):
        assert list(a) == list(b) == [0, 3]
        for seed in a:
            assert torch.equal(a[seed].inputs, b[seed].inputs)
            assert torch.equal(a[seed].targets, b[seed].targets)
            assert a[seed].latents.keys() == b[seed].latents.keys()
            for key in a[seed].latents:
                assert torch.equal(a[seed].latents[key], b[seed].latents[key])


def test_a_run_trained_with_loader_workers_is_the_same_file_for_file(tmp_path):
    run = smoke_run()
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    train(run, tmp_path / "loop", progress=False)
    train(run, tmp_path / "workers", stop_at=6, progress=False, loader_workers=2)
    train(run, tmp_path / "workers", resume=True, progress=False, loader_workers=1)
    assert torch.equal(torch.get_rng_state(), before)  # workers seeded from their own RNG
    ckpt = "checkpoint.safetensors"
    assert (tmp_path / "loop" / ckpt).read_bytes() == (tmp_path / "workers" / ckpt).read_bytes()
    assert metrics(tmp_path / "loop") == metrics(tmp_path / "workers")
