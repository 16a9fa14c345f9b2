"""Lowering: a graph-level module -> machine instructions on the chips of a partition.

One rule per graph op (`RULES`, keyed by op name). Most graph ops map 1:1 onto
the machine op computing the same semantics (`vxm.*`, `sxm.*`, `mem.*`);
softmax and the norms become VXM sequences; matmul becomes MXM tiles. Module
inputs enter through `host.input` and outputs leave through `host.output`.

Matmul tiling (A [..., M, K] @ B [..., K, N]):
  - A is cut into k-tiles of one vector column (the machine's lanes) with
    `mem.column_slice` (free views);
  - B into weight tiles of <= lanes rows x <= lanes cols, each the window of B an
    `mxm.install` reads (no view per tile);
  - per n-tile, per k-tile: `mxm.install B {start, size}` then `mxm.matmul x_k, w_kn[, acc]`,
    the partial sum of the previous k-tile as acc; n-tiles joined by `mem.join`.
  Batch dims: a B with a single batch element is viewed as 2-D (A's rows all
  stream through one tile); otherwise A and B are expanded (`sxm.expand`) to the
  broadcast batch shape, so install and matmul see equal batches. 1-D operands
  are reshaped to a row / a column first and the result reshaped back.

Chips: the partition is written on the graph ops (docs/partition.md): each op
is lowered on its `chip`; an operand living elsewhere comes over by a transfer
(c2c.send on its chip, c2c.recv on this one, over the network's fixed route),
once per value and chip. Constants and model inputs are emitted lazily, on the
chip of each reader (a constant is copied into each reader chip's image rather
than sent). A split op is lowered on the chips of its `parts`, each with its
tiles: a splittable rule declares its tilings in `TILINGS` (the one place that
says how an op can be cut, and into how many tiles), and its rule cuts them
and brings the parts back to the op's chip to be joined (columns, heads) or
added (rows).

`evaluate_machine` runs a machine-level module with numpy (the untimed
reference for this level; the interpreter in backends/ is the timed one).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ..ir import machine_ops as mo
from ..ir import LpucError, Module, Op, Tensor, Value
from ..ir.attributes import AttrDict, shared
from ..ir.builder import Builder
from ..ir.errors import EvalError, VerifyError
from ..ir.evaluator import check_inputs, conform
from ..ir.graph_ops import ELEMENTWISE, PLACEMENT_ATTRS, REDUCTIONS, broadcast_shapes
from ..ir.layout import rows_cols, words
from ..ir.registry import OPS, TypeRuleError
from ..ir.target import Target
from ..ir.types import DType, TensorType

from .passes import Pass


@dataclass(frozen=True)
class Split:
    """How the op being lowered is spread over chips: the tiling its rule cuts by (one of its TILINGS) and,
    per part in tile order, the chip and the tiles it takes."""

    kind: str
    parts: tuple[tuple[int, range], ...]


class _Emitter:
    """Appends machine ops on the current chip, naming results after the graph values they stand for."""

    def __init__(self, target: Target):
        self.b = Builder()
        self.target, self.lanes = target, target.lanes
        self.chip = 0
        self.split: Split | None = None                # how the op being lowered is spread over chips
        self.chip_of: dict[str, int] = {}           # lowered value -> its chip
        self.lazy: dict[str, tuple[str, object]] = {}  # placeholder -> ("constant", Tensor) / ("input", Value)
                                                       # / ("state", its graph.state op)
        self.copies: dict[tuple[str, int], Value] = {}  # (value, chip) -> it, on that chip
        self.state_home: dict[str, int] = {}            # a state's placeholder -> the chip it lives on
        self.sent: dict[str, list[tuple[int, Value]]] = {}  # value -> (chip, its copy there), in sending order
        self.attrs: dict[tuple, AttrDict] = {}          # equal attributes, one object (ir.attributes.shared)

    @contextmanager
    def on(self, chip: int):
        saved, self.chip = self.chip, chip
        try:
            yield
        finally:
            self.chip = saved

    def at(self, v: Value, chip: int | None = None) -> Value:
        """`v` on `chip` (default: the current one): itself, a lazily emitted constant or input, or a transfer."""
        chip = self.chip if chip is None else chip
        if v.name not in self.lazy and self.chip_of.get(v.name, chip) == chip:
            return v
        home = self.state_home.get(v.name)
        if home is not None and home != chip:  # a state lives on one chip: read elsewhere, it comes over
            return self.at(self.at(v, home), chip)
        key = (v.name, chip)
        if key not in self.copies:
            with self.on(chip):
                if v.name in self.lazy:
                    kind, what = self.lazy[v.name]
                    hint = v.name if chip == 0 else f"{v.name}@c{chip}"
                    if kind == "constant":
                        self.copies[key] = self.one("mem.constant", [], {"value": what}, hint)
                    elif kind == "state":  # (its one reader, its write, runs where it lives)
                        self.copies[key] = self.one("mem.state", [], {k: what.attrs[k] for k in _STATE_KEYS
                                                                      if k in what.attrs}, what.result.name)
                    else:
                        self.copies[key] = self.one("host.input", [what], {"name": what.name},
                                                    f"{what.name}.sram" if chip == 0 else f"{what.name}.sram@c{chip}")
                else:
                    src, source = self.nearest_copy(v, chip)
                    route = self.target.network.route(src, chip)
                    with self.on(src):
                        wire = self.one("c2c.send", [source], {"route": route}, f"{v.name}.to_c{chip}")
                    self.copies[key] = self.one("c2c.recv", [wire], {}, f"{v.name}@c{chip}")
                    self.sent.setdefault(v.name, []).append((chip, self.copies[key]))
        return self.copies[key]

    def nearest_copy(self, v: Value, chip: int) -> tuple[int, Value]:
        """(chip, value) to send `v` to `chip` from: its home, or a copy already sent to a chip fewer hops
        away (on a dragonfly, one in `chip`'s own node). A value broadcast over several nodes thus crosses
        each global link once, then fans out over the node's own links, instead of every chip's copy queuing
        on the same global link; a copy in a third node is not waited for (it lands later than a route
        straight from home, a hop longer)."""
        home = self.chip_of[v.name]
        topology = self.target.machine.topology
        node = topology.chips_per_node if topology.kind == "dragonfly" else 0
        best = (len(self.target.network.route(home, chip)), home, v)
        for c, copy in self.sent.get(v.name, ()):
            hops = len(self.target.network.route(c, chip))
            if hops < best[0] and (not node or c // node == chip // node):
                best = (hops, c, copy)
        return best[1], best[2]

    def placeholder(self, kind: str, what, ttype, hint: str) -> Value:
        v = Value(self.b.fresh(f"{hint}.lazy"), ttype)
        self.lazy[v.name] = (kind, what)
        return v

    def op(self, name: str, operands, attrs: Mapping | None = None, hints=()) -> tuple[Value, ...]:
        attrs = {**(attrs or {}), **({"chip": self.chip} if self.chip else {})}
        attrs = AttrDict({k: tuple(v) if isinstance(v, list) else v for k, v in attrs.items()})
        try:
            types = OPS[name].result_types([v.type for v in operands], attrs)
        except TypeRuleError as e:
            raise VerifyError(f"lowering to {name}: {e} "
                              f"(operands {', '.join(f'{v}: {v.type}' for v in operands)})") from None
        hints = tuple(hints) + (None,) * (len(types) - len(hints))
        results = tuple(Value(self.b.fresh(h), t) for h, t in zip(hints, types))
        self.b.ops.append(Op(name, tuple(operands), results, shared(attrs, self.attrs)))
        for r in results:
            self.chip_of[r.name] = self.chip
        return results

    def one(self, name: str, operands, attrs: Mapping | None = None, hint: str | None = None) -> Value:
        (r,) = self.op(name, operands, attrs, (hint,))
        return r

    def reshape(self, x: Value, shape, hint: str) -> Value:
        """A free view when rows and cols stay, an SXM copy otherwise: one per SXM unit, each on a run of the
        leading indices both shapes share (attention's tokens, split into heads or merged back), when it is
        large enough to cut."""
        shape = tuple(shape)
        if shape == x.type.shape:
            return x
        out = x.type.with_shape(shape)
        if rows_cols(out) == rows_cols(x.type):
            return self.one("mem.reshape_view", [x], {"shape": shape}, hint)
        lead = 0
        while lead < min(x.type.rank, len(shape)) - 1 and x.type.shape[lead] == shape[lead]:
            lead += 1
        runs = min(math.prod(shape[:lead]), self.target.machine.units["sxm"].count)
        if runs < 2 or max(words(x.type, self.lanes), words(out, self.lanes)) < 2 * runs * PIECE_WORDS:
            return self.one("sxm.reshape", [x], {"shape": shape}, hint)
        # each run's rows, in and out, follow on: its leading indices' rows (views), reshaped, joined by rows
        tokens, (rows_in, cols_in), (rows_out, cols_out) = math.prod(shape[:lead]), rows_cols(x.type), rows_cols(out)
        flat, parts = self.reshape(x, (rows_in, cols_in), f"{hint}.in"), []
        for k in range(runs):
            first, last = tokens * k // runs, tokens * (k + 1) // runs
            piece = self.one("mem.row_slice", [flat], {"start": first * rows_in // tokens,
                                                       "size": (last - first) * rows_in // tokens}, f"{hint}.in{k}")
            parts.append(self.one("sxm.reshape", [piece], {"shape": ((last - first) * rows_out // tokens, cols_out)},
                                  f"{hint}.part{k}"))
        return self.reshape(self.one("mem.row_join", parts, {}, f"{hint}.rows"), shape, hint)

    def constant(self, array: np.ndarray, dtype, hint: str) -> Value:
        return self.one("mem.constant", [], {"value": Tensor.from_array(np.asarray(array, dtype.numpy), dtype)}, hint)


Rule = Callable[[_Emitter, Op, list[Value]], tuple[Value, ...]]
RULES: dict[str, Rule] = {}


def _hint(op: Op, i: int = 0) -> str:
    return op.results[i].name


PIECE_WORDS = 256  # an elementwise VXM op on many vector columns is cut into column pieces of at least this many
                  # words: pieces run on several ALUs at once, and the next op of a chain starts on a piece as
                  # soon as it lands (the VXM's chaining, in whole instructions)


REDUCING = frozenset(f"graph.{n}" for n in REDUCTIONS)


def _along_last(op: Op) -> bool:
    """A reduction of the last axis alone, keeping it (each row its own result)."""
    rank = op.operands[0].type.rank
    return rank >= 2 and op.attrs.get("keepdims", True) and \
        tuple(sorted(a % rank for a in op.attrs["axes"])) == (rank - 1,)


def _two_runs_of_rows(op: Op) -> bool:
    """A sum over one axis of two, before the last, with nothing but ones before it: its two halves are runs
    of rows (int8's two parts of a matmul's sums, [2, rows, N])."""
    t, axes = op.operands[0].type, op.attrs["axes"]
    if len(axes) != 1 or t.rank < 2:
        return False
    a = axes[0] % t.rank
    return a < t.rank - 1 and t.shape[a] == 2 and math.prod(t.shape[:a]) == 1


def _sum_of_two(e: _Emitter, op: Op, x: Value) -> tuple[Value, ...]:
    """The sum of two runs of rows as an elementwise add of the two (row slices: free views), which runs in
    column pieces on several ALUs where one reduction would run on one; the same numbers (a + b)."""
    t, h = x.type, _hint(op)
    rows, cols = rows_cols(t)
    flat = e.reshape(x, (rows, cols), f"{h}.runs")
    halves = [e.one("mem.row_slice", [flat], {"start": k * rows // 2, "size": rows // 2}, f"{h}.run{k}")
              for k in range(2)]
    total = Value(f"{h}.pair", TensorType((rows // 2, cols), t.dtype))
    (y,) = RULES["graph.add"](e, Op("graph.add", tuple(halves), (total,), AttrDict()), halves)
    return (e.reshape(y, op.result.type.shape, h),)


def _same(unit: str, name: str) -> Rule:
    def rule(e: _Emitter, op: Op, args: list[Value]):
        if unit == "vxm" and op.name in ELEMENTWISE:
            def piece(e: _Emitter, operands: list[Value], k: int) -> tuple[Value, ...]:
                return (e.one(f"{unit}.{name}", operands, op.attrs, f"{_hint(op)}.rows{k}"),)

            pieces = _column_pieces(e, op, f"{unit}.{name}", args) or _row_pieces(e, op, args, piece)
            if pieces:
                return pieces
        if op.name == "graph.reduce_sum" and _two_runs_of_rows(op):
            return _sum_of_two(e, op, args[0])
        if unit == "vxm" and op.name in REDUCING and _along_last(op):  # rows apart: a reduction per run of rows
            def rows(e: _Emitter, operands: list[Value], k: int) -> tuple[Value, ...]:
                return (e.one(f"{unit}.{name}", operands, {**op.attrs, "axes": (-1,)}, f"{_hint(op)}.rows{k}"),)

            pieces = _row_pieces(e, op, args, rows)
            if pieces:
                return pieces
        return e.op(f"{unit}.{name}", args, op.attrs, [r.name for r in op.results])
    return rule


def _column_pieces(e: _Emitter, op: Op, machine_op: str, args: list[Value]) -> tuple[Value, ...] | None:
    """An elementwise op on a result of several vector columns and many words, as one instruction per run of
    columns (PIECE_WORDS words or more each): an operand spanning the columns read by its columns (a free view),
    one broadcast along them whole; the pieces joined (a free view). None: not worth cutting."""
    out, lanes = op.result.type, e.lanes
    if out.rank < 1 or len(op.results) != 1:
        return None
    n = out.shape[-1]
    tiles = -(-n // lanes)
    per_tile = words(out, lanes) // max(tiles, 1)
    step = max(1, -(-PIECE_WORDS // max(per_tile, 1)))  # column tiles per piece
    if tiles < 2 or step >= tiles or any(a.type.rank >= 1 and a.type.shape[-1] not in (1, n) for a in args):
        return None
    h, parts = _hint(op), []
    for k, first in enumerate(range(0, tiles, step)):
        start, size = first * lanes, min(n, (first + step) * lanes) - first * lanes
        operands = [a if a.type.rank < 1 or a.type.shape[-1] == 1 else
                    e.one("mem.column_slice", [a], {"start": start, "size": size}, f"{h}.in{k}") for a in args]
        parts.append(e.one(machine_op, operands, op.attrs, f"{h}.cols{k}"))
    return (e.one("mem.join", parts, {}, h),)


def _row_pieces(e: _Emitter, op: Op, args: list[Value], emit) -> tuple[Value, ...] | None:
    """An op that works row by row (elementwise, or along the last axis: a softmax, a norm, a reduction) on a
    result of many rows (attention's scores: heads x queries rows; a norm's tokens), as `emit(e, operands, k)`
    on each run of rows (PIECE_WORDS words or more): an operand of the result's rows read by its rows (free
    views), one the same for every row whole; the pieces joined (free views). Pieces run on several ALUs at
    once, and the next op of a chain starts on a piece as soon as it lands. None: not worth cutting, or an
    operand it cannot cut."""
    out, lanes = op.result.type, e.lanes
    if out.rank < 2 or len(op.results) != 1:
        return None
    rows, cols = rows_cols(out)
    h, lead, flat = _hint(op), out.shape[:-1], []
    for a in args:
        t = a.type
        last = t.shape[-1] if t.rank else 1
        if t.rank and t.shape[:-1] == lead:
            flat.append((a, True))
        elif t.numel == last and last in (1, cols):  # the same for every row
            flat.append((a, False))
        else:
            return None
    row_words = max([words(out, lanes)] + [words(a.type, lanes) for a, by_rows in flat if by_rows]) // max(rows, 1)
    step = -(-PIECE_WORDS // max(1, row_words))  # rows per piece
    if rows < 2 * step:
        return None
    flat = [(e.reshape(a, (rows, a.type.shape[-1]), f"{h}.in{i}") if by_rows else
             a if a.type.rank in (0, 2) else e.reshape(a, (1, a.type.shape[-1]), f"{h}.in{i}"), by_rows)
            for i, (a, by_rows) in enumerate(flat)]
    parts = []
    for k, start in enumerate(range(0, rows, step)):
        size = min(step, rows - start)
        operands = [e.one("mem.row_slice", [a], {"start": start, "size": size}, f"{h}.in{i}_{k}") if by_rows
                    else a for i, (a, by_rows) in enumerate(flat)]
        parts.append(emit(e, operands, k)[0])
    if len(lead) == 1:
        return (e.one("mem.row_join", parts, {}, h),)
    return (e.reshape(e.one("mem.row_join", parts, {}, f"{h}.rows"), out.shape, h),)


for _machine_op, _graph_op in mo.GRAPH_EQUIVALENT.items():
    RULES[_graph_op] = _same(*_machine_op.split(".", 1))


def _constant(e: _Emitter, op: Op, args):
    return (e.placeholder("constant", op.attrs["value"], op.result.type, _hint(op)),)


_STATE_KEYS = ("name", "shape", "dtype", "out")  # what mem.state keeps of graph.state (its chip: where it is emitted)


def _state(e: _Emitter, op: Op, args):
    return (e.placeholder("state", op, op.result.type, _hint(op)),)


def state_chip(op: Op, chips: int) -> int | None:
    """The chip a graph.state is fixed on (a partner program's layout), or None (its writer's)."""
    if "out" not in op.attrs:
        return None
    home = op.attrs.get("home", 0)
    if not 0 <= home < chips:
        raise LpucError(f"{op.label()}: kept on chip {home} (home), but the target has {chips} chips")
    return home


def _reshape(e: _Emitter, op: Op, args):
    return (e.reshape(args[0], op.attrs["shape"], _hint(op)),)  # to the same shape: the operand itself


def _softmax(e: _Emitter, op: Op, args):
    (x,) = args
    axis = op.attrs.get("axis", -1)

    def chain(e: _Emitter, operands: list[Value], k: int | None = None) -> tuple[Value, ...]:
        (x,), h = operands, _hint(op) + ("" if k is None else f".rows{k}")
        axes = (axis if k is None else -1,)
        m = e.one("vxm.reduce_max", [x], {"axes": axes, "keepdims": True}, f"{h}.max")
        d = e.one("vxm.sub", [x, m], {}, f"{h}.shifted")
        p = e.one("vxm.exp", [d], {}, f"{h}.exp")
        s = e.one("vxm.reduce_sum", [p], {"axes": axes, "keepdims": True}, f"{h}.sum")
        return (e.one("vxm.div", [p, s], {}, h),)

    if axis % x.type.rank == x.type.rank - 1:  # rows apart: a chain per run of rows
        pieces = _row_pieces(e, op, args, chain)
        if pieces:
            return pieces
    return chain(e, args)


def _norm_axes(op: Op, x: Value) -> tuple[int, ...]:
    axis = op.attrs.get("axis", -1) % x.type.rank
    return tuple(range(axis, x.type.rank))


def _eps(e: _Emitter, op: Op, x: Value) -> Value:
    return e.constant(np.asarray(op.attrs.get("epsilon", 1e-5)), x.type.dtype, f"{_hint(op)}.eps")


def _by_rows(e: _Emitter, op: Op, args: list[Value], chain) -> tuple[Value, ...]:
    """A norm: `chain(e, operands, k)` per run of rows when it normalizes the last axis alone (rows apart),
    else `chain(e, args, None)` on the whole."""
    x = args[0]
    if _norm_axes(op, x) == (x.type.rank - 1,):
        pieces = _row_pieces(e, op, args, chain)
        if pieces:
            return pieces
    return chain(e, args, None)


def _layer_norm(e: _Emitter, op: Op, args):
    # The reference's order of operations, so the numbers agree bit for bit.
    eps = _eps(e, op, args[0])

    def chain(e: _Emitter, operands: list[Value], k: int | None) -> tuple[Value, ...]:
        x, scale = operands[0], operands[1]
        h = _hint(op) + ("" if k is None else f".rows{k}")
        red = {"axes": _norm_axes(op, args[0]) if k is None else (-1,), "keepdims": True}
        mean = e.one("vxm.reduce_mean", [x], red, f"{h}.mean")
        d = e.one("vxm.sub", [x, mean], {}, f"{h}.centered")
        sq = e.one("vxm.mul", [d, d], {}, f"{h}.sq")
        var = e.one("vxm.reduce_mean", [sq], red, f"{h}.var")
        ve = e.one("vxm.add", [var, eps], {}, f"{h}.var_eps")
        sd = e.one("vxm.sqrt", [ve], {}, f"{h}.std")
        n = e.one("vxm.div", [d, sd], {}, f"{h}.normed")
        if len(operands) == 2:
            return (e.one("vxm.mul", [n, scale], {}, h),)
        y = e.one("vxm.mul", [n, scale], {}, f"{h}.scaled")
        return (e.one("vxm.add", [y, operands[2]], {}, h),)

    return _by_rows(e, op, args, chain)


def _rms_norm(e: _Emitter, op: Op, args):
    eps = _eps(e, op, args[0])

    def chain(e: _Emitter, operands: list[Value], k: int | None) -> tuple[Value, ...]:
        x, scale = operands
        h = _hint(op) + ("" if k is None else f".rows{k}")
        red = {"axes": _norm_axes(op, args[0]) if k is None else (-1,), "keepdims": True}
        sq = e.one("vxm.mul", [x, x], {}, f"{h}.sq")
        ms = e.one("vxm.reduce_mean", [sq], red, f"{h}.ms")
        me = e.one("vxm.add", [ms, eps], {}, f"{h}.ms_eps")
        rms = e.one("vxm.sqrt", [me], {}, f"{h}.rms")
        n = e.one("vxm.div", [x, rms], {}, f"{h}.normed")
        return (e.one("vxm.mul", [n, scale], {}, h),)

    return _by_rows(e, op, args, chain)


def _matmul(e: _Emitter, op: Op, args):
    a, b = args
    h = _hint(op)
    if e.split:
        return (_split_matmul(e, op, a, b),)
    out_shape = op.results[0].type.shape
    vector_operand = a.type.rank == 1 or b.type.rank == 1
    if a.type.rank == 1:
        a = e.reshape(a, (1,) + a.type.shape, f"{h}.a_row")
    if b.type.rank == 1:
        b = e.reshape(b, b.type.shape + (1,), f"{h}.b_col")
    (m, k), n = a.type.shape[-2:], b.type.shape[-1]
    if k == 0 or n == 0 or m == 0:
        raise LpucError(f"{op.label()}: matmul with an empty dimension ({a.type} @ {b.type}) is not supported")
    a_batch, b_batch = a.type.shape[:-2], b.type.shape[:-2]
    if int(np.prod(b_batch, dtype=np.int64)) == 1:
        b = e.reshape(b, (k, n), f"{h}.w2d")  # one weight for every row of A
    else:
        batch = broadcast_shapes(a_batch, b_batch)
        if a_batch != batch:
            a = e.one("sxm.expand", [a], {"shape": batch + (m, k)}, f"{h}.a_batched")
        if b_batch != batch:
            b = e.one("sxm.expand", [b], {"shape": batch + (k, n)}, f"{h}.b_batched")
        pieces = _batch_pieces(e, a, b, h, op.attrs.get("accumulate"))
        if pieces is not None:
            return (e.reshape(pieces, out_shape, h),)
    y = _tiles(e, a, b, f"{h}.mm" if vector_operand else h, h, op.attrs.get("accumulate"))
    return (e.reshape(y, out_shape, h),)


def _batch_pieces(e: _Emitter, a: Value, b: Value, h: str, accumulate=None) -> Value | None:
    """a [..., M, K] @ b [..., K, N] with equal batches of several (attention's heads), as one matmul per run of
    batches, as many runs as the chip has MXM planes: each installs and streams its own heads, and the planes
    work at once where one instruction would hold one plane for all. Each run's rows are a row slice (a free
    view) of a and of b; the results' rows follow on (`mem.row_join`). None: one batch, or N wider than a
    vector (a decode step's scores over its cache: left whole, as measured at scale; cutting them is untried)."""
    (m, k), n = a.type.shape[-2:], b.type.shape[-1]
    batches, planes = math.prod(a.type.shape[:-2]), e.target.machine.mxm.planes
    if batches < 2 or planes < 2 or n > e.lanes:
        return None
    a2, b2 = e.reshape(a, (batches * m, k), f"{h}.a_rows"), e.reshape(b, (batches * k, n), f"{h}.b_rows")
    runs = min(planes, batches)
    parts = []
    for r in range(runs):
        first, last = batches * r // runs, batches * (r + 1) // runs
        ar = e.reshape(e.one("mem.row_slice", [a2], {"start": first * m, "size": (last - first) * m}, f"{h}.a{r}"),
                       (last - first, m, k), f"{h}.a{r}_heads")
        br = e.reshape(e.one("mem.row_slice", [b2], {"start": first * k, "size": (last - first) * k}, f"{h}.b{r}"),
                       (last - first, k, n), f"{h}.b{r}_heads")
        y = _tiles(e, ar, br, f"{h}.heads{r}", f"{h}.heads{r}", accumulate)
        parts.append(e.reshape(y, ((last - first) * m, n), f"{h}.rows{r}"))
    return e.one("mem.row_join", parts, {}, f"{h}.rows")


def _tiles(e: _Emitter, a: Value, b: Value, final: str, h: str, accumulate=None) -> Value:
    """a [..., M, K] @ b [..., K, N] (equal batches, or b 2-D) on the current chip, in lanes x lanes MXM tiles,
    accumulating as graph.matmul's `accumulate` says."""
    (k, n), lanes = b.type.shape[-2:], e.lanes
    k_tiles = [(k0, min(lanes, k - k0)) for k0 in range(0, k, lanes)]
    n_tiles = [(n0, min(lanes, n - n0)) for n0 in range(0, n, lanes)]
    xs = [a if len(k_tiles) == 1 else
          e.one("mem.column_slice", [a], {"start": k0, "size": ks}, f"{h}.x{i}")
          for i, (k0, ks) in enumerate(k_tiles)]
    windowed = len(k_tiles) > 1 or len(n_tiles) > 1
    parts = []
    for j, (n0, ns) in enumerate(n_tiles):
        acc = None
        for i, (k0, ks) in enumerate(k_tiles):
            tile = e.one("mxm.install", [b], {"start": (k0, n0), "size": (ks, ns)} if windowed else {},
                         f"{h}.tile{i}_{j}")
            whole = i == len(k_tiles) - 1 and len(n_tiles) == 1
            acc = e.one("mxm.matmul", [xs[i], tile] + ([acc] if acc is not None else []),
                        {"accumulate": accumulate} if accumulate else {},
                        final if whole else f"{h}.p{i}_{j}")
        parts.append(acc)
    return parts[0] if len(parts) == 1 else e.one("mem.join", parts, {}, final)


def _groups(tiles: int, shares: tuple[tuple[int, int], ...]) -> list[tuple[int, range]]:
    """Contiguous tile ranges in proportion to each chip's share, as (chip, tile range); chips whose
    share rounds to no tile are left out."""
    total, out, start, seen = sum(w for _, w in shares), [], 0, 0
    for c, w in shares:
        seen += w
        stop = tiles * seen // total
        if stop > start:
            out.append((c, range(start, stop)))
            start = stop
    return out


def _cut(e: _Emitter, b: Value, rows: tuple[int, int], cols: tuple[int, int], hint: str) -> Value:
    """Rows and columns of a lazily emitted constant (viewed as 2-D), as a constant of the current chip."""
    kind, t = e.lazy[b.name]
    assert kind == "constant"
    n = t.type.shape[-1]
    (r0, r1), (c0, c1) = rows, cols
    loader = None if t.loader is None else \
        (lambda t=t: np.ascontiguousarray(t.array.reshape(-1, n)[r0:r1, c0:c1]))
    part = Tensor(TensorType((r1 - r0, c1 - c0), t.type.dtype), f"{t.key}[{r0}:{r1},{c0}:{c1}]", loader=loader)
    return e.one("mem.constant", [], {"value": part}, hint)


def _split_matmul(e: _Emitter, op: Op, a: Value, b: Value) -> Value:
    """a @ b spread over e.split: by heads, or b a constant cut into column tiles (the parts joined) or row
    tiles (the partial sums added), each chip holding only its cut of b."""
    if e.split.kind == "heads":
        return _split_batch(e, op, e.at(a), e.at(b))
    h, home, a = _hint(op), e.chip, e.at(a)
    (k, n), lanes, accumulate = b.type.shape[-2:], e.lanes, op.attrs.get("accumulate")
    parts = []
    if e.split.kind == "columns":
        for c, tiles in e.split.parts:
            cols = (tiles.start * lanes, min(n, tiles.stop * lanes))
            with e.on(c):
                w = _cut(e, b, (0, k), cols, f"{h}.w_c{c}")
                parts.append(e.at(_tiles(e, e.at(a), w, f"{h}.part_c{c}", f"{h}.c{c}", accumulate), home))
        y = e.one("mem.join", parts, {}, h) if len(parts) > 1 else parts[0]
    else:
        for c, tiles in e.split.parts:
            rows = (tiles.start * lanes, min(k, tiles.stop * lanes))
            x = a if rows == (0, k) else e.one("mem.column_slice", [a], {"start": rows[0], "size": rows[1] - rows[0]},
                                               f"{h}.x_c{c}")
            with e.on(c):
                w = _cut(e, b, rows, (0, n), f"{h}.w_c{c}")
                parts.append(e.at(_tiles(e, e.at(x), w, f"{h}.partial_c{c}", f"{h}.c{c}", accumulate), home))
        y = parts[0]
        for i, p in enumerate(parts[1:], 1):
            y = e.one("vxm.add", [y, p], {}, h if i == len(parts) - 1 else f"{h}.sum{i}")
    return e.reshape(y, op.results[0].type.shape, h)


def _split_batch(e: _Emitter, op: Op, a: Value, b: Value) -> Value:
    """A batched matmul of activations (attention: one batch element per head) spread over e.split by
    ranges of its first batch axis wider than one: each chip gets its heads' slices of a and b."""
    h, home = _hint(op), e.chip
    axis = next(i for i, d in enumerate(a.type.shape[:-2]) if d > 1)
    parts = []
    for c, heads in e.split.parts:
        cut = {"starts": (heads.start,), "ends": (heads.stop,), "axes": (axis,), "steps": (1,)}
        a_c = e.one("sxm.slice", [a], cut, f"{h}.a_c{c}")
        b_c = e.one("sxm.slice", [b], cut, f"{h}.b_c{c}")
        with e.on(c):
            parts.append(e.at(_tiles(e, e.at(a_c), e.at(b_c), f"{h}.part_c{c}", f"{h}.c{c}",
                                  op.attrs.get("accumulate")), home))
    return e.one("sxm.concat", parts, {"axis": axis}, h) if len(parts) > 1 else parts[0]


TRANSPOSE_ROWS = 2  # a transpose of many rows is cut into pieces of this many vector columns of its result


def _transpose(e: _Emitter, op: Op, args):
    """A transpose. One keeping the last axis only reorders whole rows: a free view (`mem.transpose_view`;
    attention's heads split from and merged into the hidden axis). One swapping the last two axes of many rows
    (a key cache: [..., slots, D]) runs in pieces of TRANSPOSE_ROWS vectors of rows each (row slices are free
    views, the pieces' results join as vector columns): the same SXM work, but no piece holds its unit and
    its slices' ports for long, so what the step waits on interleaves with it."""
    (x,), perm, h = args, tuple(op.attrs["perm"]), _hint(op)
    rank, piece = x.type.rank, TRANSPOSE_ROWS * e.lanes
    if perm[-1:] == (rank - 1,):  # rows reordered, each whole: the consumers read them in the new order
        return (e.one("mem.transpose_view", [x], {"perm": perm}, h),)
    if rank < 2 or perm != tuple(range(rank - 2)) + (rank - 1, rank - 2) or x.type.shape[-2] <= piece:
        return e.op("sxm.transpose", args, op.attrs, [h])
    rows, parts = x.type.shape[-2], []
    for k, start in enumerate(range(0, rows, piece)):
        size = min(piece, rows - start)
        rows_k = e.one("mem.row_slice", [x], {"start": start, "size": size}, f"{h}.rows{k}")
        parts.append(e.one("sxm.transpose", [rows_k], {"perm": perm}, f"{h}.part{k}"))
    return (e.one("mem.join", parts, {}, h),)


def _gather(e: _Emitter, op: Op, args):
    """A gather; from a constant table spread over e.split, by column tiles joined at home."""
    if not e.split:
        return e.op("mem.gather", args, op.attrs, [_hint(op)])
    table, idx = args
    h, home, idx = _hint(op), e.chip, e.at(idx)
    (rows, n), lanes = table.type.shape, e.lanes
    parts = []
    for c, tiles in e.split.parts:
        cols = (tiles.start * lanes, min(n, tiles.stop * lanes))
        with e.on(c):
            t = _cut(e, table, (0, rows), cols, f"{h}.table_c{c}")
            parts.append(e.at(e.one("mem.gather", [t, e.at(idx)], op.attrs, f"{h}.part_c{c}"), home))
    return (e.one("mem.join", parts, {}, h) if len(parts) > 1 else parts[0],)


def _concat(e: _Emitter, op: Op, args):
    """A concat along the rows of parts with nothing but ones before them (int8's two parts of an activation
    stacked for one pass through the MXM) is a free view: per vector column, each part's rows in turn
    (`mem.row_join`); any other an SXM copy."""
    out = op.result.type
    if out.rank >= 2 and op.attrs["axis"] % out.rank == out.rank - 2 and math.prod(out.shape[:-2]) == 1:
        h = _hint(op)
        parts = [e.reshape(a, a.type.shape[-2:], f"{h}.part{k}") for k, a in enumerate(args)]
        return (e.reshape(e.one("mem.row_join", parts, {}, f"{h}.rows"), out.shape, h),)
    return e.op("sxm.concat", args, op.attrs, [_hint(op)])


RULES.update({
    "graph.concat": _concat,
    "graph.constant": _constant,
    "graph.reshape": _reshape,
    "graph.softmax": _softmax,
    "graph.layer_norm": _layer_norm,
    "graph.rms_norm": _rms_norm,
    "graph.matmul": _matmul,
    "graph.gather": _gather,
    "graph.transpose": _transpose,
    "graph.state": _state,
    "graph.state_write": lambda e, op, args: e.op("mem.state_write", args, {}, [_hint(op)]),
})


# --- how a splittable rule cuts its op -----------------------------------------
# Each declares its tilings: the ways its rule can cut the op over chips, preferred first, each with how
# many tiles it makes. Partition asks (and writes its choice onto the op as `split`, `parts`, `shares`);
# lowering cuts by the same declaration, so the two cannot disagree.

# (graph op, names of constants, the machine's lanes) -> {split: tiles}
Tilings = Callable[[Op, Container[str], int], dict[str, int]]


def _matmul_tilings(op: Op, constants: Container[str], lanes: int) -> dict[str, int]:
    a, b = (v.type for v in op.operands)
    if op.operands[1].name in constants:
        # one constant weight for all of a's rows, viewed as 2-D: its vector-wide column tiles (the parts
        # joined) or its vector-tall row tiles (the partial sums added)
        if a.rank < 2 or b.rank < 2 or math.prod(b.shape[:-2]) != 1:
            return {}
        # (not rows for float accumulation: partial sums added apart are not the chip's one sum in k order)
        k, n = b.shape[-2:]
        rows = 0 if op.attrs.get("accumulate") is DType.f32 else -(-k // lanes)
        return {kind: tiles for kind, tiles in (("columns", -(-n // lanes)), ("rows", rows)) if tiles > 1}
    # attention: activations on both sides, equal batches of heads, cut along the first batch axis wider
    # than one (the parts concatenated)
    heads = [d for d in a.shape[:-2] if d > 1]
    return {"heads": heads[0]} if a.rank >= 3 and a.shape[:-2] == b.shape[:-2] and heads else {}


def _gather_tilings(op: Op, constants: Container[str], lanes: int) -> dict[str, int]:
    # rows of a constant 2-D table (axis 0), by its vector-wide column tiles (the parts joined)
    t = op.operands[0].type
    if op.operands[0].name in constants and t.rank == 2 and op.attrs.get("axis", 0) % 2 == 0 and t.shape[-1] > lanes:
        return {"columns": -(-t.shape[-1] // lanes)}
    return {}


TILINGS: dict[str, Tilings] = {"graph.matmul": _matmul_tilings, "graph.gather": _gather_tilings}


def tilings(op: Op, constants: Container[str], lanes: int) -> dict[str, int]:
    """The ways `op`'s lowering rule can split it over chips, preferred first, each with its tile count
    (none: it runs whole on one chip). `constants`: the names of the module's constants; `lanes`: the
    machine's vector width (a tile is one vector column)."""
    offer = TILINGS.get(op.name)
    return offer(op, constants, lanes) if offer else {}


def _split_of(op: Op, constants: Container[str], lanes: int) -> Split | None:
    """The split written on `op` (`split`, `parts`, `shares`), checked against its rule's tilings."""
    kind, parts, shares = (op.attrs.get(k) for k in ("split", "parts", "shares"))
    if kind is None:
        if parts is not None or shares is not None:
            raise VerifyError(f"{op.label()}: `parts` and `shares` describe a split; the op has no `split`")
        return None
    offered = tilings(op, constants, lanes)
    if kind not in offered:
        can = f"by {' or '.join(repr(k) for k in offered)} only" if offered else "not at all"
        if kind == "rows" and op.attrs.get("accumulate") is DType.f32:
            can += (" (its sums are f32: partial sums added apart would round otherwise than the one sum in k "
                    "order; compile it at --precision int8 or fp32)")
        raise VerifyError(f"{op.label()}: split = {kind!r}, but lowering splits this {op.name} {can}")
    shares = (1,) * len(parts or ()) if shares is None else shares
    if not parts or len(shares) != len(parts) or min(shares) < 1:
        raise VerifyError(f"{op.label()}: a split needs `parts` (the chip of each part) and, when given, one "
                          f"positive share per part (parts = {list(parts or ())}, shares = {list(shares)})")
    return Split(kind, tuple(_groups(offered[kind], tuple(zip(parts, shares)))))


def _without_placement(op: Op) -> Op:
    """`op` without its placement attributes (lowering has read them; the rules pass the rest on)."""
    if not any(k in op.attrs for k in PLACEMENT_ATTRS):
        return op
    return Op(op.name, op.operands, op.results, AttrDict({k: v for k, v in op.attrs.items() if k not in PLACEMENT_ATTRS}))


@dataclass(frozen=True)
class Lower(Pass):
    """Graph module -> machine module, on the chips of the partition written on it (without one, on one chip)."""

    name = "lower"

    def plan(self, module: Module, target: Target, progress=None) -> "Lowering":
        origins: list[int] = []
        return Lowering(lower(module, target, origins), tuple(origins))

    def apply(self, module: Module, target: Target, plan: "Lowering") -> Module:
        return plan.module


@dataclass(frozen=True)
class Lowering:
    """The lowered module, and per machine op the index of the graph op whose rule emitted it (-1: the
    outputs' host.output) -- what maps the graph's repeated layers onto machine ops (compiler.templates)."""

    module: Module
    origins: tuple[int, ...]


def lower(module: Module, target: Target, origins: list[int] | None = None) -> Module:
    """Lower for `target` on the chips of the partition written on `module` (module attribute `chips`, op
    attributes `chip`, `split`, `parts`, `shares`; without them, on one chip). `origins`, when given, is
    extended with each machine op's graph op index (Lowering.origins)."""
    chips = module.attrs.get("chips", 1)
    if chips != target.chips:
        raise LpucError(f"{module.name} is partitioned over {chips} chips (module attribute chips), the target "
                        f"has {target.chips}")
    e = _Emitter(target)
    constants = {op.result.name for op in module.ops if op.name == "graph.constant"}
    env: dict[str, Value] = {}
    for v in module.inputs:
        block_input = Value(v.name, v.type)  # inputs keep their names: they bind the caller's arrays
        e.b.inputs.append(block_input)
        e.b._taken.add(v.name)
        env[v.name] = e.placeholder("input", block_input, v.type, v.name)
    fixed = {op.result.name: state_chip(op, target.chips) for op in module.ops if OPS[op.name].persistent}
    writer = {op.operands[0].name: op.attrs.get("chip", 0) for op in module.ops if OPS[op.name].in_place}
    homes = {name: writer.get(name, 0) if chip is None else chip for name, chip in fixed.items()}
    for k, op in enumerate(module.ops):
        if op.name.split(".", 1)[0] != "graph":
            raise VerifyError(f"{op.label()}: lowering takes a graph-level module, found {op.name}")
        rule = RULES.get(op.name)
        if rule is None:
            raise LpucError(f"{op.label()}: no lowering rule for {op.name}")
        split = _split_of(op, constants, target.lanes)
        chip = op.attrs.get("chip", 0)
        if OPS[op.name].in_place and fixed.get(op.operands[0].name) is not None:
            chip = fixed[op.operands[0].name]  # a state write runs where its state is kept
        with e.on(chip):
            e.split = split
            # a split op's rule brings its operands over itself: a cut weight stays lazy, each chip of the
            # split emitting its own cut
            args = [env[v.name] if split else e.at(env[v.name]) for v in op.operands]
            results = rule(e, _without_placement(op), args)
            e.split = None
        if origins is not None:
            origins.extend([k] * (len(e.b.ops) - len(origins)))
        for r, lowered in zip(op.results, results, strict=True):
            if lowered.type != r.type:
                raise AssertionError(f"{op.label()}: lowered to {lowered.type}, expected {r.type}")
            env[r.name] = lowered
        if OPS[op.name].persistent:
            e.state_home[env[op.result.name].name] = homes[op.result.name]
    for out_name, v in module.outputs:
        value = env[v.name]
        with e.on(e.chip_of.get(value.name, 0)):
            value = e.at(value)  # an output that is a constant or an input: on chip 0
            e.b.outputs.append((out_name, e.one("host.output", [value], {"name": out_name}, f"{out_name}.host")))
    if origins is not None:
        origins.extend([-1] * (len(e.b.ops) - len(origins)))
    attrs = {**dict(module.attrs), "machine": target.machine.name, **({"chips": chips} if chips > 1 else {})}
    return e.b.build(module.name, **attrs)


# --- the machine-level reference evaluator -----------------------------------

def evaluate_machine(module: Module, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a machine-level module, untimed: every instruction's numpy semantics."""
    env = check_inputs(module, inputs)
    for op in module.ops:
        args = [env[v.name] for v in op.operands]
        try:
            with np.errstate(all="ignore"):
                outs = mo.compute(op, args)
        except EvalError:
            raise
        except Exception as ex:
            raise EvalError(f"{op.label()}: {type(ex).__name__}: {ex}") from ex
        for r, value in zip(op.results, outs, strict=True):
            env[r.name] = conform(op, value, r.type)
    return {name: env[v.name] for name, v in module.outputs}


__all__ = ["Lower", "Lowering", "RULES", "TILINGS", "Split", "evaluate_machine", "lower", "tilings"]
