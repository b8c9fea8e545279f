"""Copying (Jelassi et al. 2024, "Repeat after me"): transformers copy strings longer than
those seen in training; fixed-state models (SSMs, RNNs) fail once the string outgrows state.

Sequence: ``[BOS] x_1 .. x_n [SEP] x_1 .. x_n [PAD]...`` over ``n_letters`` letters, with
``n`` drawn per sequence uniformly from ``min_len..max_len``. Targets only on the copy half:
at ``[SEP]`` the model predicts ``x_1``, at the copy of ``x_i`` it predicts ``x_{i+1}``
(teacher forcing); everything else is ``IGNORE_INDEX``. A batch is padded to its config's
``max_len`` (so training batches stay short); ``seq_len`` (the model's context) covers the
longest evaluation string, ``2 * eval_max_len + 2``.

Train/evaluate on lengths: the training config is e.g. ``max_train_len=L`` (and
``max_len`` defaults to it); the length-generalisation evaluation is the same task with
``min_len=L+1, max_len=eval_max_len`` (:meth:`CopyingTask.length_eval_task`), which keeps
``seq_len`` and the vocabulary, so a model trained on one runs on the other.

Tokens: letters ``0..n_letters-1``, then BOS, SEP, PAD. Outputs: ``n_letters``.
Latents ([batch, pos]): ``length`` (n of the sequence, at every position), ``copy_pos``
(i for the position whose target is ``x_i``, 1-based; -1 where not scored), ``in_copy``
(the scored positions).
Metrics: token accuracy, string accuracy (every copied letter of a string right), and
both split into ``*_in_dist`` (n <= max_train_len) and ``*_longer`` (n > max_train_len).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from tasks.base import IGNORE_INDEX, Batch, Curve, Task, accuracy_by
from tasks.targets import ProbeTarget, TuningMaps


@dataclass
class CopyingConfig:
    n_letters: int = 26
    """Alphabet size."""
    max_train_len: int = 8
    """L: the longest string in training."""
    eval_max_len: int | None = None
    """Longest evaluation string (default 4 * max_train_len); sets ``seq_len``."""
    min_len: int = 1
    """Shortest string this config samples."""
    max_len: int | None = None
    """Longest string this config samples (default ``max_train_len``)."""

    def __post_init__(self):
        if self.eval_max_len is None:
            self.eval_max_len = 4 * self.max_train_len
        if self.max_len is None:
            self.max_len = self.max_train_len
        if self.n_letters < 2:
            raise ValueError(f"n_letters must be at least 2, got {self.n_letters}")
        if not 1 <= self.min_len <= self.max_len <= self.eval_max_len:
            raise ValueError(
                f"need 1 <= min_len <= max_len <= eval_max_len, got {self.min_len}, "
                f"{self.max_len}, {self.eval_max_len}"
            )
        if self.max_train_len < 1:
            raise ValueError(f"max_train_len must be at least 1, got {self.max_train_len}")


class CopyingTask(Task):
    """Teacher-forced copying of variable-length strings."""

    name = "copying"

    def __init__(self, config: CopyingConfig | None = None):
        self.config = config or CopyingConfig()
        c = self.config
        self.bos, self.sep, self.pad = c.n_letters, c.n_letters + 1, c.n_letters + 2
        self.d_vocab_in = c.n_letters + 3
        self.d_vocab_out = c.n_letters
        self.chance_accuracy = 1 / c.n_letters
        self.seq_len = 2 * c.eval_max_len + 2

    def evaluation_tasks(self) -> dict[str, Task]:
        """Training lengths, and (prefix "long_") strings up to ``eval_max_len``."""
        return {"": self, "long_": self.length_eval_task()}

    def length_eval_task(self) -> CopyingTask:
        """The same task on strings longer than any in training (up to ``eval_max_len``)."""
        c = self.config
        if c.eval_max_len <= c.max_train_len:
            raise ValueError("eval_max_len must exceed max_train_len for a length evaluation")
        return CopyingTask(
            dataclasses.replace(c, min_len=c.max_train_len + 1, max_len=c.eval_max_len)
        )

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        c, B = self.config, batch_size
        P = 2 * c.max_len + 2
        n = torch.randint(c.min_len, c.max_len + 1, (B, 1), generator=generator)  # [B, 1]
        letters = torch.randint(c.n_letters, (B, c.max_len), generator=generator)
        pos = torch.arange(P)[None]  # [1, P]
        # source index of each position: x_i at i (1..n) and at n + 1 + i
        i_src = torch.where(pos <= n, pos, pos - n - 1)  # 1-based letter index
        letter = letters.gather(1, (i_src - 1).clamp(0, c.max_len - 1).expand(B, -1))
        is_letter = ((pos >= 1) & (pos <= n)) | ((pos > n + 1) & (pos <= 2 * n + 1))
        inputs = torch.where(is_letter, letter, self.pad)
        inputs[:, 0] = self.bos
        inputs.scatter_(1, n + 1, self.sep)
        scored = (pos >= n + 1) & (pos <= 2 * n)  # SEP .. copy of x_{n-1}
        copy_pos = torch.where(scored, pos - n, -1)  # target is x_{copy_pos}
        target = letters.gather(1, (copy_pos - 1).clamp(0, c.max_len - 1))
        targets = torch.where(scored, target, IGNORE_INDEX)
        latents = {"length": n.expand(-1, P).clone(), "copy_pos": copy_pos, "in_copy": scored}
        return Batch(inputs, targets, latents)

    def probe_targets(self) -> tuple[ProbeTarget, ...]:
        return (
            ProbeTarget("copy_pos", "regression", at="in_copy"),
            ProbeTarget("length", "regression", at="in_copy"),
        )

    def rate_maps(self) -> tuple[TuningMaps, ...]:
        return (TuningMaps("copy_pos", self.config.eval_max_len + 1, at="in_copy"),)

    @torch.no_grad()
    def curves(self, logits: torch.Tensor, batch: Batch) -> dict[str, Curve]:
        """token_accuracy_by_length and string_accuracy_by_length: x = string length
        1..eval_max_len (lengths past max_train_len come from the ``long_`` evaluation)."""
        scored = batch.targets != IGNORE_INDEX
        correct = (logits.argmax(-1) == batch.targets) & scored
        length = batch.latents["length"]
        n = self.config.eval_max_len + 1
        string_ok = (correct | ~scored).all(1)
        return {
            "token_accuracy_by_length": accuracy_by(correct, torch.where(scored, length, -1), n),
            "string_accuracy_by_length": accuracy_by(string_ok, length[:, 0], n),
        }

    @torch.no_grad()
    def metrics(self, logits: torch.Tensor, batch: Batch) -> dict[str, tuple[float, int]]:
        scored = batch.targets != IGNORE_INDEX
        correct = (logits.argmax(-1) == batch.targets) & scored
        string_ok = (correct | ~scored).all(1)  # [B]
        longer = batch.latents["length"][:, 0] > self.config.max_train_len
        out = {
            "accuracy": (correct.sum().item(), int(scored.sum())),
            "string_accuracy": (string_ok.sum().item(), string_ok.numel()),
        }
        for suffix, rows in (("in_dist", ~longer), ("longer", longer)):
            out[f"accuracy_{suffix}"] = (correct[rows].sum().item(), int(scored[rows].sum()))
            out[f"string_accuracy_{suffix}"] = (string_ok[rows].sum().item(), int(rows.sum()))
        return out
