"""Partitioning: which chip each graph op runs on, and which ops spread their
weights over several chips. A pure analysis (`plan_partition` -> a frozen
`Partition`); `compiler.lower` applies it, making every value that crosses
chips an explicit transfer (c2c.send / c2c.recv over a fixed route).

Strategies:
  single    everything on chip 0.
  pipeline  contiguous ranges of the program (hence of layers) per chip,
            balanced by weight bytes: chip k holds the ops whose weights fall in
            the k-th N-quantile of the model's weights. An op whose weight
            straddles quantiles (or exceeds a chip) is split over the chips it
            spans (see below).
  tensor    activations stay on chip 0; every matmul with a constant weight of
            two or more 320-wide tiles is split over the chips (up to one tile
            per chip): by output columns (each chip computes a column range;
            the parts come back and are joined) or, for a single column tile,
            by the reduction (each chip a row range of the weight; the partial
            sums come back and are added). Attention matmuls (a batch of heads
            on both sides) split by heads: each chip multiplies its heads.

A split op's weight is cut at compile time, so each chip's SRAM holds only its
part. Gathers from a constant table (embeddings) split by columns the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..ir import LpucError, Module, Op
from ..ir.layout import LANES, words
from ..ir.machine import Machine

STRATEGIES = ("auto", "pipeline", "tensor")


@dataclass(frozen=True)
class Partition:
    strategy: str
    chips: int
    home: tuple[int, ...]                     # per graph op: the chip it runs on (a split op: where results meet)
    # (graph op index, ((chip, share), ...)): the chips a split op's weight is spread over, each taking
    # tiles in proportion to its share
    split: tuple[tuple[int, tuple[tuple[int, int], ...]], ...] = ()

    def split_chips(self, index: int) -> tuple[tuple[int, int], ...]:
        return dict(self.split).get(index, ())

    def describe(self, module: Module) -> list[str]:
        """One line per chip: the ops (and layers, when names tell) it runs, and its weight bytes."""
        chip_bytes = _chip_loads(self.home, self.split, _weight_bytes(module), self.chips)
        per_chip: dict[int, list[int]] = {}
        for i, (op, home) in enumerate(zip(module.ops, self.home)):
            if op.name != "graph.constant":
                per_chip.setdefault(home, []).append(i)
        lines = []
        for c in range(self.chips):
            ops = per_chip.get(c, [])
            spans = f"ops {ops[0]}-{ops[-1]} ({len(ops)})" if ops else "no ops of its own"
            parts = sum(1 for i, g in self.split if c in dict(g) and self.home[i] != c)
            extra = f", parts of {parts} split ops" if parts else ""
            lines.append(f"chip {c}: {spans}{extra}, weights {chip_bytes[c] / 2**20:.1f} MiB")
        return lines


def _chip_loads(home, split, weights: list[int], chips: int) -> list[int]:
    """Weight bytes per chip: each op's on its home chip, a split op's shared out by the chips' shares."""
    groups = dict(split)
    load = [0] * chips
    for i, w in enumerate(weights):
        group = groups.get(i, ((home[i], 1),))
        total = sum(share for _, share in group)
        for c, share in group:
            load[c] += w * share // total
    return load


def _constant_operands(module: Module) -> dict[int, list[int]]:
    """Per graph op: the indices of the graph.constant ops it reads."""
    producer = {r.name: i for i, op in enumerate(module.ops) for r in op.results}
    out = {}
    for i, op in enumerate(module.ops):
        out[i] = [producer[v.name] for v in op.operands
                  if v.name in producer and module.ops[producer[v.name]].name == "graph.constant"]
    return out


def _weight_bytes(module: Module) -> list[int]:
    """Per graph op: bytes (SRAM words x 320) of the constants it reads; a constant read by several ops counts once,
    at its first reader."""
    counted, out = set(), []
    consts = _constant_operands(module)
    for i, op in enumerate(module.ops):
        total = 0
        for c in consts[i]:
            if c not in counted:
                counted.add(c)
                total += words(module.ops[c].result.type) * LANES
        out.append(total)
    return out


def splittable(op: Op, module: Module, const_index: dict[str, int]) -> bool:
    """Can lowering spread this op over chips? A matmul with a constant 2-D-able weight of >= 2 tiles, a matmul
    of two activations batched over heads, or a gather (axis 0) from a constant table wider than one vector."""
    if op.name == "graph.matmul" and op.operands[1].name not in const_index:
        # attention: a batch of heads, activations on both sides, equal batches
        a, b = op.operands[0].type, op.operands[1].type
        return a.rank >= 3 and a.shape[:-2] == b.shape[:-2] and any(d > 1 for d in a.shape[:-2])
    if op.name == "graph.matmul" and len(op.operands) == 2 and op.operands[1].name in const_index:
        b = op.operands[1].type
        if b.rank < 2 or math.prod(b.shape[:-2]) != 1 or op.operands[0].type.rank < 2:
            return False
        return b.shape[-1] > LANES or b.shape[-2] > LANES
    if op.name == "graph.gather" and op.operands[0].name in const_index:
        t = op.operands[0].type
        return op.attrs.get("axis", 0) % max(t.rank, 1) == 0 and t.rank == 2 and t.shape[-1] > LANES
    return False


def _tiles(op: Op) -> int:
    """How many pieces a split op cuts into (lowering cuts the same way): column tiles of a wide weight or
    table, else row tiles; heads of an attention matmul."""
    if op.name == "graph.gather":
        return -(-op.operands[0].type.shape[-1] // LANES)
    a, b = op.operands[0].type, op.operands[1].type
    if a.shape[:-2] == b.shape[:-2] and b.rank >= 3 and math.prod(b.shape[:-2]) > 1:
        return next(d for d in a.shape[:-2] if d > 1)
    k, n = b.shape[-2:]
    return -(-n // LANES) if n > LANES else -(-k // LANES)


def plan_partition(module: Module, machine: Machine, chips: int, strategy: str) -> Partition:
    """The partition of `module` over `chips` chips by `strategy` (pipeline or tensor; auto is the driver's)."""
    n = len(module.ops)
    if chips == 1:
        return Partition("single", 1, (0,) * n)
    const_index = {op.result.name: i for i, op in enumerate(module.ops) if op.name == "graph.constant"}
    if strategy == "tensor":
        # Each split op goes to as many chips as it has tiles, the least loaded first, so that weights
        # spread evenly rather than piling onto the same chips op after op.
        weights, load, split = _weight_bytes(module), [0] * chips, []
        for i, op in enumerate(module.ops):
            if splittable(op, module, const_index):
                group = sorted(sorted(range(chips), key=lambda c: (load[c], c))[:_tiles(op)])
                for c in group:
                    load[c] += weights[i] // len(group) + 1
                split.append((i, tuple((c, 1) for c in group)))
        return Partition("tensor", chips, _constants_follow(module, (0,) * n), tuple(split))
    if strategy != "pipeline":
        raise LpucError(f"unknown partition strategy {strategy!r} (choose from {', '.join(STRATEGIES)})")
    weights = _weight_bytes(module)
    # Ops without weights still cost time and activations: give each a small share so that
    # weightless stretches spread too.
    floor = max(1, sum(weights) // max(1, 50 * n))
    share = [w + floor if op.name != "graph.constant" else 0 for op, w in zip(module.ops, weights)]
    total = sum(share)
    home, split, before = [0] * n, [], 0
    for i, op in enumerate(module.ops):
        first = min(chips - 1, before * chips // total)
        last = min(chips - 1, max(first, (before + share[i] - 1) * chips // total))
        home[i] = first
        if last > first and splittable(op, module, const_index):
            # each chip's share: how much of this op's weight range falls in the chip's quantile
            shares = tuple((c, min(before + share[i], -(-(c + 1) * total // chips)) - max(before, c * total // chips))
                           for c in range(first, last + 1))
            split.append((i, tuple((c, w) for c, w in shares if w > 0)))
        before += share[i]
    room = machine.sram.chip_bytes * 85 // 100
    _move_cuts(module, home, weights, {i for i, _ in split}, _chip_loads(home, split, weights, chips), room)
    return Partition("pipeline", chips, _constants_follow(module, tuple(home)), tuple(split))


def _move_cuts(module: Module, home: list[int], weights: list[int], split: set[int], load: list[int],
               room: int) -> None:
    """Move each cut between two pipeline stages to the nearby op boundary (within half a stage)
    that the fewest activation bytes cross, so stages hand over small values: a cut inside a mixture of
    experts would otherwise send gathered expert weights over a link. A cut never moves across a split
    op, nor so far that a stage's weights exceed `room` bytes."""
    chips = len(load)
    order = [i for i, op in enumerate(module.ops) if op.name != "graph.constant"]
    crossing = [0] * (len(order) + 1)  # crossing[p]: bytes of values made before order[p] and read from it on
    last_use: dict[str, int] = {}
    for p, i in enumerate(order):
        for v in module.ops[i].operands:
            last_use[v.name] = p
    for p, i in enumerate(order):
        for r in module.ops[i].results:
            if last_use.get(r.name, p) > p:
                crossing[p + 1] += words(r.type)
                crossing[last_use[r.name] + 1] -= words(r.type)
    for p in range(1, len(crossing)):
        crossing[p] += crossing[p - 1]
    cuts = [p for p in range(1, len(order)) if home[order[p]] == home[order[p - 1]] + 1]
    window = max(1, len(order) // (2 * chips))
    for k, p in enumerate(cuts):
        lo = max(cuts[k - 1] + 1 if k else 1, p - window)
        hi = min(cuts[k + 1] - 1 if k + 1 < len(cuts) else len(order) - 1, p + window)
        stage = home[order[p]]
        while lo < p and (any(order[q] in split for q in range(lo, p))
                          or load[stage] + sum(weights[order[q]] for q in range(lo, p)) > room):
            lo += 1
        while hi > p and (any(order[q] in split for q in range(p, hi))
                          or load[stage - 1] + sum(weights[order[q]] for q in range(p, hi)) > room):
            hi -= 1
        best = min(range(lo, hi + 1), key=lambda q: (crossing[q], abs(q - p), q))
        moved = sum(weights[order[q]] for q in range(min(best, p), max(best, p)))
        load[stage if best < p else stage - 1] += moved
        load[stage - 1 if best < p else stage] -= moved
        for q in range(min(best, p), max(best, p)):
            home[order[q]] = stage if best < p else stage - 1
        cuts[k] = best


def _constants_follow(module: Module, home: tuple[int, ...]) -> tuple[int, ...]:
    """A constant lives on the chip of its first reader (lowering copies it to any other reader's chip)."""
    out = list(home)
    first_reader: dict[str, int] = {}
    for i, op in enumerate(module.ops):
        for v in op.operands:
            first_reader.setdefault(v.name, i)
    for i, op in enumerate(module.ops):
        if op.name == "graph.constant":
            out[i] = home[first_reader[op.result.name]] if op.result.name in first_reader else 0
    return tuple(out)


__all__ = ["Partition", "STRATEGIES", "plan_partition", "splittable"]
