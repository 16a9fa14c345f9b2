"""The compile driver: a verified graph-level module and a machine -> the
scheduled machine-level module and a frozen summary.

The pipeline is a list of passes (compiler/passes.py), each followed by the
verifier:

    group-heads -> precision -> partition -> lower -> allocate -> schedule-cpsat | schedule-list

At a layout of several chips a stage (`--layout tp=T,pp=P`, docs/partition.md "Layouts") the model is
first rewritten for it (dense experts, fused matmuls: before group-heads and precision) and its attention
cut into head groups (split-heads, after precision). The chip count defaults to the fewest chips whose SRAM
holds the weights; the partition (compiler/partition.py) is the one asked for; by default stages of whole
nodes, the widest that fits within a rack (node_layouts), for a model of repeated layers on two nodes or
more, else the fastest of pipeline and tensor; with
`--layout auto` the fastest of the layouts: each candidate runs the passes before the schedule, and a
quick list schedule of each decides. A module that is partitioned already (it
has the `chips` attribute, e.g. an IR file with its partition written by hand)
keeps its partition ("given": the pipeline starts at lower). `PASSES` names
every pass, so a pipeline can be written as text (`parse_passes("partition
chips=2 | lower | allocate")`, as the golden IR files do).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, fields, replace

from ..backends.graph import find_layers
from ..ir import LpucError, Module
from ..ir.collector import collector_paused
from ..ir.layout import words
from ..ir.machine import Machine
from ..ir.registry import LINK, OPS
from ..ir.schedule_facts import describe as describe_facts
from ..ir.schedule_facts import forget as forget_facts
from ..ir.target import Target
from ..ir.topology import round_chips, spanned_nodes
from ..ir.verifier import verify

from .allocate import Allocate, DoesNotFit
from .cache_scores import ScoreCacheBeforeWrite
from .experts import dense_experts, expert_chains
from .frontend.state import place_states
from .fold_transposes import fold_transposes, hoist_casts
from .fuse_matmuls import fuse_matmuls
from .paired_matmuls import pair_matmuls
from .replicated_kv import planned_copies, replicate_kv
from .grouped_heads import GroupHeads
from .lower import Lower
from .node_residual import residual_on_every_node
from .partition import STRATEGIES, Partition, describe, layer_aligned_chips, parse_layout
from .passes import DeadCodeElimination, Pass, Verify
from .precision import DEFAULT_PRECISION, Precision, Stored, check_precision
from .schedule_cpsat import CpSatScheduler
from .schedule_list import ListScheduler, ScheduleResult, Scheduler, apply_schedule
from .split_heads import SplitHeads
from .templates import machine_blocks, template_schedule

PASSES: dict[str, type[Pass]] = {p.name: p for p in (Verify, DeadCodeElimination, GroupHeads, Precision,
                                                      ScoreCacheBeforeWrite, SplitHeads, Partition, Lower, Allocate,
                                                      ListScheduler, CpSatScheduler)}
SCHEDULERS: dict[str, type[Scheduler]] = {"list": ListScheduler, "cpsat": CpSatScheduler}  # --scheduler NAME


@dataclass(frozen=True)
class CompileOptions:
    scheduler: str = "cpsat"     # cpsat: CP-SAT warm-started from the list schedule, or list
    effort: float = 0.1          # cpsat: CP-SAT's deterministic time budget (never wall-clock)
    workers: int = 8             # cpsat: solver threads (fixed by default, never the core count)
    window: int = 300            # cpsat: instructions per model (larger programs: window by window)
    max_windows: int = 12        # cpsat: models solved at most, over all layer templates when templated (later
                                 # windows keep the list schedule)
    stripes: int | None = None   # SRAM slices a value is spread over (None: one per byte-plane)
    rounds: int = 2              # list scheduler: forward-backward improvement rounds
    chips: int | None = None     # None: the fewest chips whose SRAM holds the model
    partition: str = "auto"      # auto (the fastest of pipeline and tensor), pipeline or tensor
    layout: str | None = None    # tp=T,pp=P: a deployment's layout (compiler.partition.Layout) instead
    state: str = "none"          # none, auto (Hugging Face past/present pairs) or PAST=PRESENT,...: a resident cache
    context: int | None = None   # the cache's slots (a prefill graph's; a decode graph's is its present's rows)
    precision: str = DEFAULT_PRECISION  # fp32 (the exact reference), fp16, int8 or fp8 (compiler/precision.py)


@dataclass(frozen=True)
class CompileSummary:
    machine: str
    cycles: int                  # the program's length: max issue + latency
    lower_bound: int             # max(critical_path, resource_bound)
    critical_path: int
    resource_bound: int
    bound_resource: str          # the resource whose work / capacity gives resource_bound
    instructions: int
    ops: int                     # instructions + views + constants
    sram_peak_bytes: int         # the largest chip's
    sram_image_bytes: int        # constants (weights), placed before cycle 0, all chips
    clock_mhz: float
    chips: int = 1
    precision: str = DEFAULT_PRECISION
    weight_bytes: int = 0        # the weights (matmul weights, gathered tables) as stored, scales included
    model_weight_bytes: int = 0  # ... as the model had them (fp32 for the samples); one copy of each, in SRAM
    partition: str = "single"    # the strategy used ("given": the module's own)
    partition_lines: tuple[str, ...] = ()        # per chip: what it runs
    candidates: tuple[tuple[str, str], ...] = ()  # (strategy, cycles or why not) of those tried
    transfers: int = 0           # c2c.send instructions
    solver_status: str = ""      # cpsat: optimal / feasible / skipped ...
    solve_seconds: float = 0.0   # cpsat: wall-clock (reported only; never decides anything)
    list_cycles: int = 0         # cpsat: the warm start's length
    proven_bound: int = 0        # cpsat: the solver's proven lower bound (0: none)
    chips_reason: str = ""       # why `chips` (the default's ChipNeed, or given)

    @property
    def gap(self) -> float:
        """cycles / lower_bound - 1: how far the schedule may be from optimal."""
        return self.cycles / self.lower_bound - 1 if self.lower_bound else 0.0

    @property
    def microseconds(self) -> float:
        return self.cycles / self.clock_mhz

    @property
    def bound(self) -> str:
        """What the lower bound comes from: a resource, the critical path, or CP-SAT's proof."""
        if self.proven_bound > max(self.resource_bound, self.critical_path):
            return "CP-SAT proof"
        return self.bound_resource if self.resource_bound >= self.critical_path else "critical path"

    def facts(self) -> dict:
        """What the .lpu manifest records of this compile (deterministic: no timings)."""
        return {"lower_bound_cycles": self.lower_bound, "critical_path_cycles": self.critical_path,
                "resource_bound_cycles": self.resource_bound, "bound": self.bound,
                "instructions": self.instructions, "sram_allocated_bytes": self.sram_peak_bytes,
                "sram_image_bytes": self.sram_image_bytes, "chips": self.chips, "precision": self.precision,
                "weight_bytes": self.weight_bytes, "model_weight_bytes": self.model_weight_bytes,
                "partition": self.partition,
                "partition_lines": list(self.partition_lines), "transfers": self.transfers,
                "candidates": [list(c) for c in self.candidates], "solver_status": self.solver_status,
                "list_cycles": self.list_cycles}


def passes(options: CompileOptions, chips: int, strategy: str) -> tuple[Pass, ...]:
    """The pipeline for `chips` chips and a partition strategy (pipeline, tensor, or a layout's text tp=T,pp=P;
    "given": the module is partitioned already); the scheduler's options are CompileOptions fields of the
    same names."""
    scheduler = SCHEDULERS[options.scheduler]
    partition = Partition(chips, "layout", strategy) if is_layout(strategy) else Partition(chips, strategy)
    return ((partition,) if strategy != "given" else ()) + (
        Lower(), Allocate(options.stripes), scheduler(**{f.name: getattr(options, f.name) for f in fields(scheduler)}))


def is_layout(strategy: str) -> bool:
    return strategy.startswith(("tp=", "pp="))


def _laid_out(graph_module: Module, source: Module | None, machine: Machine, options: CompileOptions,
              strategy: str, states, progress=None, done: dict | None = None) -> Module:
    """The module a strategy partitions: `graph_module`, or at a layout of T > 1 chips a stage `source`
    (before precision) rewritten for it:
    - its expert MLPs one MLP per expert, each on its share of the stage's chips, while the stages hold whole
      layers (else, and at ep=E, its experts dense; at ep=E in E groups, one per chip: compiler/experts.py);
    - its heads grouped (GQA), its scores over a key cache started before the step's key is written
      (compiler/cache_scores.py), its attention split by head groups (compiler/split_heads.py: as many on
      each chip as it has SXM units, each group transposing its keys, computing its own q, k and v by its
      columns of their weights, and its rows of the output projection);
    - each matmul split by columns and the one reading it by rows paired into T branches
      (compiler/paired_matmuls.py: an MLP's parts never meet between its matmuls; the chips holding head
      groups take the fewest of its tiles);
    - the matmuls of one activation by one group fused (compiler/fuse_matmuls.py: one round trip each);
    - converted to the precision asked for;
    - its unsplit ops also on the first chip of each other node a stage spans (compiler/node_residual.py: an
      all-reduce between node leaders);
    each state where a partner program keeps it (`states`, when given).
    `done`: where the rewritten `source` is kept per T, E and whether an MLP per expert (auto compares several
    layouts)."""
    layout = parse_layout(strategy) if is_layout(strategy) else None
    tp = layout.tp if layout else 1
    if tp > 1:
        heads = SplitHeads(tp * machine.units["sxm"].count, tp)
        if source is None:
            graph_module = run_passes(graph_module, Target(machine, 1), (ScoreCacheBeforeWrite(), heads))[0]
        else:
            done = {} if done is None else done
            # An MLP per expert while the stages hold whole layers: with more stages than layers, a layer's
            # experts would straddle two stages and run on both at once, and the stages would no longer run one
            # after another, as the physical bound and the pipelined figure take them to (dense experts, one
            # op, then).
            moe = layout.ep == 1 and any(op.name == "graph.gather_nd" for op in source.ops)
            layers = find_layers(source) if moe and layout.pp > 1 else None
            per_expert = moe and (layout.pp == 1 or (layers is not None and layout.pp <= layers.count))
            key = (tp, layout.ep, per_expert, layout.kv)
            if key not in done:
                one = Target(machine, 1)
                chained, spans = expert_chains(source, tp) if per_expert else (source, {})
                # (KV heads in copies first, so that the stage's chips each get a head group: GroupHeads groups the
                # fewer query heads each copy serves)
                split = run_passes(dense_experts(replicate_kv(chained, tp, layout.kv), groups=layout.ep), one,
                                   (GroupHeads(), ScoreCacheBeforeWrite(), heads), progress)[0]
                # (paired after the heads are split: the chips holding head groups take the fewest MLP tiles)
                node = spanned_nodes(machine, tp)
                paired = pair_matmuls(split, tp, machine.lanes, node, spans)
                precise = run_passes(fuse_matmuls(paired, tp), one, (Precision(options.precision),), progress)[0]
                precise = verify(hoist_casts(precise))
                done[key] = residual_on_every_node(precise, tp, node, machine.lanes)
            graph_module = done[key]
    return place_states(graph_module, states) if states is not None else graph_module


def _at_scheduler(pipeline: tuple[Pass, ...]) -> tuple[tuple[Pass, ...], tuple[Pass, ...]]:
    """(the passes that place the program on chips and in SRAM, those from the scheduler on): a partition
    candidate runs the first part; only the chosen one runs the rest."""
    k = next(k for k, p in enumerate(pipeline) if isinstance(p, Scheduler))
    return pipeline[:k], pipeline[k:]


def run_passes(module: Module, target: Target, pipeline: tuple[Pass, ...], progress=None, verified: bool = False
               ) -> tuple[Module, dict[str, object]]:
    """Run each pass, then the verifier, on `module`; -> (the last module, each pass's plan by pass name).
    The module's chip count is the truth: after a pass that partitions it, the target is the machine on
    those chips (a compile's target has them from the start). `verified`: `module` passed the verifier (so
    what a pass only rewrites -- allocation, scheduling -- is checked in what it changed: ir.verifier)."""
    plans = {}
    for p in pipeline:
        if progress:
            progress(f"{p}: {len(module.ops):,} ops")
        plans[p.name] = plan = p.plan(module, target, progress)
        module = verify(p.apply(module, target, plan), target.machine, since=module if verified else None)
        verified = True
        if module.attrs.get("chips", 1) != target.chips:
            target = Target(target.machine, module.attrs["chips"])
    return module, plans


def parse_passes(text: str) -> tuple[Pass, ...]:
    """`a | b key=value ...` -> the passes (PASSES names them; an option's text is read as its field's type)."""
    return tuple(_parse_pass(stage.split()) for stage in text.split("|"))


def _parse_pass(words: list[str]) -> Pass:
    if not words or words[0] not in PASSES:
        raise LpucError(f"unknown pass {' '.join(words)!r} (known: {', '.join(sorted(PASSES))})")
    cls = PASSES[words[0]]
    hints = typing.get_type_hints(cls)
    options = {}
    for word in words[1:]:
        key, _, text = word.partition("=")
        if key not in {f.name for f in fields(cls)}:
            raise LpucError(f"pass {cls.name} has no option {key!r} (options: "
                            f"{', '.join(f.name for f in fields(cls)) or 'none'})")
        options[key] = _option_value(text, hints[key], f"{cls.name} {key}")
    return cls(**options)


def _option_value(text: str, hint, what: str):
    kinds = typing.get_args(hint) or (hint,)
    if text == "None" and type(None) in kinds:
        return None
    for kind in kinds:
        if kind is not type(None):
            try:
                return kind(text)
            except ValueError:
                pass
    raise LpucError(f"{what}={text!r}: expected {hint}")


@dataclass(frozen=True)
class ChipNeed:
    """Why a compile's default chip count is what it is."""

    weights: int        # chips whose SRAM holds the constants and states, a tenth of each spare
    layout: int | None  # chips the layer-aligned pipeline needs, when it decides (weights need a chip per layer)
    chips: int          # the larger, rounded up to a size the topology has

    def __str__(self) -> str:
        text = f"the fewest holding the weights and state: {self.weights}"
        if self.layout:
            text += f"; the layer-aligned layout (activations too): {self.layout}"
        if self.chips != max(self.weights, self.layout or 1):
            text += f"; the topology's next size: {self.chips}"
        return text


def chip_need(graph: Module, machine: Machine) -> ChipNeed:
    """The fewest chips (a size the topology supports) whose SRAM holds the model's constants and states with
    room to spare (a tenth of each chip for activations); for a model of repeated layers whose weights need a
    chip per layer or more, those its layer-aligned pipeline needs (compiler.partition: every layer takes chips
    of its own then, so the layout costs few chips more; with several layers a chip, it would cost many)."""
    need = sum(words(op.result.type, machine.lanes) for op in graph.ops
               if op.name == "graph.constant" or OPS[op.name].persistent)
    usable = machine.sram.slices * machine.sram.words_per_slice * 9 // 10
    weights, layout = -(-need // usable), None
    layers = find_layers(graph)
    if layers is not None and weights >= layers.count:
        layout = layer_aligned_chips(graph, machine)
    return ChipNeed(weights, layout, round_chips(machine, max(weights, layout or 1)))


def default_chips(graph: Module, machine: Machine) -> int:
    """The default chip count of `graph` (chip_need)."""
    return chip_need(graph, machine).chips


def _place(graph_module: Module, target: Target, placing: tuple[Pass, ...], progress=None):
    """Run the passes that place the program (the last is the allocator) -> (the allocated module, the plans,
    the machine ops of each repeated layer: compiler.templates). The layers are found on the model as the
    user wrote it (a partition's split attributes would tell equal layers apart) and mapped onto machine
    ops through the lowering; the allocator gives equal layers equal slices."""
    *before, allocate = placing
    lowered, plans = run_passes(graph_module, target, tuple(before), progress)
    # the lowering is not kept: it is the lowered module again, and would hold the program twice
    blocks = machine_blocks(graph_module, plans.pop(Lower.name).origins)
    allocated, more = run_passes(lowered, target, (replace(allocate, layers=blocks),), progress, verified=True)
    return allocated, {**plans, **more}, blocks


def _templated(allocated: Module, target: Target, blocks, cpsat, rounds: int, progress=None
               ) -> ScheduleResult | None:
    """The layer-templated schedule of `allocated` (compiler.templates), or None when the model does not
    repeat layers enough."""
    if not blocks:
        return None
    return template_schedule(allocated, target, blocks, cpsat, rounds, progress)[0]


@collector_paused()
def compile_module(graph_module: Module, machine: Machine, options: CompileOptions = CompileOptions(),
                   progress=None, states=None) -> tuple[Module, CompileSummary]:
    """`progress`, when given, is called with one line per stage (for long compiles). `states`, when given,
    keeps each resident state where a partner program keeps it (frontend.state.place_states)."""
    if options.scheduler not in SCHEDULERS:
        raise LpucError(f"unknown scheduler {options.scheduler!r} (choose from {', '.join(SCHEDULERS)})")
    if options.effort <= 0 or min(options.workers, options.window, options.max_windows) < 1:
        raise LpucError(f"--effort must be positive, --workers, --window and --max-windows at least 1 (got "
                        f"{options.effort:g}, {options.workers}, {options.window}, {options.max_windows})")
    if options.partition not in STRATEGIES:
        raise LpucError(f"unknown partition {options.partition!r} (choose from {', '.join(STRATEGIES)})")
    layout = parse_layout(options.layout) if options.layout not in (None, "auto") else None
    if options.layout and options.partition != "auto":
        raise LpucError(f"--layout {options.layout} and --partition {options.partition}: give one of them")
    if layout is not None and options.chips not in (None, layout.chips):
        raise LpucError(f"--layout {layout} takes {layout.chips} chips, not --chips {options.chips}")
    check_precision(options.precision, machine)
    # Precision first (after grouping heads, which drops the copies it would convert): the weights' storage
    # type decides the SRAM they take, hence the default chip count.
    # Experts dense (compiler/experts.py) where a stacked expert table is larger than a chip: before grouping
    # heads and precision, which rewrite the gathered matmul. (A layout redoes these from `source`, the model as
    # imported: _laid_out.)
    if "chips" not in graph_module.attrs:  # (a partition written in the IR names its ops: left as written)
        graph_module = verify(fold_transposes(graph_module))
    source = graph_module
    graph_module, plans = run_passes(dense_experts(source, machine.sram.chip_bytes),
                                     Target(machine, graph_module.attrs.get("chips", 1)),
                                     (GroupHeads(), Precision(options.precision)), progress)
    stored = plans[Precision.name][1]
    if "chips" not in graph_module.attrs:
        graph_module = verify(hoist_casts(graph_module))
    if "chips" in graph_module.attrs:  # partitioned already
        chips = graph_module.attrs["chips"]
        if options.chips not in (None, chips) or options.partition != "auto" or options.layout:
            raise LpucError(f"{graph_module.name} is partitioned already, over {chips} chips (its `chips` attribute): "
                            "leave out --chips, --partition and --layout, or remove the partition from the IR")
        return _compile_on(graph_module, machine, options, chips, stored, progress, "as the IR's partition writes",
                           states, source)
    if layout is not None:
        return _compile_on(graph_module, machine, options, layout.chips, stored, progress,
                           f"given by --layout {layout}", states, source)
    if options.chips is not None:
        return _compile_on(graph_module, machine, options, options.chips, stored, progress, "given by --chips",
                           states, source)
    # The default: the fewest chips whose SRAM holds the weights; when the partition leaves one chip too
    # full, the next size the topology has.
    try:
        need = chip_need(graph_module, machine)
    except LpucError as e:  # more than the topology can join
        raise LpucError(f"{graph_module.name}'s weights at {options.precision} need {e}") from None
    chips, tried = need.chips, []
    while True:
        reason = str(need) + (f"; {', '.join(tried)} left a chip too full" if tried else "")
        try:
            return _compile_on(graph_module, machine, options, chips, stored, progress, reason, states, source)
        except DoesNotFit as e:
            if len(tried) == 8:
                raise
            if progress:
                progress(f"{e}; trying more chips")
            tried.append(str(chips))
            chips = round_chips(machine, chips + 1)


def layout_candidates(machine: Machine, chips: int) -> tuple[str, ...]:
    """The layouts `--layout auto` compares on `chips` chips: T chips per stage for each T up to a node (a
    stage's chips fully connected) that divides the chips, T=1 (a pipeline) first."""
    node = machine.topology.chips_per_node if machine.topology.kind == "dragonfly" else 1
    return tuple(f"tp={t},pp={chips // t}" for t in (1, 2, 4, 8, 16, 32, 64) if t <= max(node, 1)
                 and chips % t == 0)


def node_layouts(graph: Module, machine: Machine, chips: int) -> tuple[str, ...]:
    """The default layouts on `chips` chips, to try in turn, for a model that repeats layers on two nodes or
    more: tensor parallel over whole nodes of one rack, the widest first, pipelined across the rest; () when
    none applies (the partition strategies decide). At batch 1 the stages run one after another, so only a
    stage's chips work at once on a token: chips beyond what the weights need go to wider stages rather
    than more of them. A stage is no wider than the model's widest weight has column tiles to share out
    (else its chips would idle), and than a rack (beyond it, racks join by single cables)."""
    node = machine.topology.chips_per_node if machine.topology.kind == "dragonfly" else 0
    if node < 2 or chips < 2 * node or chips % node or find_layers(graph) is None:
        return ()
    rack = node * max(machine.topology.nodes_per_rack, 1)
    widest = max((-(-op.operands[1].type.shape[-1] // machine.lanes) for op in graph.ops
                  if op.name == "graph.matmul" and op.operands[1].type.rank == 2), default=0)
    wide = [t for t in range(node, min(rack, chips) + 1, node) if chips % t == 0 and (t == node or t <= widest)]
    return tuple(f"tp={t},pp={chips // t}" for t in reversed(wide))


def _strategies(graph_module: Module, machine: Machine, options: CompileOptions, chips: int) -> tuple[str, ...]:
    """The partitions to try on `chips` chips, by strategy name or layout text (tp=T,pp=P)."""
    if "chips" in graph_module.attrs:
        return ("given",)
    if options.layout == "auto":
        return layout_candidates(machine, chips)
    if options.layout:
        return (str(parse_layout(options.layout)),)
    if chips == 1:
        return ("single",)
    if options.partition != "auto":
        return (options.partition,)
    layouts = node_layouts(graph_module, machine, chips)
    if layouts:
        return layouts
    # the layer-aligned pipeline when it fits: its layers share templates (tensor keeps every activation on
    # chip 0); else whichever of the two a quick schedule finds faster
    layered = layer_aligned_chips(graph_module, machine)
    return ("pipeline",) if layered is not None and layered <= chips else ("pipeline", "tensor")


def _compile_on(graph_module: Module, machine: Machine, options: CompileOptions, chips: int, stored: Stored,
                progress=None, chips_reason: str = "", states=None, source: Module | None = None
                ) -> tuple[Module, CompileSummary]:
    """Compile `graph_module` (after precision; `source`: before it) on `chips` chips."""
    target = Target(machine, chips)  # an LpucError when the topology has no such size
    strategies = _strategies(graph_module, machine, options, chips)
    if options.layout or options.partition != "auto" or not is_layout(strategies[0]):
        return _compile_by(graph_module, machine, options, target, stored, strategies, progress, chips_reason,
                           states, source)
    # the default layouts in turn, widest first, until one fits (a stage's weights and caches on its
    # chips), each with fewer KV copies before the next (a copy's cache is SRAM on more chips); then the
    # partition's pipeline
    pending = [*strategies, "pipeline"]
    while pending:
        strategy = pending.pop(0)
        try:
            return _compile_by(graph_module, machine, options, target, stored, (strategy,), progress,
                               chips_reason, states, source)
        except DoesNotFit as e:
            if strategy == "pipeline":
                raise
            fewer = fewer_copies(source if source is not None else graph_module, strategy)
            if fewer:
                pending.insert(0, fewer)
            if progress:
                progress(f"{e}; trying {fewer if fewer else 'the next layout'}")


def fewer_copies(module: Module, strategy: str) -> str | None:
    """The layout `strategy` with fewer copies of each KV head than it keeps (compiler/replicated_kv.py: the
    next fewer, 1 for none); None when it keeps none."""
    layout = parse_layout(strategy)
    kept = planned_copies(module, layout.tp, layout.kv)
    return str(replace(layout, kv=planned_copies(module, layout.tp, kept - 1))) if kept > 1 else None


def _compile_by(graph_module: Module, machine: Machine, options: CompileOptions, target: Target, stored: Stored,
                strategies: tuple[str, ...], progress, chips_reason: str, states, source: Module | None
                ) -> tuple[Module, CompileSummary]:
    """Compile by the best of `strategies` (compared by a quick list schedule when there are several)."""
    chips = target.chips
    tried, best, rewritten = [], None, {}
    for strategy in strategies:
        placing, scheduling = _at_scheduler(passes(options, chips, strategy))
        placed = _laid_out(graph_module, source, machine, options, strategy, states, progress, rewritten)
        try:
            allocated, plans, blocks = _place(placed, target, placing, progress)
        except DoesNotFit as e:
            if len(strategies) == 1:
                raise
            tried.append((strategy, f"does not fit: {e}"))
            continue
        if len(strategies) == 1:
            best = (strategy, scheduling, allocated, plans, blocks, placed)
            break
        # Candidates are compared by a quick list schedule (no improvement rounds; templated when the model
        # repeats layers): the cost model is the scheduler itself. Only the winner is scheduled in earnest.
        if progress:
            progress(f"quick list schedule of the {strategy} candidate")
        quick = _templated(allocated, target, blocks, None, 0, progress)
        cycles = (quick or ListScheduler(rounds=0).plan(allocated, target)).cycles
        tried.append((strategy, str(cycles)))
        if best is None or cycles < best[6]:
            best = (strategy, scheduling, allocated, plans, blocks, placed, cycles)
    if best is None:
        raise DoesNotFit(f"no partition of {graph_module.name} fits {chips} chips: "
                        + "; ".join(f"{s}: {why}" for s, why in tried))
    strategy, scheduling, allocated, plans, blocks, placed = best[:6]
    cpsat = scheduling[0] if isinstance(scheduling[0], CpSatScheduler) else None
    result = _templated(allocated, target, blocks, cpsat, options.rounds, progress)
    if result is not None:
        if progress:
            progress(f"verifier: the scheduled program ({result.instructions:,} instructions)")
        scheduled = verify(apply_schedule(allocated, result), machine, since=allocated)
    else:
        scheduled, more = run_passes(allocated, target, scheduling, progress, verified=True)
        plans.update(more)
        result = plans[scheduling[0].name]
    # The scheduled module's facts (what the .lpu's build describes) are the allocated module's, taken over
    # (ir.schedule_facts); no others are kept (they would keep their modules alive).
    describe_facts(scheduled, target)
    forget_facts(keep=scheduled)
    partitioned, allocation = plans.get(Partition.name, placed), plans[Allocate.name]
    summary = CompileSummary(
        machine=machine.name, cycles=result.cycles, lower_bound=result.lower_bound,
        critical_path=result.critical_path, resource_bound=result.resource_bound,
        bound_resource=result.bound_resource, instructions=result.instructions, ops=len(scheduled.ops),
        sram_peak_bytes=allocation.peak_bytes, sram_image_bytes=allocation.image_bytes,
        clock_mhz=machine.clock_mhz, chips=chips, precision=options.precision, weight_bytes=stored.bytes,
        model_weight_bytes=stored.model_bytes,
        partition=strategy,
        partition_lines=tuple(describe(partitioned, target.lanes)) if chips > 1 else (),
        candidates=tuple(tried) if len(strategies) > 1 else (),
        transfers=sum(1 for op in scheduled.ops if OPS[op.name].result_place == LINK),  # sends
        solver_status=result.solver_status, solve_seconds=result.solve_seconds, list_cycles=result.list_cycles,
        proven_bound=result.proven_bound, chips_reason=chips_reason)
    return scheduled, summary


__all__ = ["PASSES", "SCHEDULERS", "ChipNeed", "CompileOptions", "CompileSummary", "chip_need", "compile_module",
           "default_chips", "parse_passes", "passes", "run_passes"]
