import numpy as np
import pytest
import torch

from probes.cache import ActivationStore, cache_activations, iterate_batches, layer_hooks
from probes.ridge import RidgeStats, fit, fold_of, r2


def test_streamed_ridge_equals_the_closed_form_on_all_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6))
    y = x @ rng.normal(size=(6, 2)) + 3.0 + 0.1 * rng.normal(size=(300, 2))
    stats = RidgeStats(6, 2)
    for chunk in np.array_split(np.arange(300), 7):  # streamed in uneven chunks
        stats.add(torch.tensor(x[chunk]), torch.tensor(y[chunk]))
    alpha = 0.1
    w, b = fit(stats, alpha)
    xc, yc = x - x.mean(0), y - y.mean(0)
    penalty = alpha * np.mean(np.diag(xc.T @ xc))
    w_ref = np.linalg.solve(xc.T @ xc + penalty * np.eye(6), xc.T @ yc)
    b_ref = y.mean(0) - x.mean(0) @ w_ref
    np.testing.assert_allclose(w.numpy(), w_ref, rtol=1e-9)
    np.testing.assert_allclose(b.numpy(), b_ref, rtol=1e-9)
    pred = x @ w_ref + b_ref
    r2_ref = 1 - ((y - pred) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
    assert r2(stats, w, b) == pytest.approx(r2_ref, abs=1e-9)


def test_folds_keep_each_environment_whole():
    groups = torch.arange(1000).repeat_interleave(5)
    fold = fold_of(groups, folds=5, test_fraction=0.25)
    assert all(len(set(fold[groups == g].tolist())) == 1 for g in range(0, 1000, 37))
    assert 0.2 < (fold == -1).float().mean() < 0.3
    assert set(fold.tolist()) == {-1, 0, 1, 2, 3, 4}


def test_activation_store_round_trip_and_incomplete_store(tmp_path):
    from models import build_model
    from tasks import build_task

    task = build_task("graph_nav", {"width": 3, "height": 3, "n_steps": 6})
    model = build_model(
        "lstm",
        {"d_vocab": task.d_vocab_in, "d_vocab_out": task.d_vocab_out, "d_model": 8, "n_layers": 2},
    )
    hooks = layer_hooks(2)
    batches = list(iterate_batches(task, 10, 4, lambda i: torch.Generator().manual_seed(i)))
    store = cache_activations(
        model, iter(batches), hooks, tmp_path / "acts", torch.device("cpu"), progress=False
    )
    assert store.n_sequences == 10 and store.n_shards == 3
    acts, latents = ActivationStore.open(tmp_path / "acts").load(hooks[-1], ["pos_xy"])
    with torch.no_grad():
        expected = torch.cat([model.run_with_cache(b.inputs)[1][hooks[-1]] for b in batches])
    torch.testing.assert_close(acts, expected)
    torch.testing.assert_close(latents["pos_xy"], torch.cat([b.latents["pos_xy"] for b in batches]))
    (tmp_path / "acts/index.json").unlink()
    with pytest.raises(FileNotFoundError, match="no complete activation store"):
        ActivationStore.open(tmp_path / "acts")
