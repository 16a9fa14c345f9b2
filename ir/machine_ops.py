"""The machine dialects: instructions of one chip's functional units.

  vxm.*   vector ALUs: elementwise, reductions, scans, top-k, masks
  sxm.*   switch units: transpose, reshape, expand, tile, concat, split, slice
  mem.*   memory: indexed gathers; constants in the SRAM image; free views
  mxm.*   matrix planes: install a weight tile, stream activations through it
  host.*  host I/O: an input into SRAM, an output out of it
  c2c.*   chip-to-chip: send words over a fixed route of links, receive them

Each op's definition declares its unit class (`UNIT_CLASSES`, the one list of
them), where its operands and results live, and whether it is a view; every
later concern asks the registry. Most instructions mirror a graph op (declared
`mirror=True` there): the same type rule, on the unit the graph op declares,
with operands and results in SRAM; the interpreter runs the same numpy
semantics (ir.evaluator) on the bytes it reads. Once scheduled, every
instruction carries the schedule attributes below; the interpreter recomputes
everything else.

A new machine op is one `defop` here (its properties) plus its numpy
implementation in ir.evaluator.EVAL.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from . import graph_ops as g
from .evaluator import EVAL
from .layout import rows_cols
from .registry import HOST, LINK, OPS, PLANE, SRAM, AttrSpec, OpDef, TypeRuleError, defop, register_op

A = AttrSpec


@dataclass(frozen=True)
class UnitClass:
    name: str
    doc: str
    colour: str         # how timelines, reports and graphs draw it
    link: bool = False  # a side of the chip-to-chip link ports (one instance per link), not a compute unit


# The unit classes, in the order timelines, reports and tables show them; the machine description
# gives each one's instances per chip (ir.costs.units) and pipeline latency.
UNIT_CLASSES = (
    UnitClass("mxm", "matrix planes", "#4c78a8"),
    UnitClass("vxm", "vector ALUs", "#59a14f"),
    UnitClass("sxm", "switch units", "#f28e2b"),
    UnitClass("mem", "memory units", "#b07aa1"),
    UnitClass("host", "host I/O", "#79706e"),
    UnitClass("tx", "link ports, transmit side", "#e15759", link=True),
    UnitClass("rx", "link ports, receive side", "#e15759", link=True),
)
UNIT_CLASS = {c.name: c for c in UNIT_CLASSES}

# Set by partition (chip), allocation (out) and scheduling; absent before.
SCHEDULE_ATTRS = {
    "chip": A("int", None),       # the chip it runs on and its results live on (absent: chip 0)
    "cycle": A("int", None),      # issue cycle
    "unit": A("str", None),       # the unit instance, e.g. "vxm3", "mxm0"
    "out": A("extents", None),    # SRAM extents of the results, in result order
    "streams": A("ints", None),   # stream registers held, one per SRAM operand and result
}

# machine op -> the graph op whose semantics it computes
GRAPH_EQUIVALENT: dict[str, str] = {}


def _mirror(graph: OpDef) -> None:
    name = f"{graph.unit}.{graph.name.split('.', 1)[1]}"
    attrs = {k: spec for k, spec in graph.attrs.items() if k not in g.PLACEMENT_ATTRS}
    register_op(replace(graph, name=name, attrs={**attrs, **SCHEDULE_ATTRS}, doc=f"{graph.unit.upper()}: {graph.doc}",
                        places=(SRAM,), result_place=SRAM, mirror=False))
    GRAPH_EQUIVALENT[name] = graph.name
    EVAL[name] = EVAL[graph.name]


for _graph in [d for d in OPS.values() if d.mirror]:
    _mirror(_graph)

VIEW = {"places": (SRAM,), "result_place": SRAM, "view": True}


# sha256: of the constant's words in the SRAM image, in `out` order (recorded with the image; the
# interpreter checks the image against it before cycle 0)
@defop("mem.constant", 0, {"value": A("tensor"), "sha256": A("str", None), **SCHEDULE_ATTRS},
       doc="a constant, placed in the SRAM image", result_place=SRAM)
def _constant(types, attrs):
    return attrs["value"].type


# State: a persistent buffer placed before cycle 0 and never freed (like a constant, but its words live on
# from run to run and are not in the SRAM image); its one writer updates rows of it in place.
@defop("mem.state", 0, {**g.STATE_ATTRS, **SCHEDULE_ATTRS}, persistent=True, result_place=SRAM,
       doc="the persistent buffer `name`: pinned in SRAM for the whole program, kept across runs")
def _state(types, attrs):
    return g.state_type(types, attrs)


@defop("mem.state_write", 3, {**SCHEDULE_ATTRS}, operand_names=("state", "new", "position"), unit="mem",
       in_place=True, places=(SRAM,), result_place=SRAM,
       doc="write new's rows into the state at rows position.flat[0] .. + rows (its address stream, known at "
           "run time); the result names the state's words after the write (its `out` is the state's)")
def _state_write(types, attrs):
    return g.state_write_type(types, attrs)


# Views: no instruction runs; the result names (part of) the operands' words.

@defop("mem.reshape_view", 1, {"shape": A("ints"), **SCHEDULE_ATTRS},
       doc="a reshape that keeps rows and cols, hence the words", **VIEW)
def _reshape_view(types, attrs):
    out = g._reshape(types, attrs)
    g.need(rows_cols(out) == rows_cols(types[0]), f"reshape {types[0]} -> {out} moves data: use sxm.reshape")
    return out


# The vector width is the machine's: rules about vector columns are machine rules, which the verifier
# checks when it has the machine (`verify(module, machine)`).

def _joinable(types, attrs, machine):
    lanes = machine.lanes
    for t in types[:-1]:
        g.need(t.shape[-1] % lanes == 0, f"all but the last part must be whole vector columns ({lanes} lanes): {t}")


@defop("mem.join", (1, None), {**SCHEDULE_ATTRS}, machine_rule=_joinable,
       doc="concat along the last axis of parts that are whole vector columns (but the last)", **VIEW)
def _join(types, attrs):
    for t in types[:-1]:
        g.need(t.rank >= 1, f"a part must have a last axis: {t}")
    return g._concat(types, {"axis": -1})


def _on_vector_columns(what: str, t, start: int, size: int, lanes: int) -> None:
    # (messages made only on failure: every tile and view checks this)
    if start % lanes:
        raise TypeRuleError(f"{what} must start on a vector column ({lanes} lanes): {start}")
    if size % lanes and start + size != t.shape[-1]:
        raise TypeRuleError(f"{what} must end on a vector column ({lanes} lanes) or the end")


def _whole_columns(types, attrs, machine):
    _on_vector_columns("a column slice", types[0], attrs["start"], attrs["size"], machine.lanes)


@defop("mem.row_join", (1, None), {**SCHEDULE_ATTRS},
       doc="concat along the rows of [rows, cols] parts of equal cols: per vector column, their rows follow on",
       **VIEW)
def _row_join(types, attrs):
    for t in types:
        g.need(t.rank == 2, f"a part must be [rows, cols]: {t}")
    return g._concat(types, {"axis": 0})


@defop("mem.column_slice", 1, {"start": A("int"), "size": A("int"), **SCHEDULE_ATTRS}, machine_rule=_whole_columns,
       doc="columns [start, start+size) of the last axis: whole vector columns, the last one may be partial",
       **VIEW)
def _column_slice(types, attrs):
    t, start, size = types[0], attrs["start"], attrs["size"]
    g.need(t.rank >= 1 and start >= 0 and size > 0 and start + size <= t.shape[-1], f"bad columns of {t}")
    return t.with_shape(t.shape[:-1] + (size,))


@defop("mem.row_slice", 1, {"start": A("int"), "size": A("int"), **SCHEDULE_ATTRS},
       doc="rows [start, start+size) of the second-to-last axis (any start: each row is whole words)", **VIEW)
def _row_slice(types, attrs):
    t, start, size = types[0], attrs["start"], attrs["size"]
    g.need(t.rank >= 2 and start >= 0 and size > 0 and start + size <= t.shape[-2], f"bad rows of {t}")
    return t.with_shape(t.shape[:-2] + (size, t.shape[-1]))


@defop("mem.transpose_view", 1, {"perm": A("ints"), **SCHEDULE_ATTRS},
       doc="a transpose keeping the last axis: each row stays whole words, only their order changes", **VIEW)
def _transpose_view(types, attrs):
    perm = tuple(attrs["perm"])
    g.need(perm and perm[-1] == len(perm) - 1, f"transpose {perm} moves the last axis: use sxm.transpose")
    return g._transpose(types, attrs)


def _one_tile(types, attrs, machine):
    w, rows, cols = types[0], machine.mxm.rows, machine.mxm.cols
    k, n = window(attrs, w)[1]
    if k > rows or n > cols:  # (the message only on failure: every tile checks this)
        raise TypeRuleError(f"a weight tile is at most {rows} x {cols}: {w.with_shape(w.shape[:-2] + (k, n))}")
    if attrs.get("start") is not None:
        _on_vector_columns("a weight tile's window", w, attrs["start"][1], n, machine.lanes)


def window(attrs, w) -> tuple[tuple[int, int], tuple[int, int]]:
    """(start, size) of the rows and columns of w an `mxm.install` reads: its window, else all of w."""
    if attrs.get("start") is None:
        return (0, 0), tuple(w.shape[-2:])
    return tuple(attrs["start"]), tuple(attrs["size"])


def reads_window(op) -> bool:
    """An `mxm.install` of a window of its weight: it reads only the words of its tile."""
    return op.name == "mxm.install" and op.attrs.get("start") is not None


# The window: the instruction streams just the words of its tile out of the weight (ir.layout.window_extents),
# so a weight of many tiles needs no view per tile.
@defop("mxm.install", 1, {"start": A("ints", None), "size": A("ints", None), **SCHEDULE_ATTRS},
       machine_rule=_one_tile,
       doc="install the tile w[..., k0:k0+ks, n0:n0+ns] (start = [k0, n0], size = [ks, ns]; without them all of "
           "w) of at most mxm.rows x mxm.cols on an MXM plane; n0 on a vector column, n0+ns one or the end",
       unit="mxm", places=(SRAM,), result_place=PLANE)
def _install(types, attrs):
    (w,) = types
    if w.rank < 2:
        raise TypeRuleError(f"a weight tile has rows and columns: {w}")
    start, size = attrs.get("start"), attrs.get("size")
    if start is None and size is None:
        return w
    g.need(start is not None and size is not None, "a window needs both start and size")
    if len(start) != 2 or len(size) != 2:
        raise TypeRuleError(f"a window's start and size are [rows, columns]: {list(start)}, {list(size)}")
    (k0, n0), (ks, ns), (k, n) = start, size, w.shape[-2:]
    if not (0 <= k0 and 0 <= n0 and 0 < ks and 0 < ns and k0 + ks <= k and n0 + ns <= n):  # (as _one_tile)
        raise TypeRuleError(f"window start {list(start)} size {list(size)} is outside {w}")
    return w.with_shape(w.shape[:-2] + (ks, ns))


@defop("mxm.matmul", (2, 3), {"accumulate": A("dtype", None), **SCHEDULE_ATTRS}, operand_names=("x", "w", "acc"),
       doc="stream x [..., M, K] through the installed tile w [..., K, N]; plus acc [..., M, N] when given; "
           "`accumulate` as graph.matmul's",
       unit="mxm", places=(SRAM, PLANE, SRAM), result_place=SRAM)
def _matmul(types, attrs):
    out = g._matmul(types[:2], attrs)
    if len(types) == 3:
        g.need(types[2] == out, f"accumulator {types[2]} must have the result type {out}")
    return out


@defop("host.input", 1, {"name": A("str"), **SCHEDULE_ATTRS}, doc="copy the model input `name` into SRAM",
       unit="host", places=(HOST,), result_place=SRAM)
def _host_input(types, attrs):
    return types[0]


@defop("host.output", 1, {"name": A("str"), **SCHEDULE_ATTRS}, doc="copy a value out to the host as output `name`",
       unit="host", places=(SRAM,), result_place=HOST)
def _host_output(types, attrs):
    return types[0]


# The c2c instructions run on a chip's link ports: a send on the transmit side
# of its first hop's port, a receive on the receive side of its last hop's.
@defop("c2c.send", 1, {"route": A("ints"), **SCHEDULE_ATTRS},
       doc="push x's words out of this chip over `route` (the port taken at each hop); "
           "the result is the transfer in flight", unit="tx", places=(SRAM,), result_place=LINK)
def _send(types, attrs):
    g.need(len(attrs["route"]) >= 1 and all(p >= 0 for p in attrs["route"]), "a route is one or more ports")
    return types[0]


@defop("c2c.recv", 1, {**SCHEDULE_ATTRS}, doc="write an arrived transfer's words into this chip's SRAM",
       unit="rx", places=(LINK,), result_place=SRAM)
def _recv(types, attrs):
    return types[0]


def is_machine_op(op_name: str) -> bool:
    d = OPS.get(op_name)
    return d is not None and d.result_place is not None


def machine_ops() -> tuple[str, ...]:
    """The machine ops registered now, sorted."""
    return tuple(sorted(n for n in OPS if is_machine_op(n)))


def unit_class(op_name: str) -> str | None:
    """The class of unit an instruction runs on; None for views and constants (no instruction)."""
    if not is_machine_op(op_name):
        raise TypeRuleError(f"{op_name} is not a machine instruction")
    return OPS[op_name].unit


def is_view(op_name: str) -> bool:
    """A machine op naming (part of) its operands' words: no instruction runs."""
    return is_machine_op(op_name) and OPS[op_name].view


def is_constant(op_name: str) -> bool:
    """A machine op placed in the SRAM image before cycle 0: no instruction runs, and it is no view."""
    d = OPS.get(op_name)
    return is_machine_op(op_name) and d.unit is None and not d.view and not d.persistent


def is_state(op_name: str) -> bool:
    """A persistent buffer (mem.state): placed before cycle 0, never freed, kept from run to run."""
    return is_machine_op(op_name) and OPS[op_name].persistent


def is_pinned(op_name: str) -> bool:
    """Placed before cycle 0 and never freed, no instruction: a constant or a state."""
    d = OPS.get(op_name)
    return is_machine_op(op_name) and d.unit is None and not d.view


def compute(op, args: list) -> tuple:
    """`op`'s numpy semantics (ir.evaluator.EVAL) on its operand arrays: its results."""
    attrs = {k: v for k, v in OPS[op.name].attrs_with_defaults(op.attrs).items() if k not in SCHEDULE_ATTRS}
    out = EVAL[op.name](args, attrs)
    return out if isinstance(out, tuple) else (out,)


def chip_of(op) -> int:
    return op.attrs.get("chip", 0)
