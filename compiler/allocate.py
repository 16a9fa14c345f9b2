"""SRAM allocation: every SRAM value of a machine-level module gets extents
(slice, first word, words).

A pure analysis (`plan_allocation` -> a frozen `Allocation`) and a small apply
step (`apply_allocation`, writing the `out` attributes). Liveness is in program
order: a value's words are free once the last instruction reading it (directly
or through views) is done; constants form the SRAM image, placed first and
never freed. The scheduler derives its write-after-read dependences from the
resulting `out` attributes, so any placement here is legal; placement only
shapes how fast the schedule can be:

  - a value is striped over `stripes` slices (default: one stripe per byte-plane,
    so an fp32 vector column reads in as many cycles as the VXM computes it);
  - a weight (a constant an `mxm.install` reads) of more tiles than stripes is cut
    at its tiles instead (per vector column, runs of `lanes` rows), a tile a slice:
    an install streams its tile out of a slice port at one word per cycle, as long
    as it takes the plane to load it, so tiles installed at once on different
    planes must lie in different slices (striped, all of a weight's tiles would
    share `stripes` slices, and only that many planes could load at once);
  - stripes go to slices in round-robin order, so instructions close in program
    order (which the scheduler may run in parallel) use different slice ports;
  - when no slice has room for a stripe it is cut over the largest free blocks,
    so placement fails only if the live words exceed the chip;
  - `layers`: the op indices of each repeated layer, position by position
    (compiler.templates). A value of a later layer takes the place of its
    counterpart two layers before: the same words when they are free (activations
    alternate between two sets of words), else the same slices (weights of layer k
    at layer k's addresses); the round-robin restarts at each layer for the rest. So
    equal layers hold equal slice ports, and one or two schedules (templates) fit
    them all.

State (`mem.state`) is pinned: placed before everything else (at the `out` it
carries when a partner program fixed it, else from word 0 of the next slices),
never freed nor reused; its write's result names the state's own words. What is
computed from states alone (the cache as the step found it, transposed) is live
from the start, in words no earlier value held, when every chip has the room: it
then waits for no earlier value's readers (as a layer's past K/V loaded from the
host always is).
"""

from __future__ import annotations

import math
from bisect import insort
from dataclasses import dataclass, field

from ..ir import machine_ops as mo
from ..ir import LpucError, Module
from ..ir.attributes import shared
from ..ir.layout import Extent, rows_cols, vector_cols, words
from ..ir.target import Target
from ..ir.registry import OPS, SRAM
from ..ir.schedule_facts import places, view_bases

from .passes import Pass


class DoesNotFit(LpucError):
    """A module needs more SRAM than a chip has."""


@dataclass(frozen=True)
class Allocation:
    """Extents of every SRAM value (on its op's chip), in program order, and the peak footprint."""

    extents: tuple[tuple[str, tuple[Extent, ...]], ...]
    peak_words: int   # the largest chip's
    image_words: int  # the constants (never freed), all chips
    word_bytes: int

    @property
    def peak_bytes(self) -> int:
        return self.peak_words * self.word_bytes

    @property
    def image_bytes(self) -> int:
        return self.image_words * self.word_bytes

    def as_dict(self) -> dict[str, tuple[Extent, ...]]:
        return dict(self.extents)


class _Free:
    """Free word ranges of every slice, next-fit, merged on release.

    Next-fit: a slice's next value goes at or after where its last one ended, wrapping to the slice's start
    only when nothing after has room. Words just freed are taken last, not first: a value placed in the
    words of one freed a moment before in program order would have to wait for that value's readers (a
    write-after-read dependence the scheduler must keep), tying together work that could overlap."""

    def __init__(self, slices: int, words_per_slice: int):
        self.blocks = [[(0, words_per_slice)] for _ in range(slices)]  # sorted (start, end)
        self.after = [0] * slices  # per slice, where the last value taken ended

    def next_fit(self, s: int, n: int) -> int | None:
        after, wrapped = self.after[s], None
        for start, end in self.blocks[s]:
            if end - max(start, after) >= n:
                return max(start, after)
            if wrapped is None and end - start >= n:
                wrapped = start
        return wrapped

    def first_fit_at(self, s: int, start: int, n: int) -> bool:
        """Words [start, start + n) of slice s are free."""
        return any(a <= start and start + n <= b for a, b in self.blocks[s])

    def take(self, s: int, start: int, n: int) -> None:
        blocks = self.blocks[s]
        for i, (a, b) in enumerate(blocks):
            if a <= start and start + n <= b:
                blocks[i:i + 1] = [x for x in ((a, start), (start + n, b)) if x[1] > x[0]]
                self.after[s] = start + n
                return
        raise AssertionError("taking words that are not free")

    def release(self, s: int, start: int, n: int) -> None:
        blocks = self.blocks[s]
        insort(blocks, (start, start + n))
        merged = []
        for a, b in blocks:
            if merged and merged[-1][1] == a:
                merged[-1] = (merged[-1][0], b)
            else:
                merged.append((a, b))
        blocks[:] = merged

    def largest(self) -> tuple[int, int, int] | None:
        """(slice, start, words) of the largest free block; ties: lowest slice, lowest address."""
        best = None
        for s, blocks in enumerate(self.blocks):
            for a, b in blocks:
                if best is None or b - a > best[2]:
                    best = (s, a, b - a)
        return best


@dataclass(frozen=True)
class Allocate(Pass):
    """The allocation as a pass; `stripes` = slices a value is spread over (None: its itemsize)."""

    name = "allocate"
    stripes: int | None = None
    layers: tuple[tuple[int, ...], ...] = field(default=(), repr=False)  # the driver's (compiler.templates)

    def plan(self, module: Module, target: Target, progress=None) -> Allocation:
        return plan_allocation(module, target, self.stripes, self.layers)

    def apply(self, module: Module, target: Target, plan: Allocation) -> Module:
        return apply_allocation(module, plan)


def _live_ranges(module: Module) -> tuple[dict[str, int], dict[str, int]]:
    """Definition index and last-reader index of every SRAM value (program order)."""
    where, bases = places(module), view_bases(module)
    first, last = {}, {}
    for i, op in enumerate(module.ops):
        if mo.unit_class(op.name) is not None:  # an instruction reads
            for v in op.operands:
                for b in bases.get(v.name, ()):
                    last[b] = i
        for r in op.results:
            if where[r.name] == SRAM:
                first[r.name] = i
                last.setdefault(r.name, i)
    return first, last


def plan_allocation(module: Module, target: Target, stripes: int | None = None,
                    layers: tuple[tuple[int, ...], ...] = ()) -> Allocation:
    machine, chips = target.machine, target.chips
    sram = machine.sram
    where = places(module)
    first, last = _live_ranges(module)
    types, chip = {}, {}
    for op in module.ops:
        for r in op.results:
            types[r.name], chip[r.name] = r.type, mo.chip_of(op)
    constants = [op.result.name for op in module.ops if mo.is_constant(op.name)]
    states = [op for op in module.ops if mo.is_state(op.name)]
    # an in-place write's result names its state's words: nothing of its own to place or free
    alias = {op.result.name: op.operands[0].name for op in module.ops if OPS[op.name].in_place}
    pinned = set(constants) | {op.result.name for op in states}
    size = {name: words(types[name], machine.lanes) for name in first}
    # Values live from the start, in words no earlier value held, so that they wait for nothing: a layer's load
    # from the host (its past K/V), which compiler.templates streams ahead of its layer; and, when the chips have
    # the room, what is computed from a state alone (the cache as the step found it, transposed for the scores):
    # in words freed by the layer before, it would wait for that layer's last reader of them, and stand in the
    # way of its own layer's start.
    block_of = {i: r for r, block in enumerate(layers) for i in block}
    loads = [op.result.name for i, op in enumerate(module.ops) if i in block_of and op.name == "host.input"]
    ends_at: dict[int, list[str]] = {}
    for name in first:
        if name not in pinned and name not in alias:
            ends_at.setdefault(last[name], []).append(name)
    capacity = sram.slices * sram.words_per_slice

    def peaks(ahead: list[str]) -> tuple[list[int], int]:
        """The peak per chip, from liveness alone (placement can always cut values into pieces, so it fails
        exactly when this exceeds a chip), and the image's words."""
        live = [0] * chips
        for c in constants:
            live[chip[c]] += size[c]
        image = sum(live)
        for name in [op.result.name for op in states] + ahead:
            live[chip[name]] += size[name]
        early = set(ahead)
        peak = list(live)
        for i, op in enumerate(module.ops):
            if not mo.is_pinned(op.name):
                for r in op.results:
                    if where[r.name] == SRAM and r.name not in alias and r.name not in early:
                        live[chip[r.name]] += size[r.name]
                        peak[chip[r.name]] = max(peak[chip[r.name]], live[chip[r.name]])
            for n in ends_at.get(i, ()):
                live[chip[n]] -= size[n]
        return peak, image

    ahead = loads + _state_derived(module, where)
    peak, image = peaks(ahead)
    if max(peak) > capacity and len(ahead) > len(loads):  # no room to keep them all: as any other value
        ahead = loads
        peak, image = peaks(ahead)
    ahead_set = set(ahead)
    worst = max(range(chips), key=lambda c: (peak[c], -c))
    if peak[worst] > capacity:
        needed, available = peak[worst] * sram.word_bytes, sram.chip_bytes
        if chips == 1:
            raise DoesNotFit(f"{module.name} does not fit the SRAM of one {machine.name} chip: it needs "
                            f"{needed} bytes ({needed / 2**20:.1f} MiB) at its peak, a chip has {available} bytes "
                            f"({available / 2**20:.1f} MiB); it would fit on {math.ceil(needed / available)} chips")
        raise DoesNotFit(f"{module.name} does not fit on {chips} {machine.name} chips: chip {worst} needs {needed} "
                        f"bytes ({needed / 2**20:.1f} MiB) at its peak, a chip has {available / 2**20:.1f} MiB; "
                        "give more chips (--chips) or another partition (--partition)")

    free = [_Free(sram.slices, sram.words_per_slice) for _ in range(chips)]
    cursor = [0] * chips
    placed: dict[str, tuple[Extent, ...]] = {}

    twin = _twins(module, layers)
    weights = _weights(module)
    weights |= {alias[n] for n in weights if n in alias}  # (a cache written in place: its state's words)

    def place(name: str) -> None:
        c, n = chip[name], size[name]
        if name in twin and _take_like(free[c], placed[twin[name]], n, name, placed):
            cursor[c] = placed[name][-1][0] + 1
            return
        stripe = stripes or types[name].dtype.itemsize
        tiles = _tile_words(types[name], machine.lanes) if name in weights else []
        if len(tiles) > stripe:  # a weight of more tiles than stripes: a tile a slice
            runs = [(k, k) for k in tiles]
        else:
            pieces = max(1, min(stripe, n), -(-n // sram.words_per_slice))
            runs = [(n, -(-n // pieces))] if n else []
        out = []
        for remaining, chunk in runs:  # (words, at most this many a slice)
            while remaining:
                out.append(_take_next(free[c], cursor, c, min(chunk, remaining), sram.slices))
                remaining -= out[-1][2]
        placed[name] = tuple(out)

    for op in states:  # fixed ones first, so the others go around them
        if "out" in op.attrs:
            _pin(free[chip[op.result.name]], op, size[op.result.name], sram)
            placed[op.result.name] = tuple(op.attrs["out"])
    for op in states:
        if "out" not in op.attrs:
            place(op.result.name)
    layer_of = {op.result.name: block_of.get(i) for i, op in enumerate(module.ops) if mo.is_constant(op.name)}
    for k, c in enumerate(constants):
        if k and layer_of[c] != layer_of[constants[k - 1]]:
            cursor[:] = [0] * chips
        place(c)
    for name in ahead:
        place(name)
    starts = {block[0] for block in layers if block}
    for i, op in enumerate(module.ops):
        if i in starts:
            cursor[:] = [0] * chips
        if not mo.is_pinned(op.name):
            for r in op.results:
                if r.name in ahead_set:
                    continue
                if r.name in alias:
                    placed[r.name] = placed[alias[r.name]]
                elif where[r.name] == SRAM:
                    place(r.name)
        for name in ends_at.get(i, ()):
            for s, start, n in placed[name]:
                free[chip[name]].release(s, start, n)
    order = [r.name for op in module.ops for r in op.results if r.name in placed]
    return Allocation(tuple((name, placed[name]) for name in order), peak[worst], image, sram.word_bytes)


def _state_derived(module: Module, where: dict[str, str]) -> list[str]:
    """SRAM results of the instructions that read states (and constants) alone, directly or through such
    results or views of them, in program order."""
    pinned = {op.result.name for op in module.ops if mo.is_pinned(op.name)}
    from_state = {op.result.name for op in module.ops if mo.is_state(op.name)}
    out = []
    for op in module.ops:
        if mo.is_pinned(op.name) or OPS[op.name].in_place or not op.operands:
            continue
        names = [v.name for v in op.operands]
        if all(n in pinned or n in from_state for n in names) and any(n in from_state for n in names):
            from_state.update(r.name for r in op.results)
            if not mo.is_view(op.name):
                out += [r.name for r in op.results if where[r.name] == SRAM]
    return out


def _take_next(free: _Free, cursor: list[int], c: int, want: int, slices: int) -> Extent:
    """Take `want` words in the first slice from chip c's round-robin cursor on that has room (moving the
    cursor past it); when none has, as much as the largest free block holds."""
    for step in range(slices):
        s = (cursor[c] + step) % slices
        start = free.next_fit(s, want)
        if start is not None:
            cursor[c] = s + 1
            break
    else:  # no slice has room: cut it over the largest free blocks
        s, start, avail = free.largest()
        want = min(want, avail)
    free.take(s, start, want)
    return s, start, want


def _weights(module: Module) -> set[str]:
    """The values an mxm.install reads (through views): the constant weights, and the KV cache (a state, or
    what is computed from it) that attention's matmuls install."""
    bases = view_bases(module)
    return {b for op in module.ops if op.name == "mxm.install" for v in op.operands for b in bases.get(v.name, ())}


def _tile_words(t, lanes: int) -> list[int]:
    """The words of each weight tile of `t` in layout order (ir.layout): per vector column, its rows
    (all leading indices) in runs of `lanes` rows."""
    rows, size = rows_cols(t)[0], t.dtype.itemsize
    per_tile = [min(lanes, rows - r) * size for r in range(0, rows, lanes)]
    return per_tile * vector_cols(t, lanes)


def _pin(free: _Free, op, n: int, sram) -> None:
    """Take the words a state's fixed `out` names (a partner program's layout)."""
    out = op.attrs["out"]
    if sum(e[2] for e in out) != n:
        raise LpucError(f"{op.label()}: its fixed out spans {sum(e[2] for e in out)} words, the state takes {n}")
    for s, w, k in out:
        if s >= sram.slices or w + k > sram.words_per_slice or not free.first_fit_at(s, w, k):
            raise LpucError(f"{op.label()}: its fixed out (slice {s} word {w}, {k} words) is outside SRAM or "
                            "taken by another state")
        free.take(s, w, k)


def _twins(module: Module, layers: tuple[tuple[int, ...], ...]) -> dict[str, str]:
    """Each result of a later layer's op -> the same result of its counterpart two layers before (whose
    words are free by then: layers alternate between two sets of words, like double buffers), or one
    layer before when that is the one of equal length (op by op of the same name). Not state: its place
    is its own (placed first, and shared with partner programs)."""
    twin = {}
    for r, block in enumerate(layers):
        like = next((layers[q] for q in (r - 2, r - 1) if q >= 0 and len(layers[q]) == len(block)), None)
        for i, j in zip(block, like or ()):
            a, b = module.ops[i], module.ops[j]
            if a.name == b.name and len(a.results) == len(b.results) and not mo.is_state(a.name):
                twin.update((x.name, y.name) for x, y in zip(a.results, b.results) if x.type == y.type)
    return twin


def _take_like(free: _Free, like: tuple[Extent, ...] | None, n: int, name: str, placed: dict) -> bool:
    """Place `name` (n words) like `like`: at the same words when they are free, else at the same slices;
    False when neither fits."""
    if like is None or sum(k for _, _, k in like) != n:
        return False
    if all(free.first_fit_at(s, start, k) for s, start, k in like):
        for s, start, k in like:
            free.take(s, start, k)
        placed[name] = like
        return True
    out = []
    for s, _, k in like:  # piece by piece, taking each before looking for the next (a slice may recur)
        start = free.next_fit(s, k)
        if start is None:
            for taken in out:
                free.release(*taken)
            return False
        free.take(s, start, k)
        out.append((s, start, k))
    placed[name] = tuple(out)
    return True


def apply_allocation(module: Module, allocation: Allocation) -> Module:
    """Write each instruction's and constant's `out`: its SRAM results' extents, in result order."""
    extents = allocation.as_dict()
    ops, seen = [], {}
    for op in module.ops:
        if any(r.name in extents for r in op.results):
            out = tuple(e for r in op.results for e in extents.get(r.name, ()))
            op = type(op)(op.name, op.operands, op.results, shared(op.attrs.updated({"out": out}), seen))
        ops.append(op)
    return module.replace(ops=tuple(ops))


__all__ = ["Allocate", "Allocation", "apply_allocation", "plan_allocation"]
