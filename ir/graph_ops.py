"""The `graph` dialect: tensor-level ops, as the ONNX frontend produces them.

All shapes are static; whatever ONNX passes as a shape tensor (Reshape's shape,
Slice's starts, ...) is an attribute here. Semantics follow numpy / ONNX; the
reference evaluator (evaluator.py) is the executable definition.
"""

from __future__ import annotations

from .registry import AttrSpec, TypeRuleError
from .registry import defop as _defop
from .types import DType, TensorType

A = AttrSpec

# Where an op runs, written by the partition pass (compiler/partition.py, docs/partition.md); absent
# before it and on one chip. Every graph op but graph.constant takes them: a constant is copied onto the
# chip of each op that reads it.
PLACEMENT_ATTRS = {
    "chip": A("chip", None),     # the chip it runs on; a split op: where its parts meet (absent: chip 0)
    "split": A("str", None),     # a split op: what its lowering rule cuts (compiler/lower.py, TILINGS)
    "parts": A("chips", None),   # ... the chip of each part, in tile order
    "shares": A("ints", None),   # ... each part's share of the tiles (absent: equal shares)
    "group": A("int", None),     # a head group's op (compiler/split_heads.py): a layout runs it on its stage's
}                                # chip of this index


def defop(name: str, operands, attrs=None, **kwargs):
    """registry.defop for a graph op: its own attributes plus the placement ones."""
    return _defop(name, operands, {**(attrs or {}), **PLACEMENT_ATTRS}, **kwargs)



# --- shared type rules -------------------------------------------------------

def broadcast_shapes(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    rank = max(len(s) for s in shapes)
    out = []
    for dims in zip(*[(1,) * (rank - len(s)) + tuple(s) for s in shapes]):
        big = {d for d in dims if d != 1}
        if len(big) > 1:
            raise TypeRuleError(f"shapes {' and '.join(map(str, shapes))} do not broadcast")
        out.append(big.pop() if big else 1)
    return tuple(out)


def same_dtype(types, what="operands"):
    dtypes = {t.dtype for t in types}
    if len(dtypes) > 1:
        raise TypeRuleError(f"{what} must share one dtype, got {', '.join(str(t) for t in types)}")
    return types[0].dtype


def need(cond: bool, message: str):
    if not cond:
        raise TypeRuleError(message)


def norm_axis(axis: int, rank: int, what="axis") -> int:
    need(-rank <= axis < rank, f"{what} {axis} out of range for rank {rank}")
    return axis % rank


def need_float(t: TensorType):
    need(t.dtype.is_float, f"expected a float tensor, got {t}")


def need_int(t: TensorType, what="indices"):
    need(t.dtype in (DType.i32, DType.i64), f"{what} must be i32 or i64, got {t}")


# --- elementwise -------------------------------------------------------------

ARITHMETIC = ("add", "sub", "mul", "div", "pow", "max", "min", "mod")
COMPARISON = ("equal", "less", "less_equal", "greater", "greater_equal")
LOGICAL = ("and", "or", "xor")
FLOAT_UNARY = ("exp", "log", "sqrt", "reciprocal", "tanh", "sigmoid", "erf", "cos", "sin")
NUMERIC_UNARY = ("neg", "abs", "relu")


def _arith(types, attrs):
    return TensorType(broadcast_shapes(*(t.shape for t in types)), same_dtype(types))


def _compare(types, attrs):
    same_dtype(types)
    return TensorType(broadcast_shapes(*(t.shape for t in types)), DType.bool)


def _logical(types, attrs):
    need(all(t.dtype is DType.bool for t in types), "operands must be bool")
    return TensorType(broadcast_shapes(*(t.shape for t in types)), DType.bool)


def _float_unary(types, attrs):
    need_float(types[0])
    return types[0]


def _numeric_unary(types, attrs):
    need(types[0].dtype is not DType.bool, f"expected a numeric tensor, got {types[0]}")
    return types[0]


for _name in ARITHMETIC:
    defop(f"graph.{_name}", 2, doc=f"elementwise {_name} with numpy broadcasting", unit="vxm", mirror=True,
          transcendental=_name in ("div", "pow"))(_arith)  # they take the transcendental pipeline
for _name in COMPARISON:
    defop(f"graph.{_name}", 2, doc=f"elementwise {_name}, bool result", unit="vxm", mirror=True)(_compare)
for _name in LOGICAL:
    defop(f"graph.{_name}", 2, doc=f"elementwise logical {_name}", unit="vxm", mirror=True)(_logical)
for _name in FLOAT_UNARY:
    defop(f"graph.{_name}", 1, doc=f"elementwise {_name}", unit="vxm", mirror=True, transcendental=True)(_float_unary)
for _name in NUMERIC_UNARY:
    defop(f"graph.{_name}", 1, doc=f"elementwise {_name}", unit="vxm", mirror=True)(_numeric_unary)


@defop("graph.not", 1, doc="elementwise logical not", unit="vxm", mirror=True)
def _not(types, attrs):
    return _logical(types, attrs)


@defop("graph.isnan", 1, doc="elementwise test for NaN", unit="vxm", mirror=True)
def _isnan(types, attrs):
    need_float(types[0])
    return types[0].with_dtype(DType.bool)


@defop("graph.round", 1, doc="round to the nearest integer, ties to even (ONNX Round)", unit="vxm", mirror=True)
def _round(types, attrs):
    return _float_unary(types, attrs)


@defop("graph.gelu", 1, {"approximate": A("str", "none")}, doc="GELU, exact (erf) or tanh approximation",
       unit="vxm", mirror=True, transcendental=True)
def _gelu(types, attrs):
    need(attrs["approximate"] in ("none", "tanh"), "approximate must be 'none' or 'tanh'")
    return _float_unary(types, attrs)


@defop("graph.where", 3, doc="select a where cond else b, broadcasting", operand_names=("cond", "a", "b"),
       unit="vxm", mirror=True)
def _where(types, attrs):
    cond, a, b = types
    need(cond.dtype is DType.bool, f"condition must be bool, got {cond}")
    return TensorType(broadcast_shapes(cond.shape, a.shape, b.shape), same_dtype((a, b)))


@defop("graph.cast", 1, {"to": A("dtype"), "saturate": A("bool", True), "round_mode": A("str", "up")},
       doc="convert the element type (ONNX Cast: `saturate` for float8 targets, `round_mode` for f8e8m0)",
       unit="vxm", mirror=True)
def _cast(types, attrs):
    need(attrs["round_mode"] in ("up", "down", "nearest"), "round_mode must be 'up', 'down' or 'nearest'")
    return types[0].with_dtype(attrs["to"])


@_defop("graph.constant", 0, {"value": A("tensor")}, doc="a constant tensor")
def _constant(types, attrs):
    return attrs["value"].type


# --- linear algebra, reductions, normalizations ------------------------------

# Matmul accumulation types (`accumulate`; absent: numpy's matmul in the operands' own type, the fp32
# reference path): the MXM's integer path (8-bit integer operands, int32 sums) and float path (operands of at
# most 16 bits, whose products f32 holds exactly; f32 sums). ir.evaluator.matmul defines both.
INT_OPERANDS = frozenset({DType.i8, DType.u8})
FLOAT_OPERANDS = frozenset(d for d in DType if d.is_float and d.itemsize <= 2 and d is not DType.f8e8m0)
ACCUMULATE = {DType.i32: INT_OPERANDS, DType.f32: FLOAT_OPERANDS}


@defop("graph.matmul", 2, {"accumulate": A("dtype", None)},
       doc="numpy matmul: batch dims broadcast; with `accumulate` (i32, f32), the MXM's accumulation", unit="mxm")
def _matmul(types, attrs):
    a, b = types
    acc = attrs.get("accumulate")
    if acc is None:
        dtype = same_dtype(types)
    else:
        # (messages only on failure: the MXM tiles of a large model check this rule thousands of times)
        if acc not in ACCUMULATE:
            raise TypeRuleError(f"accumulate must be one of {', '.join(d.value for d in ACCUMULATE)}, got {acc.value}")
        if a.dtype not in ACCUMULATE[acc] or b.dtype not in ACCUMULATE[acc]:
            raise TypeRuleError(f"accumulate = {acc.value} takes operands of "
                                f"{', '.join(sorted(d.value for d in ACCUMULATE[acc]))}, "
                                f"got {a.dtype.value} and {b.dtype.value}")
        dtype = acc
    need(a.rank >= 1 and b.rank >= 1, "matmul operands must have rank >= 1")
    sa = a.shape if a.rank > 1 else (1,) + a.shape
    sb = b.shape if b.rank > 1 else b.shape + (1,)
    if sa[-1] != sb[-2]:
        raise TypeRuleError(f"contraction dims differ: {a} @ {b}")
    shape = broadcast_shapes(sa[:-2], sb[:-2]) + (sa[-2], sb[-1])
    if a.rank == 1:
        shape = shape[:-2] + shape[-1:]
    if b.rank == 1:
        shape = shape[:-1]
    return TensorType(shape, dtype)


REDUCTIONS = ("reduce_sum", "reduce_mean", "reduce_max", "reduce_min")
# the ops computing each element of their result from the same element of each operand (numpy broadcasting)
ELEMENTWISE = frozenset(f"graph.{n}" for n in (*ARITHMETIC, *COMPARISON, *LOGICAL, *FLOAT_UNARY, *NUMERIC_UNARY,
                                               "not", "isnan", "round", "gelu", "where", "cast"))


def _reduce(types, attrs):
    (t,) = types
    axes = {norm_axis(a, t.rank) for a in attrs["axes"]}
    need(len(axes) == len(attrs["axes"]), f"repeated axis in {attrs['axes']}")
    if attrs["keepdims"]:
        return t.with_shape(1 if i in axes else d for i, d in enumerate(t.shape))
    return t.with_shape(d for i, d in enumerate(t.shape) if i not in axes)


for _name in REDUCTIONS:
    defop(f"graph.{_name}", 1, {"axes": A("ints"), "keepdims": A("bool", True)},
          doc=f"{_name[7:]} over `axes`", unit="vxm", mirror=True)(_reduce)


@defop("graph.softmax", 1, {"axis": A("int", -1)}, doc="softmax along `axis`", unit="vxm")
def _softmax(types, attrs):
    need_float(types[0])
    norm_axis(attrs["axis"], types[0].rank)
    return types[0]


def _norm(types, attrs):
    x = types[0]
    need_float(x)
    axis = norm_axis(attrs["axis"], x.rank)
    same_dtype(types)
    for t in types[1:]:
        need(broadcast_shapes(x.shape[axis:], t.shape) == x.shape[axis:],
             f"scale/bias {t} does not broadcast to the normalized dims {x.shape[axis:]}")
    return x


defop("graph.layer_norm", (2, 3), {"axis": A("int", -1), "epsilon": A("float", 1e-5)},
      doc="(x - mean) / sqrt(var + eps) * scale + bias over dims axis..", operand_names=("x", "scale", "bias"),
      unit="vxm")(_norm)
defop("graph.rms_norm", 2, {"axis": A("int", -1), "epsilon": A("float", 1e-5)},
      doc="x / sqrt(mean(x^2) + eps) * scale over dims axis..", operand_names=("x", "scale"), unit="vxm")(_norm)


@defop("graph.cumsum", 1, {"axis": A("int"), "exclusive": A("bool", False), "reverse": A("bool", False)},
       doc="cumulative sum along `axis`", unit="vxm", mirror=True)
def _cumsum(types, attrs):
    norm_axis(attrs["axis"], types[0].rank)
    return types[0]


@defop("graph.topk", 1, {"k": A("int"), "axis": A("int", -1), "largest": A("bool", True), "sorted": A("bool", True)},
       doc="the k largest (smallest) values along `axis` and their i64 indices", unit="vxm", mirror=True)
def _topk(types, attrs):
    (t,) = types
    axis = norm_axis(attrs["axis"], t.rank)
    need(0 <= attrs["k"] <= t.shape[axis], f"k={attrs['k']} exceeds dim {t.shape[axis]}")
    shape = list(t.shape)
    shape[axis] = attrs["k"]
    return t.with_shape(shape), TensorType(tuple(shape), DType.i64)


@defop("graph.trilu", 1, {"upper": A("bool", True), "k": A("int", 0)},
       doc="keep the upper (lower) triangle of the last two dims, from diagonal k", unit="vxm", mirror=True)
def _trilu(types, attrs):
    need(types[0].rank >= 2, "trilu needs rank >= 2")
    return types[0]


# --- shapes and data movement ------------------------------------------------

@defop("graph.reshape", 1, {"shape": A("ints")}, doc="same elements, new static shape", unit="sxm", mirror=True)
def _reshape(types, attrs):
    t, shape = types[0], attrs["shape"]
    need(all(d >= 0 for d in shape), f"reshape target {list(shape)} must be static and non-negative")
    out = t.with_shape(shape)
    need(out.numel == t.numel, f"cannot reshape {t} to {list(shape)}")
    return out


@defop("graph.transpose", 1, {"perm": A("ints")}, doc="permute dims", unit="sxm", mirror=True)
def _transpose(types, attrs):
    t, perm = types[0], attrs["perm"]
    need(sorted(perm) == list(range(t.rank)), f"perm {list(perm)} is not a permutation of rank {t.rank}")
    return t.with_shape(t.shape[p] for p in perm)


@defop("graph.expand", 1, {"shape": A("ints")}, doc="broadcast to `shape`", unit="sxm", mirror=True)
def _expand(types, attrs):
    t, shape = types[0], tuple(attrs["shape"])
    need(broadcast_shapes(t.shape, shape) == shape, f"{t} does not broadcast to {list(shape)}")
    return t.with_shape(shape)


@defop("graph.tile", 1, {"repeats": A("ints")}, doc="repeat along each dim", unit="sxm", mirror=True)
def _tile(types, attrs):
    t, reps = types[0], attrs["repeats"]
    need(len(reps) == t.rank and all(r >= 0 for r in reps), f"repeats {list(reps)} do not fit {t}")
    return t.with_shape(d * r for d, r in zip(t.shape, reps))


@defop("graph.concat", (1, None), {"axis": A("int")}, doc="join along `axis`", unit="sxm", mirror=True)
def _concat(types, attrs):
    dtype = same_dtype(types)
    rank = types[0].rank
    need(all(t.rank == rank for t in types), "concat operands must share a rank")
    axis = norm_axis(attrs["axis"], rank)
    for t in types:
        need(t.shape[:axis] + t.shape[axis + 1:] == types[0].shape[:axis] + types[0].shape[axis + 1:],
             f"concat operands differ outside axis {axis}: {types[0]} and {t}")
    shape = list(types[0].shape)
    shape[axis] = sum(t.shape[axis] for t in types)
    return TensorType(tuple(shape), dtype)


@defop("graph.split", 1, {"axis": A("int"), "sizes": A("ints")}, doc="cut along `axis` into pieces of `sizes`", unit="sxm", mirror=True)
def _split(types, attrs):
    t = types[0]
    axis = norm_axis(attrs["axis"], t.rank)
    need(len(attrs["sizes"]) >= 1 and sum(attrs["sizes"]) == t.shape[axis] and min(attrs["sizes"]) >= 0,
         f"sizes {list(attrs['sizes'])} do not add up to dim {t.shape[axis]}")
    return tuple(t.with_shape(t.shape[:axis] + (s,) + t.shape[axis + 1:]) for s in attrs["sizes"])


@defop("graph.slice", 1, {"starts": A("ints"), "ends": A("ints"), "axes": A("ints"), "steps": A("ints")},
       doc="numpy basic slicing x[start:end:step] on each of `axes`", unit="sxm", mirror=True)
def _slice(types, attrs):
    t = types[0]
    n = len(attrs["axes"])
    need(len(attrs["starts"]) == len(attrs["ends"]) == len(attrs["steps"]) == n,
         "starts, ends, axes and steps must have one entry per sliced axis")
    shape = list(t.shape)
    seen = set()
    for start, end, axis, step in zip(attrs["starts"], attrs["ends"], attrs["axes"], attrs["steps"]):
        axis = norm_axis(axis, t.rank)
        need(axis not in seen, f"axis {axis} sliced twice")
        need(step != 0, "slice step must not be 0")
        seen.add(axis)
        shape[axis] = len(range(*slice(start, end, step).indices(t.shape[axis])))
    return t.with_shape(shape)


@defop("graph.gather", 2, {"axis": A("int", 0)}, doc="take slices of data along `axis` at indices",
       operand_names=("data", "indices"), unit="mem", mirror=True, indexed=True)
def _gather(types, attrs):
    data, idx = types
    need_int(idx)
    axis = norm_axis(attrs["axis"], data.rank)
    return data.with_shape(data.shape[:axis] + idx.shape + data.shape[axis + 1:])


@defop("graph.gather_elements", 2, {"axis": A("int", 0)}, doc="data[..., indices[i,j,k], ...] elementwise",
       operand_names=("data", "indices"), unit="mem", mirror=True, indexed=True)
def _gather_elements(types, attrs):
    data, idx = types
    need_int(idx)
    axis = norm_axis(attrs["axis"], data.rank)
    need(idx.rank == data.rank, f"indices {idx} must have the rank of data {data}")
    need(all(i <= d for n, (i, d) in enumerate(zip(idx.shape, data.shape)) if n != axis),
         f"indices {idx} exceed data {data} outside axis {axis}")
    return data.with_shape(idx.shape)


@defop("graph.gather_nd", 2, {"batch_dims": A("int", 0)}, doc="ONNX GatherND", operand_names=("data", "indices"),
       unit="mem", mirror=True, indexed=True)
def _gather_nd(types, attrs):
    data, idx = types
    need_int(idx)
    b = attrs["batch_dims"]
    need(idx.rank >= 1 and 0 <= b < min(data.rank, idx.rank), f"batch_dims {b} does not fit {data}, {idx}")
    need(data.shape[:b] == idx.shape[:b], "batch dims of data and indices differ")
    last = idx.shape[-1]
    need(b + last <= data.rank, f"index depth {last} exceeds rank of {data}")
    return data.with_shape(idx.shape[:-1] + data.shape[b + last:])


# --- persistent state (a KV cache resident across decode steps) ----------------

STATE_ATTRS = {"name": A("str"), "shape": A("ints"), "dtype": A("dtype")}


# `out` (and `home`, its chip; absent: 0), when given, fix where it lives: a partner program's layout (prefill and
# decode share their cache), on the chips the module will be partitioned over; without them lowering puts it on
# its writer's chip and allocation places it.
@_defop("graph.state", 0, {**STATE_ATTRS, "home": A("int", None), "out": A("extents", None)}, persistent=True,
        doc="declares the persistent buffer `name` of type dtype[shape]: it lives across runs of the program "
            "(a resident KV cache), its rows written by graph.state_write")
def state_type(types, attrs):
    need(all(d >= 1 for d in attrs["shape"]), f"a state has a static, non-empty shape: {list(attrs['shape'])}")
    return TensorType(tuple(attrs["shape"]), attrs["dtype"])


def state_write_type(types, attrs):
    """The rule of a state write: rows [p, p + n) of the second-to-last axis of `state` take `new`."""
    state, new, pos = types
    need(state.rank >= 2, f"a state has rows (rank >= 2): {state}")
    need(new.dtype == state.dtype and new.rank == state.rank and new.shape[:-2] == state.shape[:-2]
         and new.shape[-1] == state.shape[-1] and 1 <= new.shape[-2] <= state.shape[-2],
         f"{new} is not rows of the state {state}")
    need_int(pos, "a position")
    need(pos.numel >= 1, f"a position needs an element: {pos}")
    return state


defop("graph.state_write", 3, operand_names=("state", "new", "position"), unit="mem", in_place=True,
      doc="write `new`'s rows into the state at rows position.flat[0] .. + rows (second-to-last axis); "
          "the result is the state after the write")(state_write_type)
