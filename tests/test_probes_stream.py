import pytest
import torch

from models import build_model
from probes.cache import cache_activations, iterate_batches
from probes.fit import fit_probe
from probes.stream import model_batches, probe_rows, store_batches
from tasks import build_task
from tasks.targets import ProbeTarget

HOOKS = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post"]
POSITION = ProbeTarget("pos_xy", at="is_obs", spatial=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    task = build_task("graph_nav", {"width": 3, "height": 3, "n_steps": 8})
    model = build_model(
        "lstm", {"d_vocab": task.d_vocab_in, "d_vocab_out": task.d_vocab_out, "d_model": 8}
    )

    def batches():
        return iterate_batches(task, 40, 8, lambda i: torch.Generator().manual_seed(i))

    path = tmp_path_factory.mktemp("store") / "acts"
    store = cache_activations(model, batches(), HOOKS, path, torch.device("cpu"), progress=False)
    return model, batches, store


def test_store_rows_are_the_probed_tokens_of_every_shard(setup):
    model, batches, store = setup
    rows = list(store_batches(store.path, HOOKS[1], POSITION))
    assert len(rows) == store.n_shards == 5
    expected_acts, expected_pos, expected_env = [], [], []
    for batch in batches():
        with torch.no_grad():
            _, cache = model.run_with_cache(batch.inputs)
        keep = batch.latents["is_obs"]
        expected_acts.append(cache[HOOKS[1]][keep])
        expected_pos.append(batch.latents["pos_xy"][keep])
        expected_env.append(batch.latents["env_id"][keep])
    torch.testing.assert_close(torch.cat([r[0] for r in rows]), torch.cat(expected_acts))
    torch.testing.assert_close(torch.cat([r[1] for r in rows]), torch.cat(expected_pos))
    torch.testing.assert_close(torch.cat([r[2] for r in rows]), torch.cat(expected_env))


def test_model_batches_give_the_same_rows_as_the_store(setup):
    model, batches, store = setup
    from_store = list(store_batches(store, HOOKS[0], POSITION))
    from_model = list(model_batches(model, batches, HOOKS[0], POSITION))
    for a, b in zip(from_store, from_model, strict=True):
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y)


def test_rows_at_the_filtered_tokens_grouped_by_sequence_without_env_id():
    acts = torch.arange(24.0).reshape(3, 4, 2)
    at = torch.tensor([[1, 0, 1, 0]] * 3, dtype=torch.bool)
    latents = {"t": torch.arange(12.0).reshape(3, 4), "go": at}
    x, labels, groups = probe_rows(acts, latents, ProbeTarget("t", at="go"), first_sequence=5)
    torch.testing.assert_close(x, acts[at])
    assert labels.tolist() == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    assert groups.tolist() == [5, 5, 6, 6, 7, 7]


def test_fit_probe_streams_from_the_store(setup):
    _, _, store = setup
    result = fit_probe("ridge", store_batches(store, HOOKS[1], POSITION), POSITION)
    assert result.n_train + result.n_test == 40 * 8  # 40 sequences x 8 observation tokens
    assert result.proximity_error is not None


def test_clear_errors(setup):
    model, batches, store = setup
    with pytest.raises(KeyError, match=r"hook 'blocks.3.hook_cell' not cached; cached: \["):
        store_batches(store, "blocks.3.hook_cell", POSITION)
    with pytest.raises(KeyError, match=r"no latent\(s\) \['heading'\]; it has \["):
        store_batches(store, HOOKS[0], ProbeTarget("heading"))
    with pytest.raises(KeyError, match=r"model has no hook 'blocks.3.hook_cell'; valid: \["):
        model_batches(model, batches, "blocks.3.hook_cell", POSITION)
    with pytest.raises(KeyError, match=r"batch has no latent\(s\) \['heading'\]; it has \["):
        next(iter(model_batches(model, batches, HOOKS[0], ProbeTarget("heading"))))
