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
  pipeline  contiguous ranges of the program per chip. A model that repeats
            a layer (at least templates.MIN_REPEATS times, as
            backends.graph.find_layers sees it) is cut layer-aligned: the ops
            before the layers, each group of k consecutive layers and the ops
            after them get chips of their own, each filled in program order until
            its peak (the bytes its ops pin: weights, state, outputs held to the
            end; plus the largest working set of activations one of its ops has
            live) reaches ROOM_PERCENT of its SRAM, and cut at op boundaries; an
            op larger than that is split over chips of its own, and in a packed
            layout (only when no other fits the chips) every op with a weight
            that can split fills the room left on its chip and goes on over the
            next. Every group is laid out alike, so layer i's
            ops sit on layer i-k's chips shifted by the group's chip count, and
            the layer templates (compiler/templates.py) schedule one group's
            pieces once and stamp them on every group. Of k (1 to MAX_GROUP) and
            the fills that fit the chips, the least filled whose cuts cross few
            bytes is taken, so chips beyond the fewest fill
            each one less. Otherwise (no repeated layers, or too few chips):
            balanced by weight bytes: chip k holds the ops whose weights fall in
            the k-th N-quantile of the model's weights. An op whose weight
            straddles quantiles (or exceeds a chip) is split over the chips it
            spans, each taking tiles in proportion to its part of the weight.
  layout    a deployment's layout, `tp=T,pp=P[,ep=E]` (Layout): P pipeline stages, each of T consecutive chips
            (one node of a dragonfly when T is its size: the chips a stage's collectives cross are
            fully connected). Stages are contiguous ranges of the program balanced by weight bytes,
            each cut moved to a nearby boundary few bytes cross while the stages stay near even.
            Every op with a weight that can split is spread over its stage's chips (tensor
            parallelism: the activation goes out to them and the parts come back, one direct
            transfer each way, the exchange a fully connected node makes). A head group's ops
            (compiler/split_heads.py: attention over its part of a resident cache) run on the
            stage's chip of the group's index; a layer's other ops on one chip of its stage, the
            stage's layers taking its chips in turn.
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

import functools
import itertools
from dataclasses import dataclass

from ..backends.graph import constant_like, find_layers
from ..ir import AttrDict, LpucError, Module, Op
from ..ir.layout import words
from ..ir.machine import Machine
from ..ir.registry import OPS
from ..ir.target import Target

from .allocate import DoesNotFit
from .lower import tilings
from .passes import Pass
from .templates import MIN_REPEATS

STRATEGIES = ("auto", "pipeline", "tensor")  # (`layout` is given as a Layout, --layout)
ROOM_PERCENT = 95  # a layer-aligned chip's peak (pinned bytes + its largest working set) at most this much of
                  # its SRAM (the rest: what lowering adds, the allocator's slack)
MAX_GROUP = 4      # layers per group of the layer-aligned pipeline, at most

# graph op index -> ((chip, share), ...): the chips a split op's tiles are shared out over, in tile order
Groups = dict[int, tuple[tuple[int, int], ...]]


@dataclass(frozen=True)
class Partition(Pass):
    """The partition as a pass: over `chips` chips by `strategy` (pipeline or tensor). What it decides is
    written on the graph IR, so its plan is the partitioned module (the compile summary describes it)."""

    name = "partition"
    chips: int = 1
    strategy: str = "pipeline"
    layout: str = ""  # strategy "layout": its text, tp=T,pp=P[,ep=E]

    def plan(self, module: Module, target: Target, progress=None) -> Module:
        layout = parse_layout(self.layout) if self.strategy == "layout" else None
        return partition(module, Target(target.machine, self.chips), self.strategy, layout)

    def apply(self, module: Module, target: Target, plan: Module) -> Module:
        return plan


@dataclass(frozen=True)
class Layout:
    """A deployment's layout: `pp` pipeline stages of `tp` chips each (tensor parallelism inside a stage), each
    layer's experts (a mixture of experts) in `ep` groups, group j on chip j of its stage (expert
    parallelism: compiler/experts.py), each KV head kept in at most `kv` copies (compiler/replicated_kv.py;
    None: as many as the stage has chips for)."""

    tp: int = 1
    pp: int = 1
    ep: int = 1
    kv: int | None = None

    @property
    def chips(self) -> int:
        return self.tp * self.pp

    def __str__(self) -> str:
        return (f"tp={self.tp},pp={self.pp}" + (f",ep={self.ep}" if self.ep > 1 else "")
                + (f",kv={self.kv}" if self.kv is not None else ""))


def parse_layout(text: str) -> Layout:
    """`tp=T,pp=P,ep=E,kv=S` (tp, pp, ep may be left out: 1; kv: as many as fit) -> Layout; an LpucError saying
    what is wrong otherwise."""
    sizes = {}
    for word in text.split(","):
        key, _, value = word.strip().partition("=")
        if key not in ("tp", "pp", "ep", "kv") or key in sizes or not value.isdigit() or int(value) < 1:
            raise LpucError(f"layout {text!r}: expected tp=T,pp=P[,ep=E][,kv=S] (positive integers: T chips per "
                            "pipeline stage, P stages, each layer's experts over E chips of its stage, each KV head "
                            "in at most S copies), e.g. tp=8,pp=9")
        sizes[key] = int(value)
    layout = Layout(**sizes)
    if layout.ep > layout.tp:
        raise LpucError(f"layout {text!r}: ep={layout.ep} spreads each layer's experts over {layout.ep} chips of "
                        f"its stage, which has tp={layout.tp}: choose ep <= tp")
    return layout


def partition(module: Module, target: Target, strategy: str, layout: Layout | None = None) -> Module:
    """`module` with its partition over the target's chips by `strategy` (pipeline, tensor or layout, which
    `layout` gives; auto is the driver's) written on it; on one chip, `module` itself."""
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
    elif strategy == "layout" and layout is not None:
        if layout.chips != chips:
            raise LpucError(f"layout {layout} takes {layout.chips} chips, not {chips}")
        home, kinds, groups = _staged(module, target, constants, layout)
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
    """Contiguous ranges of the program per chip: layer-aligned when the model repeats layers and the chips
    suffice, else balanced by weight bytes (see the module docstring)."""
    stages = _stages(module, target.lanes, constants)
    if stages is not None:
        layout = _layer_aligned(stages, target.machine.sram.chip_bytes, target.chips)
        if layout is not None:
            return layout.written(module, stages)
    return _quantiles(module, target, constants)


def _quantiles(module: Module, target: Target, constants: set[str]) -> tuple[list[int], dict[int, str], Groups]:
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


# --- a deployment's layout: pipeline stages of tensor-parallel chips ---------------------------------

def _staged(module: Module, target: Target, constants: set[str], layout: Layout
            ) -> tuple[list[int], dict[int, str], Groups]:
    """Each op on a chip of its stage, each op with a weight that can split spread over its stage's chips by
    its rule's preferred tiling other than heads (module docstring: `layout`)."""
    lanes, tp = target.lanes, layout.tp
    home = [s * tp for s in _stage_of(module, target, layout.pp)]
    stages = _stages(module, lanes, constants) if tp > 1 else None
    if stages is not None:  # a layer's unsplit ops (its attention, its cache) on one chip of its stage, the
        segment = dict(stages.segment)  # stage's layers taking its chips in turn: their caches spread out
        for i in sorted(stages.follows, reverse=True):
            segment[i] = segment[stages.follows[i]]
        # A layer whose cache went to its head groups (compiler/split_heads.py) keeps only its norms and residual
        # sums unsplit: those stay on the stage's first chip, where the layer before left the residual stream
        # (in turn, each layer's would cross a link to the next layer's chip and back).
        spread = {segment[i] for i, op in enumerate(module.ops)  # (a state lives on its writer's chip)
                  if i in segment and "group" not in op.attrs and OPS[op.name].in_place}
        home = [h + (r % tp if (r := segment.get(i, 0)) in spread else 0) for i, h in enumerate(home)]
    # a head group's ops (compiler/split_heads.py) on its stage's chip of the group's index
    home = [h - h % tp + op.attrs["group"] % tp if "group" in op.attrs else h for h, op in zip(home, module.ops)]
    kinds, groups, tables = {}, {}, []
    for i, op in enumerate(module.ops):
        offered = {kind: tiles for kind, tiles in tilings(op, constants, lanes).items() if kind != "heads"}
        if tp > 1 and offered and "group" not in op.attrs:  # (a branch's weight is its chip's part already)
            kinds[i] = _fewest_bytes(op, offered, tp)
            first, count = home[i] - home[i] % tp, min(tp, offered[kinds[i]])
            if op.name == "graph.gather" and count < tp:
                tables.append((i, first, count))
                groups[i] = ()  # (placed below)
            else:
                groups[i] = tuple((first + c, 1) for c in range(count))
    weights = _weight_bytes(module, lanes)
    # A table of fewer column tiles than the stage has chips (an embedding) goes to the stage's least loaded
    # chips, not its first ones, which hold its first head groups and the layers' norms (its gather, once a
    # step, meets on its own chip)
    load = _chip_loads(home, groups, weights, target.chips)
    for i, first, count in tables:
        chosen = sorted(sorted(range(first, first + tp), key=lambda c: (load[c], c))[:count])
        groups[i] = tuple((c, 1) for c in chosen)
        for c in chosen:
            load[c] += weights[i] // count
    load = _chip_loads(home, groups, weights, target.chips)
    room = target.machine.sram.chip_bytes
    full = max(range(target.chips), key=lambda c: (load[c], -c))
    if load[full] > room:
        raise DoesNotFit(f"layout {layout} puts {load[full] / 2**20:.1f} MiB of weights and state on chip {full}, "
                         f"which holds {room / 2**20:.1f} MiB: more stages (pp) or chips per stage (tp)")
    return home, kinds, groups


def _fewest_bytes(op: Op, offered: dict[str, int], tp: int) -> str:
    """Of a matmul's tilings, the one whose split moves the fewest bytes over `tp` chips: by columns, each chip
    takes the whole activation [M, K] and gives back its columns of [M, N]; by rows, each takes its rows of
    the activation and gives back a whole [M, N] of partial sums (a dense mixture of experts' stacked weight,
    K = experts x width: each chip its experts' rows). Else the rule's preferred tiling."""
    if set(offered) != {"columns", "rows"}:
        return next(iter(offered))
    x, y = op.operands[0].type, op.result.type
    k, n = x.shape[-1], y.shape[-1]
    ins, outs = x.numel // k * x.dtype.itemsize, y.numel // n * y.dtype.itemsize  # bytes per K, per N
    by_columns = tp * k * ins + n * outs
    by_rows = k * ins + tp * n * outs
    return "rows" if by_rows < by_columns else "columns"


def _stage_of(module: Module, target: Target, pp: int) -> list[int]:
    """Per graph op, its pipeline stage (0 .. pp-1): contiguous ranges of the program balanced by weight
    bytes (a weightless op counts a little, so weightless stretches spread too), each cut moved to a nearby
    boundary few bytes cross (_move_cuts: never one a cache crosses) while the stages stay near even."""
    n, lanes = len(module.ops), target.lanes
    if pp == 1:
        return [0] * n
    weights = _weight_bytes(module, lanes)
    floor = max(1, sum(weights) // max(1, 50 * n))
    share = [w + floor if op.name != "graph.constant" else 0 for op, w in zip(module.ops, weights)]
    total, before, stage = sum(share), 0, [0] * n
    for i in range(n):
        stage[i] = min(pp - 1, (before + share[i] // 2) * pp // total)
        before += share[i]
    loads = [0] * pp
    for i, w in enumerate(weights):
        loads[stage[i]] += w
    # a cut moves only while its stages' weights stay within a tenth of an even share, or three quarters of
    # the stage's SRAM when that is more (a stage is tp chips, its weights spread over all of them; at batch 1
    # the stages run one after another, so an uneven cut costs nothing, and one between a layer's branches costs
    # its chips an extra branch each: _group_spans)
    stage_bytes = target.machine.sram.chip_bytes * (target.chips // pp) * 3 // 4
    _move_cuts(module, stage, weights, set(), loads, max(max(loads), sum(weights) * 11 // (10 * pp), stage_bytes),
               lanes)
    # what is made of a cache as the step found it alone (compiler/cache_scores.py: its keys transposed) stays
    # with the cache, on its write's stage: across a cut it would take the whole cache over a link every step
    writer = {op.operands[0].name: i for i, op in enumerate(module.ops) if OPS[op.name].in_place}
    constants = {op.result.name for op in module.ops if op.name == "graph.constant"}
    cache_of = {name: name for name in writer}  # value -> the state it is made of alone
    for i, op in enumerate(module.ops):
        made = {cache_of[v.name] for v in op.operands if v.name in cache_of}
        if len(made) == 1 and not OPS[op.name].in_place and \
                all(v.name in cache_of or v.name in constants for v in op.operands):
            state = made.pop()
            stage[i] = stage[writer[state]]
            cache_of.update({r.name: state for r in op.results})
    return stage


# --- the layer-aligned pipeline ----------------------------------------------------------------------

@dataclass(frozen=True)
class _Stages:
    """What the layer-aligned pipeline lays out: the ops that take a chip (all but those on constants only,
    which go with their first consumer), in program order, with the bytes each brings to its chip and the
    segment it belongs to."""

    order: tuple[int, ...]
    pinned: dict[int, int]                # op -> bytes it keeps on its chip all step: the constants it reads
                                          # (directly or through ops on constants only), the state it writes,
                                          # a result the step outputs (held until the host takes it at the end)
    working: dict[int, int]               # op -> bytes of activations live while it runs: its other results
                                          # and the activations and model inputs it reads
    segment: dict[int, int]               # op -> -1: before the layers, r: layer r, layers: after them
    layers: int
    tilings: dict[int, tuple[str, int]]   # splittable op -> its preferred tiling and tile count
    follows: dict[int, int]               # op on constants only -> the op whose chip it takes
    crossing: list[int]                   # per position p of order: bytes made before order[p], read from it on


@dataclass(frozen=True)
class _Layout:
    chips: int
    chips_of: dict[int, tuple[tuple[int, int], ...]]  # op of _Stages.order -> its (chip, share)s (one: whole)
    crossed: int                                        # activation bytes crossing its cuts

    def written(self, module: Module, stages: _Stages) -> tuple[list[int], dict[int, str], Groups]:
        home, kinds, groups = [0] * len(module.ops), {}, {}
        for i, shares in self.chips_of.items():
            home[i] = shares[0][0]
            if len(shares) > 1:
                kinds[i] = stages.tilings[i][0]
                groups[i] = shares
        for i in sorted(stages.follows, reverse=True):  # (a consumer comes later: its chip is known first)
            home[i] = home[stages.follows[i]]
        return home, kinds, groups


def layer_aligned_chips(module: Module, machine: Machine) -> int | None:
    """The chips the layer-aligned pipeline of `module` needs (None: it repeats no layers): the fewest of
    any layout's (packed or not) whose cuts cross few bytes (_few_crossed)."""
    constants = {op.result.name for op in module.ops if op.name == "graph.constant"}
    stages = _stages(module, machine.lanes, constants)
    if stages is None:
        return None
    room = machine.sram.chip_bytes * ROOM_PERCENT // 100
    layouts = [_layout(stages, k, room, packed) for packed in (False, True) for k in range(1, MAX_GROUP + 1)]
    few = _few_crossed(stages, [lay.crossed for lay in layouts])
    return min(lay.chips for lay in layouts if lay.crossed <= few)


def _few_crossed(stages: _Stages, crossed: list[int]) -> int:
    """The most activation bytes a layout's cuts may cross and still count as few: twice the least of
    `crossed`, or of a cut between every two layers if more (a few activation vectors more per step cost
    less than chips or fill; a cut through attention, sending a layer's K/V over a link, costs orders of
    magnitude more)."""
    second = next(p for p, i in enumerate(stages.order) if stages.segment[i] == 1)  # the second layer's first op
    return 2 * max(min(crossed), stages.layers * stages.crossing[second])


def _layer_aligned(stages: _Stages, chip_bytes: int, chips: int) -> _Layout | None:
    """Of the layouts within `chips` chips (groups of 1 to MAX_GROUP layers, each chip's peak at most
    ROOM_PERCENT of its SRAM or, while the layout still fits, a percent less, and less) whose cuts cross few
    bytes (_few_crossed), the least filled (the most room for the allocator, the most chips working on split
    ops at once), then the least crossed, then the fewest layers per group; packed ones (weights split at
    chips' ends: more transfers) only when no other fits. None when none fits `chips`."""
    for packed in (False, True):
        fitting = []
        for k in range(1, MAX_GROUP + 1):
            for percent in range(ROOM_PERCENT, 49, -1):
                layout = _layout(stages, k, chip_bytes * percent // 100, packed)
                if layout.chips > chips:
                    break
                fitting.append((percent, layout.crossed, k, layout))
        if fitting:
            few = _few_crossed(stages, [f[1] for f in fitting])
            return min((f for f in fitting if f[1] <= few), key=lambda f: f[:3])[3]
    return None


def _stages(module: Module, lanes: int, constants: set[str]) -> _Stages | None:
    """What the layer-aligned pipeline lays out of `module`; None when it repeats no layer MIN_REPEATS times."""
    layers = find_layers(module)
    if layers is None or layers.count < MIN_REPEATS:
        return None
    on_constants = constant_like(module)
    producer = {r.name: i for i, op in enumerate(module.ops) for r in op.results}
    consumers: dict[int, list[int]] = {}
    for i, op in enumerate(module.ops):
        for v in op.operands:
            if v.name in producer:
                consumers.setdefault(producer[v.name], []).append(i)
    order = tuple(i for i in range(len(module.ops)) if i not in on_constants)
    follows = {i: min(consumers[i]) for i in sorted(on_constants)
               if module.ops[i].name != "graph.constant" and i in consumers}
    outputs = {v.name for _, v in module.outputs}
    transient = {v.name for v in module.inputs} | {  # activations: freed once read (a state write's result
        r.name for i in order for r in module.ops[i].results  # names its state's words: pinned)
        if r.name not in outputs and not OPS[module.ops[i].name].in_place}
    pinned, working = {i: 0 for i in order}, {i: 0 for i in order}
    for i in order:
        op = module.ops[i]
        working[i] = sum(_bytes(v, lanes) for v in (*op.operands, *op.results) if v.name in transient)
        pinned[i] = sum(_bytes(r, lanes) for r in op.results if r.name in outputs)
        if OPS[op.name].in_place:
            pinned[i] += _bytes(op.operands[0], lanes)
    # a constant counts on every op reading it (each reader's chip holds a copy), through the ops on constants
    # only between them
    for i, op in enumerate(module.ops):
        if op.name == "graph.constant":
            for r in consumers.get(i, []):
                while r in follows:
                    r = follows[r]
                if r in pinned:
                    pinned[r] += _bytes(op.result, lanes)
    first, last = min(layers.blocks[0]), max(layers.blocks[-1])
    starts = [min(block) for block in layers.blocks]
    segment = {}
    block_of = {i: r for r, block in enumerate(layers.blocks) for i in block}
    for i in order:
        if i in block_of:
            segment[i] = block_of[i]
        elif i < first:
            segment[i] = -1
        elif i > last:
            segment[i] = layers.count
        else:  # an op between layers' ops goes with the layer begun before it
            segment[i] = max(r for r, s in enumerate(starts) if s <= i)
    offered = {}
    for i in order:
        kinds = tilings(module.ops[i], constants, lanes)
        if kinds:
            offered[i] = next(iter(kinds.items()))
    crossing, _ = _crossings(module, order, lanes)
    return _Stages(order, pinned, working, segment, layers.count, offered, follows,
                   [w * lanes for w in crossing[:len(order)]])


def _bytes(v, lanes: int) -> int:
    """SRAM bytes of a value."""
    return words(v.type, lanes) * lanes


def _crossings(module: Module, order, lanes: int, big: int | None = None) -> tuple[list[int], list[int]]:
    """Per position p of `order` (and one past its end): the SRAM words of the values made before order[p] and
    read from it on (what a cut there sends between chips), and how many of them are at least `big` words."""
    crossing, heavy = [0] * (len(order) + 1), [0] * (len(order) + 1)
    last_read: dict[str, int] = {}
    for p, i in enumerate(order):
        for v in module.ops[i].operands:
            last_read[v.name] = p
    for p, i in enumerate(order):
        for r in module.ops[i].results:
            if last_read.get(r.name, p) > p:
                size, end = words(r.type, lanes), last_read[r.name] + 1
                crossing[p + 1] += size
                crossing[end] -= size
                if big is not None and size >= big:
                    heavy[p + 1] += 1
                    heavy[end] -= 1
    for p in range(1, len(crossing)):
        crossing[p] += crossing[p - 1]
        heavy[p] += heavy[p - 1]
    return crossing, heavy


@dataclass(frozen=True)
class _Fill:
    """What a chip of the layer-aligned pipeline holds: the bytes its ops pin, and the most activation bytes
    one of its ops has live (activations are freed once read, so a chip's peak is its pinned bytes plus its
    largest working set, not the sum of everything its ops make)."""

    pinned: int = 0
    peak: int = 0

    @property
    def used(self) -> int:
        return self.pinned + self.peak

    def plus(self, pinned: int, working: int) -> "_Fill":
        return _Fill(self.pinned + pinned, max(self.peak, working))


def _layout(stages: _Stages, k: int, room: int, packed: bool = False) -> _Layout:
    """Chips of their own for the ops before the layers, each group of `k` consecutive layers and the ops
    after them, filled in program order: runs of ops cut by _cuts; an op larger than `room` (`packed`: any op
    with a weight that can split) split over the room left on the current chip and as many more as it fills, in whole tiles
    (a chip's share of it in proportion to its bytes there), the ops after it going on with its last chip."""
    units: dict[int, list[int]] = {}
    for p, i in enumerate(stages.order):
        s = stages.segment[i]
        units.setdefault(-1 if s < 0 else s // k if s < stages.layers else stages.layers, []).append(p)
    chips_of, chip, crossed = {}, -1, 0
    for unit in sorted(units):
        chip, fill, run = chip + 1, _Fill(), []  # the unit starts on a chip of its own; `fill`: what `chip` holds
        for p in units[unit] + [None]:
            i = stages.order[p] if p is not None else None
            tiles = stages.tilings.get(i, ("", 1))[1] if i is not None else 0
            spread = tiles > 1 and stages.pinned[i] > 0 and (stages.pinned[i] + stages.working[i] > room or packed)
            if p is not None and not spread:
                run.append(p)
                continue
            if run:
                first = stages.order[run[0]]
                if fill.plus(stages.pinned[first], stages.working[first]).used > room:  # not even its first op fits
                    chip, fill = chip + 1, _Fill()
                cuts, run_crossed = _cuts(stages, run, room, fill)
                for p_run, c in zip(run, cuts):
                    chips_of[stages.order[p_run]] = ((chip + c, 1),)
                if cuts[-1]:
                    fill = _Fill()
                for q, c in zip(run, cuts):
                    if c == cuts[-1]:
                        fill = fill.plus(stages.pinned[stages.order[q]], stages.working[stages.order[q]])
                chip += cuts[-1]
                crossed += run_crossed
            run = []
            if p is not None:
                chips_of[i], chip, fill = _spread(stages.pinned[i], stages.working[i], tiles, room, chip, fill)
    return _Layout(chip + 1, chips_of, crossed)


def _spread(pinned: int, working: int, tiles: int, room: int, chip: int, fill: _Fill
            ) -> tuple[tuple[tuple[int, int], ...], int, _Fill]:
    """An op pinning `pinned` bytes in `tiles` tiles (and `working` bytes of activations on each of its chips),
    over the room left on `chip` (holding `fill`) and the chips after it, in whole tiles: ((chip, bytes), ...),
    the last chip and what it holds."""
    tile = -(-pinned // tiles)
    shares, left = [], pinned
    while left > 0:
        take = min(left, (room - fill.plus(0, working).used) // tile * tile)
        if take > 0:
            shares.append((chip, take))
            left, fill = left - take, fill.plus(take, working)
        if left > 0:
            chip, fill = chip + 1, _Fill()
    return tuple(shares), chip, fill


def _cuts(stages: _Stages, run: list[int], room: int, fill: _Fill = _Fill()) -> tuple[list[int], int]:
    """(per op of `run` (positions in stages.order), its chip counted from the run's first; the bytes crossing
    its cuts): the fewest chips each holding at most `room` (the first chip holds `fill` already), cut where
    the fewest activation bytes cross (a cut inside attention would send the layer's K/V over a link)."""
    ops = [stages.order[p] for p in run]
    # Equal layers make equal runs: the search (quadratic in a chip's ops) runs once per distinct run.
    profile = (tuple(stages.pinned[op] for op in ops), tuple(stages.working[op] for op in ops),
               tuple(stages.crossing[p] for p in run[1:]))
    cuts, crossed = _cuts_of(profile, room, fill)
    return list(cuts), crossed


@functools.lru_cache(maxsize=256)
def _cuts_of(profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]], room: int, fill: _Fill
             ) -> tuple[tuple[int, ...], int]:
    """_cuts of a run given by its ops' pinned and working bytes and the bytes crossing a cut before each
    of its ops but the first."""
    pinned, working, crossing = profile
    best = [(0, 0, 0)]  # per prefix of the run: (chips, bytes crossing its cuts, where its last chip starts)
    for j in range(1, len(pinned) + 1):
        options, held = [], _Fill()
        for i in range(j - 1, -1, -1):
            held = held.plus(pinned[i], working[i])
            used = held.used if i else held.plus(fill.pinned, fill.peak).used
            if used > room and i < j - 1:
                break
            chips, crossed, _ = best[i]
            options.append((chips + 1, crossed + (crossing[i - 1] if i else 0), i))
        best.append(min(options))
    out, j = [0] * len(pinned), len(pinned)
    while j:
        i = best[j][2]
        out[i:j] = [best[j][0] - 1] * (j - i)
        j = i
    return tuple(out), best[-1][1]


def _group_spans(module: Module, order: list[int]) -> list[int]:
    """Per position p of `order`: how many values crossing a cut there tie head groups or paired-matmul branches
    together (made by a group's op, or made inside the layers and read by groups' ops): a stage cut there would
    put part of one layer's groups on the next stage, whose chips then do more than a layer's share."""
    layers = find_layers(module) if any("group" in module.ops[i].attrs for i in order) else None
    if layers is None:  # (a partition with no groups never looks for layers here)
        return [0] * (len(order) + 1)
    first, last = min(layers.blocks[0]), max(layers.blocks[-1])
    grouped_readers: dict[str, list[int]] = {}
    for p, i in enumerate(order):
        if "group" in module.ops[i].attrs:
            for v in module.ops[i].operands:
                grouped_readers.setdefault(v.name, []).append(p)
    spans = [0] * (len(order) + 1)
    for p, i in enumerate(order):
        op = module.ops[i]
        for r in op.results:
            readers = grouped_readers.get(r.name)
            if readers and ("group" in op.attrs or first <= i <= last) and max(readers) > p:
                spans[p + 1] += 1
                spans[max(readers) + 1] -= 1
    for p in range(1, len(spans)):
        spans[p] += spans[p - 1]
    return spans


def _move_cuts(module: Module, home: list[int], weights: list[int], split: set[int], load: list[int],
               room: int, lanes: int) -> None:
    """Move each cut between two pipeline stages to the nearby op boundary (within half a stage)
    that the fewest activation bytes cross, and none tying a layer's groups together (_group_spans), so stages
    hand over small values: a cut inside a mixture of experts would otherwise send gathered expert weights
    over a link. A cut never moves across a split
    op, nor so far that a stage's weights exceed `room` bytes. Nor does it stay where a value the size of a
    state crosses (a resident cache, or a copy of it, read on the next chip: the cache would cross a link
    every step): it goes to the nearest boundary without one, however far, between its neighbours."""
    chips = len(load)
    states = [op.result for op in module.ops if OPS[op.name].persistent]
    order = [i for i, op in enumerate(module.ops) if op.name != "graph.constant" and not OPS[op.name].persistent]
    big = min((words(v.type, lanes) for v in states), default=None)
    crossing, heavy = _crossings(module, order, lanes, big)  # heavy[p]: crossing values the size of a state
    tying = _group_spans(module, order)
    cuts = [p for p in range(1, len(order)) if home[order[p]] == home[order[p - 1]] + 1]
    window = max(1, len(order) // (2 * chips))
    # prefix sums over `order`: split ops and weight bytes before each position (a range's in O(1))
    splits = list(itertools.accumulate((i in split for i in order), initial=0))
    bytes_before = list(itertools.accumulate((weights[i] for i in order), initial=0))
    for k, p in enumerate(cuts):
        left, right = cuts[k - 1] + 1 if k else 1, cuts[k + 1] - 1 if k + 1 < len(cuts) else len(order) - 1
        lo, hi = max(left, p - window), min(right, p + window)
        if all(heavy[q] for q in range(lo, hi + 1)):  # a state-sized value crosses everywhere nearby
            lo, hi = left, right
        stage = home[order[p]]
        while lo < p and (splits[p] > splits[lo] or load[stage] + bytes_before[p] - bytes_before[lo] > room):
            lo += 1
        while hi > p and (splits[hi] > splits[p] or load[stage - 1] + bytes_before[hi] - bytes_before[p] > room):
            hi -= 1
        best = min(range(lo, hi + 1), key=lambda q: (heavy[q] > 0, tying[q] > 0, crossing[q], abs(q - p), q))
        moved = bytes_before[max(best, p)] - bytes_before[min(best, p)]
        load[stage if best < p else stage - 1] += moved
        load[stage - 1 if best < p else stage] -= moved
        for q in range(min(best, p), max(best, p)):
            home[order[q]] = stage if best < p else stage - 1
        cuts[k] = best


__all__ = ["STRATEGIES", "Layout", "Partition", "describe", "layer_aligned_chips", "parse_layout", "partition"]
