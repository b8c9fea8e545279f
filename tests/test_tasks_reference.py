"""Reference predictors against ground truth: counting checked against a loop, and each
predictor against the optimal predictor without the sequence's history where it is known
analytically (Mess3's current-token predictor, parity, the alternation's choice point,
interval timing's never-respond, path integration's start)."""

import itertools

import pytest
import torch

from lab.streams import EVAL, REFERENCE, generator
from models.train import TrainConfig, evaluate
from tasks import IGNORE_INDEX, Batch, build_task
from tasks.path_integration import PositionReadout
from tasks.reference import CountTable, fit_references


def fitted(task, seed=0):
    return fit_references(task, lambda index: generator(seed, REFERENCE, index))


def scores(task, predictor, n_batches=8, batch_size=256) -> dict[str, float]:
    """The task's metrics of ``predictor`` pooled over held-out batches."""
    sums = {}
    for index in range(n_batches):
        batch = task.sample(batch_size, generator(0, EVAL, index))
        for name, (total, count) in task.metrics(predictor(batch), batch).items():
            acc = sums.setdefault(name, [0.0, 0])
            acc[0] += total
            acc[1] += count
    return {name: total / count for name, (total, count) in sums.items() if count}


@pytest.mark.parametrize("key", ["input", "position", "none"])
def test_count_tables_are_laplace_smoothed_counts_of_the_scored_targets(key):
    task = build_task("copying", {"n_letters": 4, "max_train_len": 3})  # most targets ignored
    table = CountTable("t", key)
    batches = [task.sample(16, torch.Generator().manual_seed(i)) for i in range(3)]
    for batch in batches:
        table.observe(task, batch)
    table.finish()
    n_keys = {"input": task.d_vocab_in, "position": task.seq_len, "none": 1}[key]
    counts = [[1.0] * task.d_vocab_out for _ in range(n_keys)]
    for batch in batches:
        rows, positions = batch.inputs.shape
        for b, t in itertools.product(range(rows), range(positions)):
            target = int(batch.targets[b, t])
            if target != IGNORE_INDEX:
                k = {"input": int(batch.inputs[b, t]), "position": t, "none": 0}[key]
                counts[k][target] += 1
    expected = torch.tensor([[c / sum(row) for c in row] for row in counts]).double().log()
    torch.testing.assert_close(table.log_probs, expected)
    logits = table(batches[0])
    assert logits.shape == (*batches[0].inputs.shape, task.d_vocab_out)
    k = {"input": batches[0].inputs[1, 5], "position": 5, "none": 0}[key]
    torch.testing.assert_close(logits[1, 5], expected[k])


def test_mess3_history_free_is_the_analytic_current_token_predictor():
    """P(x_{t+1} | x_t) = pi T^(a) T^(b) 1 / pi T^(a) 1 on the stationary process: the fitted
    table within sampling error, and its KL to Bayes on held-out batches within 2% of the
    analytic predictor's, about 0.0020 nats (the unigram: about 0.0096)."""
    task = build_task("mess3", {"n_steps": 16})
    T, pi = task.T, task.pi
    ones = torch.ones(3, dtype=torch.float64)
    joint = torch.stack(
        [torch.stack([pi @ T[a] @ T[b] @ ones for b in range(3)]) for a in range(3)]
    )
    analytic = joint / joint.sum(1, keepdim=True)  # [current token, next token]
    references = fitted(task)
    history_free = references["history_free"]
    torch.testing.assert_close(history_free.log_probs.exp(), analytic, atol=5e-3, rtol=0)

    kl = scores(task, history_free)["kl_to_bayes"]
    exact = scores(task, lambda batch: analytic.log()[batch.inputs])["kl_to_bayes"]
    assert kl == pytest.approx(exact, rel=0.02)
    assert exact == pytest.approx(0.0020, abs=2e-4)
    assert scores(task, references["unigram"])["kl_to_bayes"] == pytest.approx(0.0096, abs=5e-4)


def test_parity_references_see_only_the_first_state():
    """Z2: the running parity equals the present bit only at the first position, so the
    present bit predicts it in 1/2 + 1/(2T) of positions; the position alone in 1/2."""
    n_steps = 8
    task = build_task("group_word", {"group": "Z2", "n_steps": n_steps})
    references = fitted(task)
    same = (1 + (n_steps - 1) / 2) / n_steps  # P(state = present bit)
    analytic = torch.tensor([[same, 1 - same], [1 - same, same]], dtype=torch.float64)
    torch.testing.assert_close(
        references["history_free"].log_probs.exp(), analytic, atol=5e-3, rtol=0
    )
    assert scores(task, references["history_free"])["accuracy"] == pytest.approx(same, abs=0.015)
    assert scores(task, references["clock"])["accuracy"] == pytest.approx(0.5, abs=0.015)
    assert scores(task, references["unigram"])["accuracy"] == pytest.approx(0.5, abs=0.015)


def test_alternation_history_free_guesses_the_turn_at_the_choice_point():
    task = build_task("alternation", {"stem_length": 4, "n_steps": 32, "p_stay": 0.2})
    history_free = fitted(task)["history_free"]
    choice = history_free.log_probs[task.choice_node].exp()
    left, right = task.choice_node - 1, task.choice_node + 1  # the arms' top nodes
    expected = torch.zeros(task.n_nodes, dtype=torch.float64)
    expected[task.choice_node] = task.config.p_stay
    expected[left] = expected[right] = (1 - task.config.p_stay) / 2
    torch.testing.assert_close(choice, expected, atol=5e-3, rtol=0)
    assert scores(task, history_free)["choice_accuracy"] == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize("cue_signals_delay", [True, False])
def test_interval_timing_references_never_respond(cue_signals_delay):
    task = build_task("interval_timing", {"cue_signals_delay": cue_signals_delay})
    respond_rate = None
    for name, reference in fitted(task).items():
        result = scores(task, reference)
        assert result["trial_accuracy"] == 0 and result["hit_rate"] == 0, name
        assert result["false_alarm_rate"] == 0, name
        batch = task.sample(256 * 8, generator(0, EVAL, 0))
        respond_rate = respond_rate or float(batch.targets.double().mean())
        assert result["accuracy"] == pytest.approx(1 - respond_rate, abs=0.01), name


def test_path_integration_references_know_the_start_and_no_more():
    """Cartesian readout with the start as (x, y): velocity_only gets the first position
    exactly (it is linear in the input), and after it no better than the box's centre,
    which is what position_free predicts throughout."""
    task = build_task("path_integration", {"readout": "cartesian", "init_input": "xy"})
    references = fitted(task)
    batch = task.sample(512, generator(0, EVAL, 0))
    moved = task.moved_to(batch)
    centre = references["position_free"](batch)
    assert centre.abs().max() == 0
    guess = references["velocity_only"](batch)
    error = (guess - moved).norm(dim=-1)
    assert error[:, 0].max() < 1e-4
    centre_error = float(moved[:, 1:].norm(dim=-1).mean())
    assert float(error[:, 1:].mean()) == pytest.approx(centre_error, rel=0.03)
    assert scores(task, references["position_free"])["pos_error"] == pytest.approx(
        scores(task, lambda b: torch.zeros(*b.inputs.shape[:2], 2))["pos_error"]
    )


def test_path_integration_place_cell_references_emit_the_readout_of_their_position():
    task = build_task("path_integration", {"readout": "dos"})
    assert [ref.name for ref in task.reference_predictors()] == ["position_free", "velocity_only"]
    batch = task.sample(4, generator(0, EVAL, 0))
    logits = PositionReadout("position_free", task)(batch)  # needs no fitting
    assert logits.shape == batch.targets.shape
    expected = task.readout(torch.zeros(2)).double().clamp_min(1e-12).log()
    torch.testing.assert_close(logits[2, 3], expected)
    with pytest.raises(ValueError, match="unknown predictor 'oracle'; valid"):
        PositionReadout("oracle", task)


def test_references_are_a_function_of_the_seed():
    task = build_task("group_word", {"group": "Z2", "n_steps": 8})
    one, again, other = fitted(task, 3), fitted(task, 3), fitted(task, 4)
    assert torch.equal(one["history_free"].counts, again["history_free"].counts)
    assert not torch.equal(one["history_free"].counts, other["history_free"].counts)


def test_continuous_tasks_must_declare_their_own_references():
    task = build_task("path_integration")
    batch = task.sample(2, torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match="declare its own reference_predictors"):
        CountTable("history_free", "input").observe(task, batch)
    with pytest.raises(ValueError, match="unknown key 'token'; valid"):
        CountTable("x", "token")


class Predictor(torch.nn.Module):
    """A reference predictor called like a model."""

    def __init__(self, reference):
        super().__init__()
        self.reference = reference

    def forward(self, inputs):
        return self.reference(Batch(inputs, torch.zeros(inputs.shape[:2], dtype=torch.long)))


def test_evaluate_scores_references_on_the_networks_batches_pooled_alike():
    """A network that is the history_free predictor gets exactly the history_free scores,
    every variant of the task included (copying's long_ evaluation)."""
    task = build_task("copying", {"n_letters": 6, "max_train_len": 4})
    config = TrainConfig(eval_batches=3, batch_size=8)
    history_free = fitted(task, seed=5)["history_free"]
    final, _, references = evaluate(Predictor(history_free), task, 5, config, "cpu", True)
    assert set(references) == {"history_free", "clock", "unigram"}
    assert references["history_free"] == final
    assert "long_accuracy" in final and set(references["clock"]) == set(final)
    assert evaluate(Predictor(history_free), task, 5, config, "cpu") == final
