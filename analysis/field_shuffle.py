"""Field shuffle: the null for gridness that keeps a rate map's fields but not their layout.

Time-shift and spike-shift nulls destroy fields, so any map with a few compact fields beats
them and looks like a grid cell; the field shuffle (Barry & Burgess 2017, "To be a grid
cell: shuffling procedures for determining gridness") keeps every field and moves it, so
only the *arrangement* of the fields is tested. Vectorised over units and shuffles.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import rearrange, repeat

from analysis.fields import place_fields
from analysis.stats import ShuffleNull, summarise_null

# A bin and its 4 neighbours, as (row, column) steps.
_STEPS = torch.tensor([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]])
# How a field's position is searched: (uniform draws, or None for every corner; whether it
# must keep off the bins next to other fields). Later stages only see pairs that found none.
_STAGES = ((4, True), (64, True), (None, True), (64, False), (None, False))
# How often a shuffle whose field placement jammed starts over before giving up.
_RESTARTS = 100
# Candidate bins looked at per block of pairs (bounds the memory of a placement step).
_CHUNK_ELEMENTS = 2**21


def shuffle_fields(
    maps: torch.Tensor,
    n_shuffles: int,
    threshold: float = 0.2,
    signed: str = "rectify",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Field-shuffled copies of every rate map: maps [units, n_x, n_y] (NaN: unvisited) ->
    [n_shuffles, units, n_x, n_y]. Each copy is made independently as follows.

    1. Fields: the 4-connected groups of visited bins with rate >= ``threshold`` x the
       map's peak, of any size (:func:`analysis.fields.place_fields` with ``min_bins=1``
       and the same ``signed`` handling). Every other visited bin is background.
    2. Fields are placed one at a time, largest first. A field is translated rigidly (its
       bins keep their values and relative positions) to a position drawn uniformly among
       those where it lies inside the map, on visited bins, and neither on nor next to
       (4-neighbours) a field placed before, so fields stay apart as they were; where no
       such position is left, among those where it touches but does not overlap them.
       (Drawn by rejection from uniform positions, then from all positions. When no
       position is left at all, the copy starts over from its first field; a copy that
       jams 100 times in a row is all NaN: the map's fields cannot be rearranged.)
    3. The background values are dealt to the remaining visited bins in uniformly random
       order. Unvisited bins stay NaN where they are.

    Each copy holds exactly the original values and, unless the map is too crowded to keep
    them apart, the same fields (re-detected with the same threshold) in new places. Barry
    & Burgess instead cut the whole map into watershed basins and re-place each basin's
    bins around a randomly placed peak, nearest first, so crowded fields bend; here fields
    are moved whole and the sub-threshold bins are shuffled. Maps whose fields sit anywhere
    (away from walls, tails cut) are called grid cells at the nominal rate; fields cut by a
    wall (moved inside whole) and smooth sub-threshold tails (dealt out as background) make
    the null somewhat lenient (about 12% at p < 0.05 on random smooth Gaussian fields,
    against 30% when all bins are scattered; tests/test_analysis_field_shuffle.py).
    """
    if maps.ndim != 3:
        raise ValueError(f"maps must be [units, bins_x, bins_y], got {tuple(maps.shape)}")
    return _FieldLayout(maps, threshold, signed).shuffle(n_shuffles, generator)


def field_shuffle_null(
    metric: Callable[..., torch.Tensor],
    maps: torch.Tensor,
    *args,
    n_shuffles: int = 1000,
    threshold: float = 0.2,
    signed: str = "rectify",
    generator: torch.Generator | None = None,
    max_elements: int = 2**22,
    **kwargs,
) -> ShuffleNull:
    """Significance of ``metric(maps, *args, **kwargs) -> [units]`` (e.g.
    :func:`analysis.gridness.grid_scores`) against field-shuffled maps (:func:`shuffle_fields`,
    whose arguments these are). Shuffles are batched as extra maps: ``metric`` is called on
    [chunk * units, n_x, n_y] blocks of at most ``max_elements`` bins. A unit whose fields
    cannot be rearranged (a copy jammed, or its metric is NaN on a copy) has no null:
    p-value NaN, never significant."""
    if maps.ndim != 3:
        raise ValueError(f"maps must be [units, bins_x, bins_y], got {tuple(maps.shape)}")
    layout = _FieldLayout(maps, threshold, signed)
    observed = metric(maps, *args, **kwargs)
    chunk = max(1, max_elements // maps.numel())
    null = []
    for start in range(0, n_shuffles, chunk):
        shuffled = layout.shuffle(min(chunk, n_shuffles - start), generator)
        scores = metric(rearrange(shuffled, "s u x y -> (s u) x y"), *args, **kwargs)
        null.append(rearrange(scores, "(s u) -> s u", u=maps.shape[0]))
    null = torch.cat(null)
    result = summarise_null(observed, null)
    untestable = torch.isnan(null).any(0)
    result.p_values[untestable] = torch.nan
    result.significant[untestable] = False
    return result


class _FieldLayout:
    """The fields of every map, as bin lists: ``bins`` [units, fields, max_size] flat bin
    of each member (``member`` marks the real ones), ``rel`` [units, fields, max_size, 2]
    its offset from the field's bounding-box corner, ``extent`` [units, fields, 2] the box
    size, and the background: ``background`` [units, max_background] flat bins (``count``
    [units] real ones)."""

    def __init__(self, maps: torch.Tensor, threshold: float, signed: str):
        self.maps = maps
        units, self.n_x, self.n_y = maps.shape
        n_bins = self.n_x * self.n_y
        labels = place_fields(maps, threshold, min_bins=1, signed=signed).labels.flatten(1)
        visited = ~torch.isnan(maps).flatten(1)
        # Visited background gets label 0, unvisited bins a label after every field.
        n_fields = int(labels.max())
        key = torch.where(visited, labels, n_fields + 1)
        order = torch.argsort(key, dim=1, stable=True)  # bins grouped by label
        sizes = torch.zeros(units, n_fields + 2, dtype=torch.long, device=maps.device)
        sizes.scatter_add_(1, key, torch.ones_like(key))
        starts = torch.cumsum(sizes, 1) - sizes  # [units, labels]

        def members(first: torch.Tensor, size: torch.Tensor):
            """Flat bins [units, ..., max(size)] of the groups starting at ``first``."""
            width = max(int(size.max()) if size.numel() else 0, 1)
            offset = torch.arange(width, device=maps.device)
            index = (first[..., None] + offset).clamp(max=n_bins - 1)
            bins = order.gather(1, index.flatten(1)).view(index.shape)
            return bins, offset < size[..., None]

        self.background, _ = members(starts[:, 0], sizes[:, 0])
        self.count = sizes[:, 0]
        self.bins, self.member = members(starts[:, 1 : n_fields + 1], sizes[:, 1 : n_fields + 1])
        coords = torch.stack([self.bins // self.n_y, self.bins % self.n_y], -1)  # [u, f, s, 2]
        big = torch.iinfo(torch.long).max
        low = torch.where(self.member[..., None], coords, big).amin(2)  # [units, fields, 2]
        high = torch.where(self.member[..., None], coords, -1).amax(2)
        self.rel = coords - low[:, :, None]
        self.extent = (high - low + 1).clamp(min=1)
        self.has_field = self.member.any(2)  # [units, fields]
        self.width = self.member.sum(2).amax(0).tolist() if n_fields else []  # [fields]

    def shuffle(self, n_shuffles: int, generator) -> torch.Tensor:
        """[n_shuffles, units, n_x, n_y] field-shuffled maps (see :func:`shuffle_fields`)."""
        maps, device = self.maps, self.maps.device
        units, n_bins = maps.shape[0], self.n_x * self.n_y
        unit = repeat(torch.arange(units, device=device), "u -> (s u)", s=n_shuffles)
        values = maps.flatten(1)[unit]  # [pairs, bins]
        # One spare column in each: padding slots of a field read and write there.
        spare = torch.zeros(len(unit), 1, dtype=torch.bool, device=device)
        unvisited = torch.cat([torch.isnan(values), spare], 1)
        taken = torch.cat([torch.zeros_like(values, dtype=torch.bool), spare], 1)
        blocked = unvisited.clone()  # unvisited, in a field or next to one
        out = torch.full((len(unit), n_bins + 1), torch.nan, dtype=maps.dtype, device=device)
        shape = torch.tensor([self.n_x, self.n_y], device=device)

        def place(field: int, pending: torch.Tensor, candidates: int | None, apart: bool):
            """Put field ``field`` of the ``pending`` pairs at a corner drawn uniformly among
            those where it fits, out of ``candidates`` uniform draws (None: every corner);
            ``apart``: not next to other fields either. Returns the pairs where none fit."""
            room = shape - self.extent[unit[pending], field] + 1  # [p, 2] corners in the map
            if candidates is None:
                high = room.amax(0).tolist()
                corner = torch.cartesian_prod(*(torch.arange(h, device=device) for h in high))
                corner = corner.view(1, -1, 2).expand(len(pending), -1, -1)
                in_map = (corner < room[:, None]).all(-1)  # [p, c]
            else:
                draw = torch.rand(len(pending), candidates, 2, generator=generator)
                corner = (draw.to(device) * room[:, None]).long()
                in_map = torch.ones(corner.shape[:2], dtype=torch.bool, device=device)
            width = self.width[field]  # the largest size of this field over units
            member = self.member[unit[pending], field, :width][:, None]  # [p, 1, size]
            rel = self.rel[unit[pending], field, :width]
            cell = corner[:, :, None] + rel[:, None]  # [p, c, size, 2]
            target = torch.where(member & in_map[..., None], self._flat(cell), n_bins)
            mask = blocked if apart else taken | unvisited
            clash = mask[pending].gather(1, target.flatten(1)).view(target.shape).any(2)
            fits = in_map & ~clash
            keys = torch.rand(fits.shape, generator=generator).to(device)
            choice = torch.where(fits, keys, -1.0).argmax(1)
            found = fits.any(1)
            pick = torch.arange(len(pending), device=device)[found], choice[found]
            placed, cell, target = pending[found], cell[pick], target[pick]  # [placed, size(, 2)]
            # The field's bins and their 4 neighbours are blocked for later fields.
            around = cell[:, :, None] + _STEPS.to(device)  # [placed, size, 5, 2]
            inside = ((around >= 0) & (around < shape)).all(-1) & member[found, 0, :, None]
            around = torch.where(inside, self._flat(around), n_bins).flatten(1)
            blocked[placed] = blocked[placed].scatter(1, around, True)
            taken[placed] = taken[placed].scatter(1, target, True)
            source = values[placed].gather(1, self.bins[unit[placed], field, :width])
            out[placed] = out[placed].scatter(1, target, source)
            blocked[:, n_bins], taken[:, n_bins] = False, False
            return pending[~found]

        # Placing fields one by one can jam (no room left for the next field): such pairs
        # start over with all their fields.
        active = torch.arange(len(unit), device=device)
        for _ in range(_RESTARTS):
            jammed = torch.zeros(len(unit), dtype=torch.bool, device=device)
            for field in range(self.bins.shape[1]):
                pending = active[self.has_field[unit[active], field] & ~jammed[active]]
                for candidates, apart in _STAGES:
                    if len(pending):
                        looks = (candidates or n_bins) * self.width[field]
                        block = max(1, _CHUNK_ELEMENTS // looks)
                        parts = pending.split(block)
                        pending = torch.cat([place(field, p, candidates, apart) for p in parts])
                jammed[pending] = True
            if not jammed.any():
                break
            active = torch.nonzero(jammed).flatten()
            blocked[active], taken[active], out[active] = unvisited[active], False, torch.nan
        # Background: the free visited bins, in random order, take the background values.
        keys = torch.rand(len(unit), n_bins, generator=generator).to(device)
        free = ~(unvisited | taken)[:, :n_bins]
        free_first = torch.argsort(torch.where(free, keys, 2.0), dim=1)
        width = self.background.shape[1]
        real = torch.arange(width, device=device) < self.count[unit, None]
        target = torch.where(real, free_first[:, :width], n_bins)
        out.scatter_(1, target, values.gather(1, self.background[unit]))
        out[jammed] = torch.nan  # jammed _RESTARTS times: these fields cannot be rearranged
        return out[:, :n_bins].view(n_shuffles, units, self.n_x, self.n_y)

    def _flat(self, cell: torch.Tensor) -> torch.Tensor:
        """Flat bin index of [..., 2] (row, column) cells."""
        return cell[..., 0] * self.n_y + cell[..., 1]
