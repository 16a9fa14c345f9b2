"""Partitioning: which chip each graph op runs on, and which ops spread their
weights over several chips. The pass writes its decisions onto the graph IR
(docs/partition.md): the module attribute `chips`, and on each op `chip` (where
it runs; absent: chip 0) and, on a split op, `split` (which of its lowering
rule's tilings), `parts` (the chip of each part) and `shares` (how its tiles
are shared out; absent: equally). So a partition prints, parses, and can be
written by hand. `compiler.lower` reads it, making every value that crosses
chips an explicit transfer (c2c.send / c2c.recv over a fixed route).

Strategies:
  single    everything on chip 0 (one chip: the module is left as it is).
  pipeline  contiguous ranges of the program (hence of layers) per chip,
            balanced by weight bytes: chip k holds the ops whose weights fall in
            the k-th N-quantile of the model's weights. An op whose weight
            straddles quantiles (or exceeds a chip) is split over the chips it
            spans, each taking tiles in proportion to its part of the weight.
  tensor    activations stay on chip 0; every op that can split is spread over
            the chips (up to one tile per chip), the least loaded first: a
            matmul with a constant weight of two or more vector-wide tiles by
            output columns (the parts come back and are joined) or, with a
            single column tile, by rows of the weight (the partial sums are
            added); an attention matmul (a batch of heads on both sides) by
            heads; a gather from a constant table (embeddings) by columns.

Which ops can split, how, and into how many tiles is what their lowering rules
declare (`compiler.lower.tilings`); a split op's weight is cut at compile time,
so each chip's SRAM holds only its part.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir import AttrDict, LpucError, Module, Op
from ..ir.layout import words
from ..ir.registry import OPS
from ..ir.target import Target

from .lower import tilings
from .passes import Pass

STRATEGIES = ("auto", "pipeline", "tensor")

# graph op index -> ((chip, share), ...): the chips a split op's tiles are shared out over, in tile order
Groups = dict[int, tuple[tuple[int, int], ...]]


@dataclass(frozen=True)
class Partition(Pass):
    """The partition as a pass: over `chips` chips by `strategy` (pipeline or tensor). What it decides is
    written on the graph IR, so its plan is the partitioned module (the compile summary describes it)."""

    name = "partition"
    chips: int = 1
    strategy: str = "pipeline"

    def plan(self, module: Module, target: Target, progress=None) -> Module:
        return partition(module, Target(target.machine, self.chips), self.strategy)

    def apply(self, module: Module, target: Target, plan: Module) -> Module:
        return plan


def partition(module: Module, target: Target, strategy: str) -> Module:
    """`module` with its partition over the target's chips by `strategy` (pipeline or tensor; auto is the
    driver's) written on it; on one chip, `module` itself."""
    chips, lanes = target.chips, target.lanes
    if "chips" in module.attrs:
        raise LpucError(f"{module.name} is partitioned already (module attribute chips = {module.attrs['chips']})")
    if chips == 1:
        return module
    constants = {op.result.name for op in module.ops if op.name == "graph.constant"}
    if strategy == "tensor":
        home, kinds, groups = _tensor(module, constants, chips, lanes)
    elif strategy == "pipeline":
        home, kinds, groups = _pipeline(module, target, constants)
    else:
        raise LpucError(f"unknown partition strategy {strategy!r} (choose from {', '.join(STRATEGIES)})")
    ops = []
    for i, op in enumerate(module.ops):
        # (constants are copied to each reader's chip; a state lives on its writer's)
        placement = {"chip": home[i]} if home[i] and op.name != "graph.constant" and not OPS[op.name].persistent \
            else {}
        if i in groups:
            shares = tuple(share for _, share in groups[i])
            placement.update(split=kinds[i], parts=tuple(c for c, _ in groups[i]),
                             **({"shares": shares} if len(set(shares)) > 1 else {}))  # equal: left out
        ops.append(Op(op.name, op.operands, op.results, AttrDict({**op.attrs, **placement})) if placement else op)
    return module.replace(ops=tuple(ops), attrs=AttrDict({**module.attrs, "chips": chips}))


def describe(module: Module, lanes: int) -> list[str]:
    """One line per chip of the partition written on `module`: the graph ops it runs (by index), how many
    split ops it holds parts of, and its weight bytes (in words of `lanes` bytes)."""
    home, groups = _placement(module)
    chips = module.attrs.get("chips", 1)
    chip_bytes = _chip_loads(home, groups, _weight_bytes(module, lanes), chips)
    per_chip: dict[int, list[int]] = {}
    for i, op in enumerate(module.ops):
        if op.name != "graph.constant":
            per_chip.setdefault(home[i], []).append(i)
    lines = []
    for c in range(chips):
        ops = per_chip.get(c, [])
        spans = f"ops {ops[0]}-{ops[-1]} ({len(ops)})" if ops else "no ops of its own"
        parts = sum(1 for i, g in groups.items() if c in dict(g) and home[i] != c)
        extra = f", parts of {parts} split ops" if parts else ""
        lines.append(f"chip {c}: {spans}{extra}, weights {chip_bytes[c] / 2**20:.1f} MiB")
    return lines


def _placement(module: Module) -> tuple[list[int], Groups]:
    """The partition written on `module`: each op's chip, and each split op's (chip, share)s."""
    home, groups = [], {}
    for i, op in enumerate(module.ops):
        home.append(op.attrs.get("chip", 0))
        if "parts" in op.attrs:
            parts = op.attrs["parts"]
            groups[i] = tuple(zip(parts, op.attrs.get("shares", (1,) * len(parts))))
    return home, groups


def _chip_loads(home, groups: Groups, weights: list[int], chips: int) -> list[int]:
    """Weight bytes per chip: each op's on its home chip, a split op's shared out by the chips' shares."""
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


def _weight_bytes(module: Module, lanes: int) -> list[int]:
    """Per graph op: bytes (SRAM words x lanes) of the constants it reads (a constant read by several ops counts
    once, at its first reader) and of the state it writes (pinned on its chip, as weights are)."""
    counted, out = set(), []
    consts = _constant_operands(module)
    for i, op in enumerate(module.ops):
        total = words(op.operands[0].type, lanes) * lanes if OPS[op.name].in_place else 0
        for c in consts[i]:
            if c not in counted:
                counted.add(c)
                total += words(module.ops[c].result.type, lanes) * lanes
        out.append(total)
    return out


def _tensor(module: Module, constants: set[str], chips: int, lanes: int
            ) -> tuple[list[int], dict[int, str], Groups]:
    """Everything on chip 0 but the split ops: each goes to as many chips as it has tiles, the least loaded
    first, so that weights spread evenly rather than piling onto the same chips op after op."""
    weights, load, kinds, groups = _weight_bytes(module, lanes), [0] * chips, {}, {}
    for i, op in enumerate(module.ops):
        offered = tilings(op, constants, lanes)
        if offered:
            kinds[i], tiles = next(iter(offered.items()))  # the rule's preferred tiling
            group = sorted(sorted(range(chips), key=lambda c: (load[c], c))[:tiles])
            for c in group:
                load[c] += weights[i] // len(group) + 1
            groups[i] = tuple((c, 1) for c in group)
    return [0] * len(module.ops), kinds, groups


def _pipeline(module: Module, target: Target, constants: set[str]) -> tuple[list[int], dict[int, str], Groups]:
    """Contiguous ranges of the program per chip, balanced by weight bytes (see the module docstring)."""
    n, chips, lanes = len(module.ops), target.chips, target.lanes
    weights = _weight_bytes(module, lanes)
    # Ops without weights still cost time and activations: give each a small share so that
    # weightless stretches spread too.
    floor = max(1, sum(weights) // max(1, 50 * n))
    share = [w + floor if op.name != "graph.constant" else 0 for op, w in zip(module.ops, weights)]
    total = sum(share)
    home, kinds, groups, before = [0] * n, {}, {}, 0
    for i, op in enumerate(module.ops):
        first = min(chips - 1, before * chips // total)
        last = min(chips - 1, max(first, (before + share[i] - 1) * chips // total))
        home[i] = first
        offered = tilings(op, constants, lanes) if last > first else {}
        if offered:
            # each chip's share: how much of this op's weight range falls in the chip's quantile
            shares = tuple((c, min(before + share[i], -(-(c + 1) * total // chips)) - max(before, c * total // chips))
                           for c in range(first, last + 1))
            kinds[i] = next(iter(offered))  # the rule's preferred tiling
            groups[i] = tuple((c, w) for c, w in shares if w > 0)
        before += share[i]
    room = target.machine.sram.chip_bytes * 85 // 100
    _move_cuts(module, home, weights, set(groups), _chip_loads(home, groups, weights, chips), room, lanes)
    return home, kinds, groups


def _move_cuts(module: Module, home: list[int], weights: list[int], split: set[int], load: list[int],
               room: int, lanes: int) -> None:
    """Move each cut between two pipeline stages to the nearby op boundary (within half a stage)
    that the fewest activation bytes cross, so stages hand over small values: a cut inside a mixture of
    experts would otherwise send gathered expert weights over a link. A cut never moves across a split
    op, nor so far that a stage's weights exceed `room` bytes. Nor does it stay where a value the size of a
    state crosses (a resident cache, or a copy of it, read on the next chip: the cache would cross a link
    every step): it goes to the nearest boundary without one, however far, between its neighbours."""
    chips = len(load)
    states = [op.result for op in module.ops if OPS[op.name].persistent]
    order = [i for i, op in enumerate(module.ops) if op.name != "graph.constant" and not OPS[op.name].persistent]
    big = min((words(v.type, lanes) for v in states), default=None)
    crossing = [0] * (len(order) + 1)  # crossing[p]: bytes of values made before order[p] and read from it on
    heavy = [0] * (len(order) + 1)     # heavy[p]: how many of them are the size of a state
    last_use: dict[str, int] = {}
    for p, i in enumerate(order):
        for v in module.ops[i].operands:
            last_use[v.name] = p
    for p, i in enumerate(order):
        for r in module.ops[i].results:
            if last_use.get(r.name, p) > p:
                crossing[p + 1] += words(r.type, lanes)
                crossing[last_use[r.name] + 1] -= words(r.type, lanes)
                if big is not None and words(r.type, lanes) >= big:
                    heavy[p + 1] += 1
                    heavy[last_use[r.name] + 1] -= 1
    for p in range(1, len(crossing)):
        crossing[p] += crossing[p - 1]
        heavy[p] += heavy[p - 1]
    cuts = [p for p in range(1, len(order)) if home[order[p]] == home[order[p - 1]] + 1]
    window = max(1, len(order) // (2 * chips))
    for k, p in enumerate(cuts):
        left, right = cuts[k - 1] + 1 if k else 1, cuts[k + 1] - 1 if k + 1 < len(cuts) else len(order) - 1
        lo, hi = max(left, p - window), min(right, p + window)
        if all(heavy[q] for q in range(lo, hi + 1)):  # a state-sized value crosses everywhere nearby
            lo, hi = left, right
        stage = home[order[p]]
        while lo < p and (any(order[q] in split for q in range(lo, p))
                          or load[stage] + sum(weights[order[q]] for q in range(lo, p)) > room):
            lo += 1
        while hi > p and (any(order[q] in split for q in range(p, hi))
                          or load[stage - 1] + sum(weights[order[q]] for q in range(p, hi)) > room):
            hi -= 1
        best = min(range(lo, hi + 1), key=lambda q: (heavy[q] > 0, crossing[q], abs(q - p), q))
        moved = sum(weights[order[q]] for q in range(min(best, p), max(best, p)))
        load[stage if best < p else stage - 1] += moved
        load[stage - 1 if best < p else stage] -= moved
        for q in range(min(best, p), max(best, p)):
            home[order[q]] = stage if best < p else stage - 1
        cuts[k] = best


__all__ = ["STRATEGIES", "Partition", "describe", "partition"]
