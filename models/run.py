"""One run's complete config, resolved from a study's choices: the task's config filled in,
the model sized to the parameter budget, the training budget fixed. The resolved dict is
exactly what ``config.json`` holds, and everything downstream rebuilds the run from it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from torch import nn

from models.budget import fit_to_budget
from models.registry import build_model, model_config
from tasks import Task, build_task

EXECUTION = ("batch_seeds", "loader_workers")
"""Training fields that say how runs are executed, not what they learn: left out of the run
config (and so of its fingerprint), so a run executed one way or another has the same
config and either way can resume the other."""


def resolve_run(
    keys: dict[str, Any],
    task: str,
    task_fields: dict[str, Any],
    architecture: str,
    model_fields: dict[str, Any],
    param_budget: int | None,
    train: dict[str, Any],
) -> dict[str, Any]:
    """The run config of ``keys`` (experiment, study, condition, model, seed): task
    ``task`` with ``task_fields``, model ``architecture`` with ``model_fields`` (input and
    output sizes set from the task, ``d_model`` fitted to ``param_budget`` within 10%),
    trained with ``train`` (the fields of :class:`models.train.TrainConfig`, less
    :data:`EXECUTION`)."""
    built = build_task(task, task_fields)
    fields = dict(model_fields)
    fields.update(d_vocab=built.d_vocab_in, d_input=built.d_input, d_vocab_out=built.d_vocab_out)
    fields["seed"] = keys["seed"]
    config = model_config(architecture, fields)
    if hasattr(config, "n_ctx"):
        config = dataclasses.replace(config, n_ctx=built.seq_len)
    if param_budget:
        config = fit_to_budget(architecture, config, param_budget)
    run = {
        **keys,
        "task": task,
        "task_config": dataclasses.asdict(built.config),
        "architecture": architecture,
        "model_config": dataclasses.asdict(config),
        "param_budget": param_budget,
        "train": {k: v for k, v in train.items() if k not in EXECUTION},
    }
    return json.loads(json.dumps(run))  # exactly what config.json will hold


def build_run(run: dict[str, Any]) -> tuple[Task, nn.Module]:
    """The task and a freshly initialised model of a resolved run config."""
    return build_task(run["task"], run["task_config"]), build_model(
        run["architecture"], run["model_config"]
    )
