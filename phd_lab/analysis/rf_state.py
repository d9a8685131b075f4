"""The receptive-field state of a tensor, where its windows lie, and what is done with states: merge, window, bounds.

A state is what the analysis knows about one tensor of the traced graph: a ``Spatial`` dict (jump →
(r_min, r_max) over the paths from the input with that jump), ``GLOBAL`` (the tensor depends on the
whole input), an ``Unknown`` feature map (the graph does not say how it moves pixels) or None (no image
content: constants, shapes, parameters). Every other part of the analysis speaks this vocabulary.

Windows are taken as centred on their output position, as everywhere in the analysis. A strided slice that
starts off the first row or column (``x[..., 1::2, ::2]``, YOLOv5's Focus stem) moves them: a ``Spatial`` state's
``places`` say where the windows of each jump lie (``Place``), and a merge of maps whose windows lie at different
places joins them like the taps of one window: the union of their windows (``merge``).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, NamedTuple

from phd_lab.errors import PhdLabError

INF = math.inf


class ReceptiveFieldError(PhdLabError):
    """The model cannot be traced, or contains an operation the analysis cannot reason about."""


class _Global:
    """Marker state: the tensor depends on the whole input (after global pooling, Linear)."""

    def __repr__(self) -> str:
        return "GLOBAL"


GLOBAL = _Global()


class Unknown:
    """Marker state: a feature map whose receptive field the graph alone does not determine (a
    view/reshape to a feature map, adaptive pooling to several positions, a flatten that merges height or
    width with another axis); ``origin`` names the op."""

    def __init__(self, origin: str) -> None:
        self.origin = origin

    def __repr__(self) -> str:
        return f"UNKNOWN({self.origin})"


Interval = tuple[float, float]  # the first and last input pixel of a window, from its output position × jump


class Place(NamedTuple):
    """Where the windows of the paths of one jump lie: the (rows, columns) of the smallest and of the largest, as
    intervals of input pixels around the output position (times the jump). Windows are taken as centred, which
    they need not be (the padding decides, which the analysis does not read); ``frame`` names the tensor from which
    on that guess stays the same for all of them: a strided slice moves its windows by exactly its start, so slices
    of one tensor lie where they lie relative to each other, whatever the padding before."""

    small: tuple[Interval, Interval]
    large: tuple[Interval, Interval]
    frame: object


class Misaligned(ReceptiveFieldError):
    """Windows at different places (moved by strided slices that start at different rows or columns) that the
    state cannot join; ``why`` completes the message of the walk, which names the operation
    (``rf_operations.unsupported``)."""

    def __init__(self, why: str) -> None:
        super().__init__(f"Receptive field: cannot reason about these feature maps{why}.")
        self.why = why


class Spatial(dict):
    """A spatial state: jump -> (r_min, r_max) over the paths with that jump; ``places``: jump -> ``Place`` where
    those windows do not lie centred on their output position with the guess of the state's own ``frame`` (a new
    one for each window, padding and merge of several frames; absent: they do, ``place_of``). A plain dict is a
    state whose windows are all centred, in a frame of its own."""

    def __init__(self, items: Any = (), places: dict[int, Place] | None = None, frame: object = None) -> None:
        super().__init__(items)
        self.frame = object() if frame is None else frame
        self.places = {jump: place for jump, place in (places or {}).items()
                       if place != _centred(*self[jump], self.frame)}


def _centred(lo: float, hi: float, frame: object) -> Place:
    """Windows of r_min ``lo`` and r_max ``hi`` centred on their output position."""
    small, large = (-(lo - 1) / 2, (lo - 1) / 2), (-(hi - 1) / 2, (hi - 1) / 2)
    return Place((small, small), (large, large), frame)


def image() -> Spatial:
    """The state of the input image: one pixel per position, where it is."""
    return Spatial({1: (1, 1)})


def frame_of(state: dict) -> object:
    """The frame of a spatial state (``Place``); a plain dict is its own."""
    return getattr(state, "frame", id(state))


def place_of(state: dict, jump: int) -> Place:
    """Where the windows of ``state``'s paths with jump ``jump`` lie."""
    places = getattr(state, "places", {})
    return places[jump] if jump in places else _centred(*state[jump], frame_of(state))


def _size(interval: Interval) -> float:
    size = interval[1] - interval[0] + 1
    return int(size) if size == int(size) else size


def _spans(place: Place) -> tuple[float, float]:
    """(r_min, r_max) of windows at ``place`` (where rows and columns differ, the smaller and the larger of both:
    ``square`` tells)."""
    return min(map(_size, place.small)), max(map(_size, place.large))


def merge(states: Iterable[Any]) -> Any:
    """Min/max over the inputs of a pass-through op; global inputs broadcast over spatial ones; an
    unknown input makes the result unknown. Paths of one jump whose windows lie at different places (the
    slices ``x[..., ::2, ::2]`` and ``x[..., 1::2, ::2]``) are joined like the taps of one window: the union of
    their windows (``_join``)."""
    groups: dict[int, list[dict]] = {}
    spatial_states: list[dict] = []
    saw_global = False
    for state in states:
        if isinstance(state, Unknown):
            return state
        if state is GLOBAL:
            saw_global = True
        elif state is not None:
            spatial_states.append(state)
            for jump in state:
                groups.setdefault(jump, []).append(state)
    if not groups:
        return GLOBAL if saw_global else None
    if len(spatial_states) == 1:
        return spatial_states[0]
    frames = {frame_of(state) for state in spatial_states}
    frame = frames.pop() if len(frames) == 1 else object()
    spans, places = {}, {}
    for jump, group in groups.items():
        if any(jump in getattr(state, "places", {}) for state in group):
            places[jump] = _join([place_of(state, jump) for state in group], frame)
            spans[jump] = _spans(places[jump])
        else:  # all centred: min/max
            spans[jump] = (min(state[jump][0] for state in group), max(state[jump][1] for state in group))
    return Spatial(spans, places, frame)


def _centres(place: Place) -> tuple[float, ...]:
    return tuple((a + b) / 2 for a, b in (*place.small, *place.large))


def aligned(states: Iterable[Any]) -> bool:
    """Whether the windows of every jump of the spatial ``states`` lie at one place (centred on it, however
    wide): a merge of them takes min/max, not the union of their windows."""
    groups: dict[int, set[tuple[float, ...]]] = {}
    for state in states:
        if isinstance(state, dict):
            for jump in state:
                groups.setdefault(jump, set()).add(_centres(place_of(state, jump)))
    return all(len(centres) == 1 for centres in groups.values())


def _join(places: list[Place], merged: object) -> Place:
    """Windows of one jump from several inputs: where they lie alike, the smallest and the largest (min/max);
    otherwise the union of the smallest and of the largest windows, along rows and columns (the four slices of
    a Focus stem: 2 × 2 pixels, as a 2×2 window of stride 2). In their frame if they share one, else in the
    frame ``merged`` of the merge. Windows of different sizes from different frames are refused: where they lie
    relative to each other is a guess."""
    frames = {place.frame for place in places}
    frame = frames.pop() if len(frames) == 1 else merged
    if len({_centres(place) for place in places}) == 1:
        return Place(tuple(min((place.small[axis] for place in places), key=_size) for axis in (0, 1)),
                     tuple(max((place.large[axis] for place in places), key=_size) for axis in (0, 1)), frame)
    sizes = {tuple(_size(interval) for interval in (*place.small, *place.large)) for place in places}
    if len(sizes) > 1 and len({place.frame for place in places}) > 1:
        raise Misaligned(" (a merge of feature maps whose windows lie at different places, moved by strided slices "
                         "that start at different rows or columns, and differ in size: where the smaller ones lie "
                         "in the larger ones depends on the padding of the layers on the way, which the analysis "
                         "does not read, so the receptive field of their union is not known; merge slices of one "
                         "tensor, as YOLOv5's Focus stem does, or maps whose windows are alike)")
    joined = Place(*(tuple((min(getattr(place, which)[axis][0] for place in places),
                            max(getattr(place, which)[axis][1] for place in places)) for axis in (0, 1))
                     for which in ("small", "large")), frame)
    if any(_size(interval) != int(_size(interval)) for interval in (*joined.small, *joined.large)):
        raise Misaligned(" (a merge of feature maps whose windows lie at different places, moved by strided slices "
                         "that start at different rows or columns; the analysis takes a window of even size as "
                         "centred on its output position, so where it lies is known only to half a pixel, and the "
                         "receptive field of the union is not known)")
    return joined


def square(state: Any) -> str | None:
    """Why the receptive field of ``state`` is no one number (windows of another height than width, from a
    merge of strided slices that start at different rows and columns), or None."""
    for jump, place in getattr(state, "places", {}).items():
        for which, (rows, columns) in (("smallest", place.small), ("largest", place.large)):
            if _size(rows) != _size(columns):
                return (f"whose {which} windows (jump {jump}), joined from strided slices that start at different "
                        f"rows and columns, are {_size(rows)} pixels tall but {_size(columns)} wide; the analysis "
                        f"computes the receptive field as one number and needs equal sizes along height and width")
    return None


def window(state: Any, kernel: int, stride: int, dilation: int) -> Any:
    """Apply a sliding window (convolution or pooling): r += (k_eff-1)·j, j *= s. The windows grow alike on both
    sides (centred) in a new frame: the padding that decides where they lie is not read."""
    if not isinstance(state, dict):
        return state
    grow = dilation * (kernel - 1)
    spans = {jump * stride: (lo + grow * jump, hi + grow * jump) for jump, (lo, hi) in state.items()}
    places = getattr(state, "places", {})
    if not places:
        return Spatial(spans)
    frame = object()
    return Spatial(spans, {jump * stride: Place(*(tuple((a - grow * jump / 2, b + grow * jump / 2)
                                                        for a, b in getattr(place, which))
                                                  for which in ("small", "large")), frame)
                           for jump, place in places.items()}, frame)


def sliced(state: Any, step: int, start: tuple[int, int]) -> Any:
    """A strided slice ``x[..., a::s, b::s]``: a 1×1 window of stride s whose output position i reads position
    a + i·s (b + i·s) of the sliced map, so the windows of jump j move by a·j rows (b·j columns), in the frame of
    the sliced map."""
    if not isinstance(state, dict):
        return state
    moved = {}
    for jump in state:
        place = place_of(state, jump)
        moved[jump * step] = Place(*(tuple((a + first * jump, b + first * jump)
                                           for (a, b), first in zip(getattr(place, which), start))
                                     for which in ("small", "large")), place.frame)
    return Spatial({jump * step: span for jump, span in state.items()}, moved, frame_of(state))


def padded(state: Any) -> Any:
    """The same windows in a new frame: padding moves the pixels of the whole map alike."""
    if not isinstance(state, dict):
        return state
    places = getattr(state, "places", {})
    frame = object()
    return Spatial(state, {jump: place._replace(frame=frame) for jump, place in places.items()}, frame)


def transposed(state: Any) -> Any:
    """The windows of a map whose height and width swap names (a transpose of its last two axes)."""
    places = getattr(state, "places", {})
    if not places:
        return state
    return Spatial(state, {jump: Place(place.small[::-1], place.large[::-1], place.frame)
                           for jump, place in places.items()}, frame_of(state))


def bounds(state: Any) -> tuple[float, float, float]:
    """(r_min, r_max, jump) of a state; ``inf`` for global tensors, jump = the largest one."""
    if not isinstance(state, dict):
        return INF, INF, INF
    return (min(lo for lo, _ in state.values()), max(hi for _, hi in state.values()), max(state))
