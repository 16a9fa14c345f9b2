"""The machine dialects: instructions of one chip's functional units.

  vxm.*   vector ALUs: elementwise, reductions, scans, top-k, masks
  sxm.*   switch units: transpose, reshape, expand, tile, concat, split, slice
  mem.*   memory: indexed gathers; constants in the SRAM image; free views
  mxm.*   matrix planes: install a weight tile, stream activations through it
  host.*  host I/O: an input into SRAM, an output out of it
  c2c.*   chip-to-chip: send words over a fixed route of links, receive them

Most instructions compute exactly their graph op (the same type rule, and the
interpreter runs the same numpy semantics on the bytes it reads), on operands
and results that live in SRAM. Once scheduled, every instruction carries the
schedule attributes below; the interpreter recomputes everything else.
"""

from __future__ import annotations

from . import graph_ops as g
from .layout import LANES, rows_cols
from .registry import OPS, AttrSpec, TypeRuleError, defop

A = AttrSpec

# Set by partition (chip), allocation (out) and scheduling; absent before.
SCHEDULE_ATTRS = {
    "chip": A("int", None),       # the chip it runs on and its results live on (absent: chip 0)
    "cycle": A("int", None),      # issue cycle
    "unit": A("str", None),       # the unit instance, e.g. "vxm3", "mxm0"
    "out": A("extents", None),    # SRAM extents of the results, in result order
    "streams": A("ints", None),   # stream registers held, one per SRAM operand and result
}

VXM = (g.ARITHMETIC + g.COMPARISON + g.LOGICAL + g.FLOAT_UNARY + g.NUMERIC_UNARY + g.REDUCTIONS
       + ("not", "isnan", "gelu", "where", "cast", "cumsum", "topk", "trilu"))
SXM = ("transpose", "reshape", "expand", "tile", "concat", "split", "slice")
MEM = ("gather", "gather_elements", "gather_nd")
TRANSCENDENTAL = frozenset({"exp", "log", "sqrt", "reciprocal", "tanh", "sigmoid", "erf", "cos", "sin", "gelu",
                            "div", "pow"})

# machine op -> the graph op whose semantics it computes
GRAPH_EQUIVALENT: dict[str, str] = {}


def _mirror(unit: str, name: str) -> None:
    src = OPS[f"graph.{name}"]
    attrs = {k: spec for k, spec in src.attrs.items() if k not in g.PLACEMENT_ATTRS}
    OPS[f"{unit}.{name}"] = src.__class__(f"{unit}.{name}", src.min_operands, src.max_operands,
                                          {**attrs, **SCHEDULE_ATTRS}, src.infer,
                                          f"{unit.upper()}: {src.doc}", src.operand_names)
    GRAPH_EQUIVALENT[f"{unit}.{name}"] = f"graph.{name}"


for _unit, _names in (("vxm", VXM), ("sxm", SXM), ("mem", MEM)):
    for _name in _names:
        _mirror(_unit, _name)


@defop("mem.constant", 0, {"value": A("tensor"), **SCHEDULE_ATTRS}, doc="a constant, placed in the SRAM image")
def _constant(types, attrs):
    return attrs["value"].type


# Views: no instruction runs; the result names (part of) the operands' words.

@defop("mem.reshape_view", 1, {"shape": A("ints"), **SCHEDULE_ATTRS},
       doc="a reshape that keeps rows and cols, hence the words")
def _reshape_view(types, attrs):
    out = g._reshape(types, attrs)
    g.need(rows_cols(out) == rows_cols(types[0]), f"reshape {types[0]} -> {out} moves data: use sxm.reshape")
    return out


@defop("mem.join", (1, None), {**SCHEDULE_ATTRS}, doc="concat along the last axis of 320-column-aligned parts")
def _join(types, attrs):
    for t in types[:-1]:
        g.need(t.rank >= 1 and t.shape[-1] % LANES == 0, f"all but the last part must be {LANES}-column aligned: {t}")
    return g._concat(types, {"axis": -1})


@defop("mem.column_slice", 1, {"start": A("int"), "size": A("int"), **SCHEDULE_ATTRS},
       doc="columns [start, start+size) of the last axis; start is 320-aligned, size reaches a boundary or the end")
def _column_slice(types, attrs):
    t, start, size = types[0], attrs["start"], attrs["size"]
    g.need(t.rank >= 1 and start % LANES == 0 and size > 0 and start + size <= t.shape[-1], f"bad columns of {t}")
    g.need(size % LANES == 0 or start + size == t.shape[-1], "a column slice must end on a 320 boundary or the end")
    return t.with_shape(t.shape[:-1] + (size,))


@defop("mem.row_slice", 1, {"start": A("int"), "size": A("int"), **SCHEDULE_ATTRS},
       doc="rows [start, start+size) of the second-to-last axis (any start: each row is whole words)")
def _row_slice(types, attrs):
    t, start, size = types[0], attrs["start"], attrs["size"]
    g.need(t.rank >= 2 and start >= 0 and size > 0 and start + size <= t.shape[-2], f"bad rows of {t}")
    return t.with_shape(t.shape[:-2] + (size, t.shape[-1]))


VIEWS = frozenset({"mem.reshape_view", "mem.join", "mem.column_slice", "mem.row_slice"})


@defop("mxm.install", 1, {**SCHEDULE_ATTRS}, doc="install a weight tile [..., K<=320, N<=320] on an MXM plane")
def _install(types, attrs):
    (w,) = types
    g.need(w.rank >= 2 and w.shape[-2] <= LANES and w.shape[-1] <= LANES, f"a weight tile is at most 320x320: {w}")
    return w


@defop("mxm.matmul", (2, 3), {**SCHEDULE_ATTRS}, operand_names=("x", "w", "acc"),
       doc="stream x [..., M, K] through the installed tile w [..., K, N]; plus acc [..., M, N] when given")
def _matmul(types, attrs):
    out = g._matmul(types[:2], attrs)
    if len(types) == 3:
        g.need(types[2] == out, f"accumulator {types[2]} must have the result type {out}")
    return out


@defop("host.input", 1, {"name": A("str"), **SCHEDULE_ATTRS}, doc="copy the model input `name` into SRAM")
def _host_input(types, attrs):
    return types[0]


@defop("host.output", 1, {"name": A("str"), **SCHEDULE_ATTRS}, doc="copy a value out to the host as output `name`")
def _host_output(types, attrs):
    return types[0]


@defop("c2c.send", 1, {"route": A("ints"), **SCHEDULE_ATTRS},
       doc="push x's words out of this chip over `route` (the port taken at each hop); "
           "the result is the transfer in flight")
def _send(types, attrs):
    g.need(len(attrs["route"]) >= 1 and all(p >= 0 for p in attrs["route"]), "a route is one or more ports")
    return types[0]


@defop("c2c.recv", 1, {**SCHEDULE_ATTRS}, doc="write an arrived transfer's words into this chip's SRAM")
def _recv(types, attrs):
    return types[0]


# The c2c instructions run on a chip's link ports: a send on the transmit side
# of its first hop's port, a receive on the receive side of its last hop's.
_C2C_UNITS = {"c2c.send": "tx", "c2c.recv": "rx"}


def unit_class(op_name: str) -> str | None:
    """The class of unit an instruction runs on; None for views and constants (no instruction)."""
    if op_name in VIEWS or op_name == "mem.constant":
        return None
    if op_name in _C2C_UNITS:
        return _C2C_UNITS[op_name]
    prefix = op_name.split(".", 1)[0]
    if prefix not in ("vxm", "sxm", "mem", "mxm", "host"):
        raise TypeRuleError(f"{op_name} is not a machine instruction")
    return prefix


MACHINE_OPS = tuple(sorted(n for n in OPS if n.split(".", 1)[0] in ("vxm", "sxm", "mem", "mxm", "host", "c2c")))


def chip_of(op) -> int:
    return op.attrs.get("chip", 0)
