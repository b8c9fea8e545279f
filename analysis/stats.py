"""Shuffle nulls for a cell census: is each unit's score above what chance gives it?

Each null keeps what its score does not test and breaks what it does:

* :func:`shuffle_null`: circular shifts of each unit's whole activity in time (place, grid,
  head-direction cells in continuous recordings);
* :func:`sequence_shift_null`: circular shifts by whole sequences of independent held-out
  sequences (the census's null for tuning: periodic task structure such as laps cannot
  line back up with itself);
* :func:`segment_shuffle_null`: circular shifts within each trial/segment, each with its
  own shift (time cells: trials of equal length line back up under a global shift);
* :func:`group_permutation_null`: labels permuted among laps/passes rather than samples
  (splitter cells: keeps the autocorrelation of activity within a lap);
* :func:`analysis.field_shuffle.field_shuffle_null`: fields moved intact within the rate
  map (gridness; Barry & Burgess 2017).

All return a :class:`ShuffleNull` and run every unit (and blocks of shuffles) at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from einops import rearrange


@dataclass
class ShuffleNull:
    """Observed scores against a shuffle null (see :func:`shuffle_null`)."""

    observed: torch.Tensor  # [units]
    null: torch.Tensor  # [n_shuffles, units]
    p_values: torch.Tensor  # [units] (1 + #null >= observed) / (1 + n_shuffles)
    threshold_95: torch.Tensor  # [units] 95th percentile of the null
    threshold_99: torch.Tensor  # [units]
    significant: torch.Tensor  # [units] bool: observed > threshold_95


def summarise_null(observed: torch.Tensor, null: torch.Tensor) -> ShuffleNull:
    """p-values and thresholds of ``observed`` [units] against ``null`` [n_shuffles, units]."""
    if observed.ndim != 1 or null.ndim != 2 or null.shape[1] != observed.shape[0]:
        raise ValueError(
            f"expected observed [units] and null [n_shuffles, units], got "
            f"{tuple(observed.shape)} and {tuple(null.shape)}"
        )
    p_values = (1 + (null >= observed).sum(0)) / (1 + null.shape[0])
    levels = torch.tensor([0.95, 0.99], dtype=torch.float64, device=null.device)
    thresholds = torch.quantile(null.double(), levels, dim=0)
    return ShuffleNull(
        observed, null, p_values, thresholds[0], thresholds[1], observed > thresholds[0]
    )


def shuffle_null(
    metric: Callable[..., torch.Tensor],
    activity: torch.Tensor,
    *args,
    n_shuffles: int = 1000,
    min_shift: int | None = None,
    generator: torch.Generator | None = None,
    max_elements: int = 2**24,
    **kwargs,
) -> ShuffleNull:
    """Significance of ``metric(activity, *args, **kwargs) -> [units]`` for every unit.

    activity [samples, units]. Each shuffle shifts every unit's activity circularly in time
    by its own random offset in ``[min_shift, samples - min_shift]`` (default
    ``samples // 20``), which keeps each unit's temporal structure but breaks its relation
    to the behavioural variables in ``args`` (the standard place/grid/time-cell test, e.g.
    Langston et al. 2010). Shuffles are batched as extra units: ``metric`` is called on
    [samples, chunk * units] blocks of at most ``max_elements`` values, so it must treat
    units independently.
    """
    _check_activity(activity)
    samples, units = activity.shape
    min_shift = samples // 20 if min_shift is None else min_shift
    if not 0 <= min_shift <= samples // 2:
        raise ValueError(
            f"min_shift must be in [0, samples // 2 = {samples // 2}], got {min_shift}"
        )
    shifts = torch.randint(
        min_shift, samples - min_shift + 1, (n_shuffles, 1, units), generator=generator
    )
    layout = _SegmentLayout(torch.zeros(samples, dtype=torch.long, device=activity.device))
    return _circular_null(metric, activity, args, kwargs, layout, shifts, max_elements)


def segment_shuffle_null(
    metric: Callable[..., torch.Tensor],
    activity: torch.Tensor,
    segment: torch.Tensor,
    *args,
    n_shuffles: int = 1000,
    min_shift: int = 0,
    generator: torch.Generator | None = None,
    max_elements: int = 2**24,
    **kwargs,
) -> ShuffleNull:
    """Like :func:`shuffle_null`, but every unit's activity is shifted circularly *within*
    each segment, each segment (and unit, and shuffle) with its own random shift.

    activity [samples, units]; segment [samples] integer id of each sample's segment (e.g.
    the trial index; a segment's samples are taken in time order and need not be
    contiguous). A segment of length L is shifted by k uniform in ``[min_shift, L -
    max(min_shift, 1)]`` (all L rotations by default). This keeps each trial's activity and
    its temporal structure within the trial but breaks its relation to time within the
    trial, which a global shift does not: concatenated trials of equal length line back up
    whenever the shift is a multiple of the trial length, and a score over time since the
    cue sees only a rotated tuning curve. ``metric`` is called as in :func:`shuffle_null`.
    """
    _check_activity(activity)
    if segment.shape != activity.shape[:1]:
        raise ValueError(
            f"segment must be [samples={activity.shape[0]}], got {tuple(segment.shape)}"
        )
    layout = _SegmentLayout(segment.to(activity.device))
    shortest = int(layout.lengths.min())
    if not 0 <= min_shift <= shortest // 2:
        raise ValueError(
            f"min_shift must be in [0, shortest segment // 2 = {shortest // 2}], got {min_shift}"
        )
    lengths = layout.lengths.cpu()[None, :, None]  # [1, segments, 1]
    choices = lengths - max(min_shift, 1) - min_shift + 1
    uniform = torch.rand(
        (n_shuffles, len(layout.lengths), activity.shape[1]),
        generator=generator,
        dtype=torch.float64,
    )
    shifts = min_shift + (uniform * choices).long().clamp(max=choices - 1)
    return _circular_null(metric, activity, args, kwargs, layout, shifts, max_elements)


class _SegmentLayout:
    """Where each sample sits in its segment. segment [samples] ids -> lengths [segments],
    ``source`` [segments, 2 max_len] sample read at each position of a segment repeated
    (padded to twice the longest segment), ``back`` [samples] flat position (segment,
    offset) of every sample, or None when that is the identity (contiguous, sorted,
    equal-length segments)."""

    def __init__(self, segment: torch.Tensor):
        _, ids = torch.unique(segment, return_inverse=True)
        order = torch.argsort(ids, stable=True)  # samples grouped by segment, in time order
        self.lengths = torch.bincount(ids)
        starts = torch.cumsum(self.lengths, 0) - self.lengths
        self.max_len = int(self.lengths.max())
        position = torch.arange(2 * self.max_len, device=segment.device)
        self.source = order[starts[:, None] + position % self.lengths[:, None]]
        offset = torch.empty_like(order)
        offset[order] = torch.arange(len(order), device=segment.device) - starts[ids[order]]
        back = ids * self.max_len + offset
        identity = torch.equal(back, torch.arange(len(back), device=segment.device))
        self.back = None if identity else back


def _circular_null(metric, activity, args, kwargs, layout, shifts, max_elements):
    """Null of ``metric`` over activity shifted circularly by ``shifts`` [n_shuffles,
    segments, units] within the segments of ``layout``."""
    samples, units = activity.shape
    observed = metric(activity, *args, **kwargs)
    n_segments, max_len = len(layout.lengths), layout.max_len
    # Every circular shift of a segment is a window of the segment repeated twice:
    # shifted[r] = segment[(r - k) mod L] = repeated[L - k + r]. Each unit's repeats are
    # contiguous, so every window is one contiguous read.
    repeated = rearrange(activity[layout.source], "s i u -> u s i").contiguous()
    windows = repeated.unfold(2, max_len, 1)  # [units, segments, max_len + 1, max_len], a view
    starts = (layout.lengths.cpu()[None, :, None] - shifts).to(activity.device)
    unit = torch.arange(units, device=activity.device)[:, None]
    segment = torch.arange(n_segments, device=activity.device)
    chunk = max(1, max_elements // (n_segments * max_len * units))
    null = []
    for block in starts.split(chunk):  # [chunk, segments, units]
        shifted = windows[unit, segment, rearrange(block, "c s u -> c u s")]  # [c, u, s, len]
        shifted = shifted.flatten(2)
        if layout.back is not None:
            shifted = shifted[..., layout.back]
        shifted = rearrange(shifted, "c u t -> t (c u)")
        null.append(metric(shifted, *args, **kwargs).reshape(len(block), units))
    return summarise_null(observed, torch.cat(null))


def group_permutation_null(
    metric: Callable[[torch.Tensor], torch.Tensor],
    labels: torch.Tensor,
    group: torch.Tensor,
    n_shuffles: int = 1000,
    generator: torch.Generator | None = None,
) -> ShuffleNull:
    """Significance of ``metric(labels) -> [units]`` against labels permuted among groups.

    labels [samples] (e.g. the route of each sample), group [samples] integer id of the lap
    or pass each sample belongs to; every group must carry a single label. Each shuffle
    deals the groups' labels out again in a random order (a permutation of the groups, so
    the number of laps per label is kept) and gives each sample its group's new label.
    Samples of one lap keep one label, so activity that drifts slowly or differs from lap
    to lap does not look label-selective, as it does when labels are permuted sample by
    sample (splitter cells; e.g. Wood et al. 2000 shuffle route labels across trials).
    ``metric`` closes over the activity and everything else, e.g.
    ``lambda route: splitter_index(activity, position, route, n_positions)``; it is called
    once per shuffle.
    """
    if labels.ndim != 1 or group.shape != labels.shape:
        raise ValueError(
            f"expected labels [samples] and group [samples], got {tuple(labels.shape)} and "
            f"{tuple(group.shape)}"
        )
    _, ids = torch.unique(group, return_inverse=True)
    n_groups = int(ids.max()) + 1
    group_label = labels.new_zeros(n_groups).scatter_(0, ids, labels)
    mixed = torch.nonzero(group_label[ids] != labels).flatten()
    if len(mixed):
        raise ValueError(
            f"labels vary within groups (e.g. at samples {mixed[:5].tolist()}); pass groups "
            f"within which the label is constant (e.g. one id per lap or stem pass)"
        )
    observed = metric(labels)
    order = torch.rand(n_shuffles, n_groups, generator=generator).argsort(1).to(labels.device)
    null = torch.stack([metric(group_label[permutation][ids]) for permutation in order])
    return summarise_null(observed, null)


def _check_activity(activity: torch.Tensor) -> None:
    if activity.ndim != 2:
        raise ValueError(f"activity must be [samples, units], got {tuple(activity.shape)}")


def sequence_shift_null(
    metric: Callable[[torch.Tensor], torch.Tensor],
    activity: torch.Tensor,
    mask: torch.Tensor,
    n_shuffles: int = 1000,
    generator: torch.Generator | None = None,
    max_elements: int = 2**24,
) -> ShuffleNull:
    """Significance of ``metric(activity[mask]) -> [units]`` against circular shifts by
    whole sequences.

    activity [sequences, pos, units] of independent sequences (each its own environment,
    start and trial timing), mask [sequences, pos] bool: the tokens scored. Each shuffle
    pairs every unit's activity with the behaviour of another sequence: token (s, t) gets
    the unit's activity at (s + k, t) (mod sequences), with one offset k in
    ``1 .. sequences - 1`` per unit and shuffle. This is the circular time-shift null of the
    concatenated recording restricted to whole-sequence offsets: it keeps each unit's
    temporal structure and its dependence on the step index, and cannot line periodic task
    structure (laps, trials) back up with itself, which shifts by arbitrary offsets do.
    """
    if activity.ndim != 3 or mask.shape != activity.shape[:2]:
        raise ValueError(
            f"expected activity [sequences, pos, units] and mask [sequences, pos], got "
            f"{tuple(activity.shape)} and {tuple(mask.shape)}"
        )
    n_seq, _, units = activity.shape
    if n_seq < 2:
        raise ValueError("a sequence shift needs at least 2 sequences")
    seq, pos = mask.nonzero(as_tuple=True)  # [n]
    observed = metric(activity[seq, pos])
    offsets = torch.randint(1, n_seq, (n_shuffles, units), generator=generator)
    offsets = offsets.to(activity.device)
    column = torch.arange(units, device=activity.device)
    chunk = max(1, max_elements // (len(seq) * units))
    null = []
    for block in offsets.split(chunk):  # [c, units]
        source = (seq[None, :, None] + block[:, None, :]) % n_seq  # [c, n, units]
        shifted = activity[source, pos[None, :, None], column]  # [c, n, units]
        null.append(metric(rearrange(shifted, "c n u -> n (c u)")).reshape(len(block), units))
    return summarise_null(observed, torch.cat(null))
