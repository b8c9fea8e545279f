"""Interval timing: cue, a delay of variable length, a response at the right time
(time cells: MacDonald et al. 2011; Cao et al. 2022 for the width-vs-peak slope).

A sequence is a train of trials. Each trial is an inter-trial interval of ``iti_min..iti_max``
blank steps, a cue, ``delay - 1`` blank steps, and a response step (input blank) exactly
``delay`` steps after the cue, with ``delay`` drawn per trial uniformly from
``delay_min..delay_max``. The model sees blanks and cues and must output *respond* (class
1) at the response step and *wait* (class 0) everywhere else.

Which cue: with ``cue_signals_delay=True`` (default) the cue token names the trial's delay
(token ``1 + delay - delay_min``), so a perfect response is possible and time cells should
tile each delay; with False there is one cue token and the response time is only known in
distribution (a hazard-rate task). ``delay_min == delay_max`` gives a fixed interval.

Tokens: 0 blank, 1.. cue(s). Outputs: 0 wait, 1 respond. Every step is scored.

Latents ([batch, T]):
  t_since_cue (steps since the last cue, 0 at the cue; -1 before the first cue),
  delay_length (of the current trial, set from its cue onwards; -1 before the first cue),
  phase (0 pre-cue / inter-trial interval, 1 cue and delay, 2 response step),
  trial (index of the current trial; -1 before the first cue),
  in_trial (cue, delay and response steps: phase >= 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tasks.base import Batch, Curve, Task, accuracy_by
from tasks.targets import ProbeTarget, TimeMaps

BLANK, WAIT, RESPOND = 0, 0, 1
ITI, DELAY, RESPONSE = 0, 1, 2


@dataclass
class IntervalTimingConfig:
    n_steps: int = 64
    """Tokens per sequence (several trials)."""
    delay_min: int = 3
    """Shortest cue-to-response delay (steps)."""
    delay_max: int = 12
    """Longest delay (steps)."""
    iti_min: int = 2
    """Shortest inter-trial interval (blank steps before a cue)."""
    iti_max: int = 6
    """Longest inter-trial interval."""
    cue_signals_delay: bool = True
    """One cue token per delay value (True) or a single cue token (False)."""

    def __post_init__(self):
        if not 1 <= self.delay_min <= self.delay_max:
            raise ValueError(
                f"need 1 <= delay_min <= delay_max, got {self.delay_min}, {self.delay_max}"
            )
        if not 1 <= self.iti_min <= self.iti_max:
            raise ValueError(f"need 1 <= iti_min <= iti_max, got {self.iti_min}, {self.iti_max}")
        if self.n_steps < 2:
            raise ValueError("n_steps must be at least 2")


class IntervalTimingTask(Task):
    """Respond exactly ``delay`` steps after each cue."""

    name = "interval_timing"

    def __init__(self, config: IntervalTimingConfig | None = None):
        self.config = config or IntervalTimingConfig()
        c = self.config
        n_cues = c.delay_max - c.delay_min + 1 if c.cue_signals_delay else 1
        self.d_vocab_in = 1 + n_cues
        self.d_vocab_out = 2
        self.seq_len = c.n_steps

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        c, B, T = self.config, batch_size, self.config.n_steps
        # at most one trial per (iti_min + delay_min + 1) steps: draw enough of everything
        n_trials = T // (c.iti_min + c.delay_min) + 2
        itis = torch.randint(c.iti_min, c.iti_max + 1, (B, n_trials), generator=generator)
        delays = torch.randint(c.delay_min, c.delay_max + 1, (B, n_trials), generator=generator)
        # start in a random place of the first trial's ITI so sequences are out of phase
        countdown = (torch.rand(B, generator=generator) * itis[:, 0]).long() + 1  # blanks left
        rows = torch.arange(B)
        trial = torch.full((B,), -1)
        since = torch.full((B,), -1)
        delay = torch.full((B,), -1)
        in_iti = torch.ones(B, dtype=torch.bool)
        inputs = torch.empty(B, T, dtype=torch.long)
        lat = {
            k: torch.empty(B, T, dtype=torch.long)
            for k in ("t_since_cue", "delay_length", "phase", "trial")
        }
        for t in range(T):
            cue_now = in_iti & (countdown == 0)
            trial = torch.where(cue_now, trial + 1, trial)
            nxt = trial.clamp(min=0)
            delay = torch.where(cue_now, delays[rows, nxt], delay)
            since = torch.where(cue_now, 0, torch.where(since >= 0, since + 1, since))
            responding = ~in_iti & ~cue_now & (since == delay)
            cue_token = 1 + (delay - c.delay_min if c.cue_signals_delay else 0)
            inputs[:, t] = torch.where(cue_now, cue_token, BLANK)
            lat["t_since_cue"][:, t] = since
            lat["delay_length"][:, t] = delay
            lat["trial"][:, t] = trial
            lat["phase"][:, t] = torch.where(
                responding, RESPONSE, torch.where(cue_now | (~in_iti & (since < delay)), DELAY, ITI)
            )
            # state for the next step
            in_iti = torch.where(cue_now, False, torch.where(responding, True, in_iti))
            next_iti = itis[rows, (trial + 1).clamp(max=n_trials - 1)]
            countdown = torch.where(
                responding, next_iti, torch.where(in_iti, countdown - 1, countdown)
            )
        targets = (lat["phase"] == RESPONSE).long()
        lat["in_trial"] = lat["phase"] > ITI
        return Batch(inputs, targets, lat)

    def probe_targets(self) -> tuple[ProbeTarget, ...]:
        return (
            ProbeTarget("t_since_cue", "regression", at="in_trial"),
            ProbeTarget("phase", "classification", n_classes=3),
        )

    def rate_maps(self) -> tuple[TimeMaps, ...]:
        return (TimeMaps(n_bins=self.config.delay_max + 1, at="in_trial"),)

    @torch.no_grad()
    def curves(self, logits: torch.Tensor, batch: Batch) -> dict[str, Curve]:
        """respond_rate_by_time: how often the model responds at each time since the cue,
        within trials (its response-time distribution pooled over delays);
        hit_rate_by_delay: responses on time by the trial's delay."""
        lat, respond = batch.latents, (logits.argmax(-1) == RESPOND).float()
        n = self.config.delay_max + 1
        in_trial = torch.where(lat["in_trial"], lat["t_since_cue"], -1)
        response = torch.where(lat["phase"] == RESPONSE, lat["delay_length"], -1)
        return {
            "respond_rate_by_time": accuracy_by(respond, in_trial, n),
            "hit_rate_by_delay": accuracy_by(respond, response, n),
        }

    @torch.no_grad()
    def metrics(self, logits: torch.Tensor, batch: Batch) -> dict[str, tuple[float, int]]:
        """accuracy (all steps), hit_rate (respond at response steps), false_alarm_rate
        (respond at any other step), trial_accuracy (a trial's delay and response all right:
        no early response, response on time)."""
        pred = logits.argmax(-1)
        correct = pred == batch.targets
        response = batch.targets == RESPOND
        lat = batch.latents
        # a trial is scored if its response lies inside the sequence
        trial = lat["trial"]
        n_trials = int(trial.max()) + 2
        index = (trial + 1) + n_trials * torch.arange(trial.shape[0], device=trial.device)[:, None]
        in_trial = lat["phase"] > ITI
        wrong = torch.bincount(index[in_trial & ~correct], minlength=n_trials * trial.shape[0])
        has_resp = torch.bincount(index[response], minlength=n_trials * trial.shape[0])
        trial_ok = (wrong == 0) & (has_resp > 0)
        return {
            "accuracy": (correct.sum().item(), correct.numel()),
            "hit_rate": ((pred == RESPOND)[response].sum().item(), int(response.sum())),
            "false_alarm_rate": ((pred == RESPOND)[~response].sum().item(), int((~response).sum())),
            "trial_accuracy": (trial_ok.sum().item(), int((has_resp > 0).sum())),
        }
