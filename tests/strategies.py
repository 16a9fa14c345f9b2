"""Hypothesis strategies for random *valid* graph modules.

`modules()` builds a module through `ir.builder.Builder` (so the registry infers
every result type): a few inputs, then ops drawn from `GENERATORS`, each picking
operands of a fitting type from the values built so far (or making a new input or
constant), with random shapes, attributes and value names; then outputs with
random names, and random module attributes. Every generated module passes the
verifier; a generator that builds an invalid op is a bug here. `GENERATORS` has
an entry per graph op (tests/test_ir_registry.py checks that it covers the registry).
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from lpuc.ir import DType, Tensor, TensorType, Value
from lpuc.ir.builder import Builder

FLOATS = (DType.f64, DType.f32, DType.f16, DType.bf16,
          DType.f8e4m3fn, DType.f8e4m3fnuz, DType.f8e5m2, DType.f8e5m2fnuz, DType.f8e8m0, DType.f4e2m1)
INTS = (DType.i8, DType.i16, DType.i32, DType.i64, DType.u8, DType.u16, DType.u32, DType.u64,
        DType.i4, DType.u4, DType.i2, DType.u2)
NUMERIC = FLOATS + INTS
ALL = NUMERIC + (DType.bool,)
INDEX = (DType.i32, DType.i64)

NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:/-"
# attribute names, including words that are keywords or dtypes elsewhere in the grammar (not `chips`,
# which the verifier checks: a module's chip count)
ATTR_NAMES = ("machine", "seed", "note", "scale", "shape", "flags", "dtype", "weights", "nested",
              "input", "output", "true", "false", "tensor", "module", "attributes", "f32", "bool", "_x", "a1")

# element values worth having in constants, beside random ones
SPECIAL_FLOATS = (0.0, -0.0, 1.0, -1.5, 0.1, 1e-7, 3.4e38, float("inf"), float("-inf"), float("nan"))


# --- small pieces ------------------------------------------------------------

dims = st.integers(0, 12).map(lambda i: (0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 7)[i])  # 0 now and then
shapes = st.lists(dims, min_size=0, max_size=4).map(tuple)
nonscalar_shapes = st.lists(dims, min_size=1, max_size=4).map(tuple)
value_names = st.none() | st.text(NAME_CHARS, min_size=1, max_size=10)


def types(dtypes=ALL, shape=shapes):
    return st.builds(TensorType, shape, st.sampled_from(dtypes))


def random_array(draw, ttype: TensorType) -> np.ndarray:
    """Data for a constant of `ttype`: random values plus special ones, deterministic per draw."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n, dtype = ttype.numel, ttype.dtype
    if dtype is DType.bool:
        flat = rng.integers(0, 2, n).astype(bool)
    elif dtype.is_int:
        info = dtype.iinfo
        wide = np.int64 if info.min < 0 or not dtype.is_narrow else np.uint64  # rng.integers knows numpy's types
        flat = rng.integers(info.min, info.max, n, dtype=wide if dtype.is_narrow else dtype.numpy, endpoint=True)
        flat = flat.astype(dtype.numpy)
    else:
        with np.errstate(over="ignore", invalid="ignore"):  # 3.4e38 is inf in f16, NaN in f8e4m3fn
            flat = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4, n)).astype(
                np.float32 if dtype is DType.bf16 else dtype.numpy)
            for i in range(n):
                if draw(st.integers(0, 7)) == 0:
                    flat[i] = draw(st.sampled_from(SPECIAL_FLOATS))
            # NaN prints as `nan`, so the sign and payload of a NaN do not round-trip (in any float
            # type); narrow types make NaNs of either sign on overflow: keep the one `nan` parses to
            flat[np.isnan(flat)] = np.nan
    return flat.reshape(ttype.shape)


def new_leaf(draw, b: Builder, pool: list[Value], ttype: TensorType, constant: bool = False) -> Value:
    """A new value of `ttype`: an input, or a constant (inline or by reference)."""
    if not constant and draw(st.integers(0, 2)) == 0:
        v = b.input(draw(value_names) or "in", ttype)
    else:
        v = b.constant(random_array(draw, ttype), ttype.dtype, name=draw(value_names))
    pool.append(v)
    return v


def pick(draw, b: Builder, pool: list[Value], ok, make: st.SearchStrategy[TensorType]) -> Value:
    """A value from the pool whose type passes `ok`, or a new one of a type from `make`."""
    candidates = [v for v in pool if ok(v.type)]
    if candidates and draw(st.integers(0, 3)) > 0:
        return draw(st.sampled_from(candidates))
    return new_leaf(draw, b, pool, draw(make.filter(ok)))


def of_type(draw, b: Builder, pool: list[Value], ttype: TensorType) -> Value:
    """A value of exactly `ttype`: from the pool or new."""
    return pick(draw, b, pool, lambda t: t == ttype, st.just(ttype))


def broadcastable_to(draw, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape that broadcasts with `shape` to `shape`: a suffix, some dims set to 1."""
    keep = draw(st.integers(0, len(shape)))
    return tuple(1 if draw(st.booleans()) else d for d in shape[len(shape) - keep:])


def axis_of(draw, rank: int) -> int:
    return draw(st.integers(-rank, rank - 1))


def emit(draw, b: Builder, pool: list[Value], name: str, *operands: Value, results: int = 1, **attrs):
    out = b.op(name, *operands, names=tuple(draw(value_names) for _ in range(results)), **attrs)
    pool.extend(out if isinstance(out, tuple) else (out,))


# --- one generator per kind of op ---------------------------------------------

# Each generator builds one op named `name` (graph.add, ...), and takes care of the
# ops in its `.ops`.

def gen_binary(draw, b, pool, name):
    if name in ("graph.and", "graph.or", "graph.xor"):
        a = pick(draw, b, pool, lambda t: t.dtype is DType.bool, types((DType.bool,)))
    else:
        a = pick(draw, b, pool, lambda t: t.dtype is not DType.bool, types(NUMERIC))
    other = of_type(draw, b, pool, TensorType(broadcastable_to(draw, a.type.shape), a.type.dtype))
    emit(draw, b, pool, name, *((a, other) if draw(st.booleans()) else (other, a)))


def gen_unary(draw, b, pool, name):
    if name in ("graph.neg", "graph.abs", "graph.relu"):
        x = pick(draw, b, pool, lambda t: t.dtype is not DType.bool, types(NUMERIC))
    elif name == "graph.not":
        x = pick(draw, b, pool, lambda t: t.dtype is DType.bool, types((DType.bool,)))
    else:
        x = pick(draw, b, pool, lambda t: t.dtype.is_float, types(FLOATS))
    if name == "graph.gelu" and draw(st.booleans()):
        emit(draw, b, pool, name, x, approximate=draw(st.sampled_from(["none", "tanh"])))
    else:
        emit(draw, b, pool, name, x)


def gen_where(draw, b, pool, name):
    a = pick(draw, b, pool, lambda t: True, types())
    other = of_type(draw, b, pool, TensorType(broadcastable_to(draw, a.type.shape), a.type.dtype))
    cond = of_type(draw, b, pool, TensorType(broadcastable_to(draw, a.type.shape), DType.bool))
    emit(draw, b, pool, "graph.where", cond, *((a, other) if draw(st.booleans()) else (other, a)))


def gen_cast(draw, b, pool, name):
    x = pick(draw, b, pool, lambda t: True, types())
    attrs = {}
    if draw(st.booleans()):
        attrs["saturate"] = draw(st.booleans())
    if draw(st.booleans()):
        attrs["round_mode"] = draw(st.sampled_from(["up", "down", "nearest"]))
    emit(draw, b, pool, "graph.cast", x, to=draw(st.sampled_from(ALL)), **attrs)


def gen_constant(draw, b, pool, name):
    small = draw(st.booleans())  # inline (<= 16 elements) or by reference
    shape = draw(st.lists(st.integers(0, 4), max_size=2).map(tuple) if small
                 else st.lists(st.integers(3, 7), min_size=2, max_size=3).map(tuple))
    new_leaf(draw, b, pool, TensorType(shape, draw(st.sampled_from(ALL))), constant=True)


def gen_matmul(draw, b, pool, name):
    dtype = draw(st.sampled_from(NUMERIC))
    m, k, n = draw(dims), draw(dims), draw(dims)
    batch = draw(st.lists(dims, max_size=2).map(tuple))
    a_shape = draw(st.sampled_from([(k,), (m, k), batch + (m, k)]))
    b_shape = draw(st.sampled_from([(k,), (k, n), broadcastable_to(draw, batch) + (k, n)]))
    emit(draw, b, pool, "graph.matmul", of_type(draw, b, pool, TensorType(a_shape, dtype)),
         of_type(draw, b, pool, TensorType(b_shape, dtype)))


def gen_reduce(draw, b, pool, name):
    x = pick(draw, b, pool, lambda t: t.dtype is not DType.bool, types(NUMERIC))
    axes = draw(st.lists(st.integers(0, x.type.rank - 1), unique=True)) if x.type.rank else []
    axes = tuple(a - x.type.rank if draw(st.booleans()) else a for a in axes)
    if draw(st.booleans()):
        emit(draw, b, pool, name, x, axes=axes)
    else:
        emit(draw, b, pool, name, x, axes=axes, keepdims=draw(st.booleans()))


def gen_softmax_cumsum(draw, b, pool, name):
    x = pick(draw, b, pool, lambda t: t.dtype.is_float and t.rank >= 1, types(FLOATS, nonscalar_shapes))
    axis = axis_of(draw, x.type.rank)
    if name == "graph.softmax":
        emit(draw, b, pool, "graph.softmax", x, axis=axis)
    else:
        emit(draw, b, pool, "graph.cumsum", x, axis=axis, exclusive=draw(st.booleans()),
             reverse=draw(st.booleans()))


def gen_norm(draw, b, pool, name):
    x = pick(draw, b, pool, lambda t: t.dtype.is_float and t.rank >= 1, types(FLOATS, nonscalar_shapes))
    axis = axis_of(draw, x.type.rank)
    normalized = x.type.shape[axis % x.type.rank:]
    scale = of_type(draw, b, pool, TensorType(broadcastable_to(draw, normalized), x.type.dtype))
    eps = draw(st.sampled_from([1e-5, 1e-6, 1e-12, 0.0]) | st.floats(1e-9, 1e-1))
    if name == "graph.rms_norm":
        emit(draw, b, pool, "graph.rms_norm", x, scale, axis=axis, epsilon=eps)
    else:
        bias = [of_type(draw, b, pool, TensorType(broadcastable_to(draw, normalized), x.type.dtype))]
        emit(draw, b, pool, "graph.layer_norm", x, scale, *bias[:draw(st.integers(0, 1))], axis=axis, epsilon=eps)


def gen_topk_trilu(draw, b, pool, name):
    if name == "graph.topk":
        x = pick(draw, b, pool, lambda t: t.rank >= 1 and t.dtype is not DType.bool, types(NUMERIC, nonscalar_shapes))
        axis = axis_of(draw, x.type.rank)
        emit(draw, b, pool, "graph.topk", x, results=2, k=draw(st.integers(0, x.type.shape[axis])), axis=axis,
             largest=draw(st.booleans()), sorted=draw(st.booleans()))
    else:
        x = pick(draw, b, pool, lambda t: t.rank >= 2, types(ALL, st.lists(dims, min_size=2, max_size=4).map(tuple)))
        emit(draw, b, pool, "graph.trilu", x, upper=draw(st.booleans()), k=draw(st.integers(-3, 3)))


def gen_reshape_transpose(draw, b, pool, name):
    x = pick(draw, b, pool, lambda t: True, types())
    shape = x.type.shape
    kind = name[6:]
    if kind == "reshape":
        perm = draw(st.permutations(shape))  # the same dims in another order, some merged, 1s added
        new: list[int] = []
        for d in perm:
            if new and draw(st.booleans()):
                new[-1] *= d
            else:
                new.append(d)
            if draw(st.integers(0, 4)) == 0:
                new.append(1)
        emit(draw, b, pool, "graph.reshape", x, shape=tuple(new))
    elif kind == "transpose":
        emit(draw, b, pool, "graph.transpose", x, perm=tuple(draw(st.permutations(range(len(shape))))))
    elif kind == "expand":
        lead = draw(st.lists(dims, max_size=2))
        target = tuple(lead) + tuple(draw(dims) if d == 1 else d for d in shape)
        emit(draw, b, pool, "graph.expand", x, shape=target)
    else:
        emit(draw, b, pool, "graph.tile", x, repeats=tuple(draw(st.integers(0, 3)) for _ in shape))


def gen_concat_split_slice(draw, b, pool, name):
    x = pick(draw, b, pool, lambda t: t.rank >= 1, types(ALL, nonscalar_shapes))
    rank, shape = x.type.rank, x.type.shape
    axis = axis_of(draw, rank)
    kind = name[6:]
    if kind == "concat":
        parts = [x]
        for _ in range(draw(st.integers(0, 3))):
            s = list(shape)
            s[axis] = draw(st.integers(0, 4))
            parts.append(of_type(draw, b, pool, TensorType(tuple(s), x.type.dtype)))
        emit(draw, b, pool, "graph.concat", *draw(st.permutations(parts)), axis=axis)
    elif kind == "split":
        left, sizes = shape[axis], []
        while left and len(sizes) < 4:
            sizes.append(draw(st.integers(0, left)))
            left -= sizes[-1]
        sizes.append(left)
        emit(draw, b, pool, "graph.split", x, results=len(sizes), axis=axis, sizes=tuple(sizes))
    else:
        axes = draw(st.lists(st.integers(0, rank - 1), min_size=1, unique=True))
        axes = [a - rank if draw(st.booleans()) else a for a in axes]
        bound = lambda a: st.integers(-shape[a] - 2, shape[a] + 2)  # noqa: E731
        emit(draw, b, pool, "graph.slice", x, axes=tuple(axes), starts=tuple(draw(bound(a)) for a in axes),
             ends=tuple(draw(bound(a)) for a in axes),
             steps=tuple(draw(st.sampled_from([-3, -2, -1, 1, 2, 3])) for _ in axes))


def gen_gather(draw, b, pool, name):
    data = pick(draw, b, pool, lambda t: t.rank >= 1, types(ALL, nonscalar_shapes))
    rank, shape = data.type.rank, data.type.shape
    idx_dtype = draw(st.sampled_from(INDEX))
    kind = name[6:]
    if kind == "gather":
        idx = of_type(draw, b, pool, TensorType(draw(shapes), idx_dtype))
        emit(draw, b, pool, "graph.gather", data, idx, axis=axis_of(draw, rank))
    elif kind == "gather_elements":  # indices no larger than data, but along the axis
        axis = axis_of(draw, rank)
        idx_shape = tuple(draw(dims) if n == axis % rank else draw(st.integers(0, d)) for n, d in enumerate(shape))
        idx = of_type(draw, b, pool, TensorType(idx_shape, idx_dtype))
        emit(draw, b, pool, "graph.gather_elements", data, idx, axis=axis)
    else:
        batch = draw(st.integers(0, rank - 1))
        depth = draw(st.integers(1, rank - batch))
        extra = draw(st.lists(dims, max_size=2).map(tuple))
        idx = of_type(draw, b, pool, TensorType(shape[:batch] + extra + (depth,), idx_dtype))
        if batch == 0 and draw(st.booleans()):
            emit(draw, b, pool, "graph.gather_nd", data, idx)
        else:
            emit(draw, b, pool, "graph.gather_nd", data, idx, batch_dims=batch)


def _graph(*names):
    return tuple(f"graph.{n}" for n in names)


def gen_state(draw, b, pool, name):
    """A state and its one write (a state is read by nothing else), at the module's one position input."""
    dtype = draw(st.sampled_from(NUMERIC))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=2, max_size=3)))
    state = b.op("graph.state", names=(draw(value_names),), name=f"state{len(b.ops)}", shape=shape, dtype=dtype)
    new = of_type(draw, b, pool, TensorType(shape[:-2] + (draw(st.integers(1, shape[-2])), shape[-1]), dtype))
    writes = [op for op in b.ops if op.name == "graph.state_write"]
    position = writes[0].operands[2] if writes else \
        b.input(draw(value_names) or "position", TensorType((1, draw(st.integers(1, 3))), draw(st.sampled_from(INDEX))))
    emit(draw, b, pool, "graph.state_write", state, new, position)


def state_attrs(b: Builder) -> dict:
    """The module attributes a module built by `b` needs for its state: the input holding the position."""
    writes = [op for op in b.ops if op.name == "graph.state_write"]
    return {"position": writes[0].operands[2].name} if writes else {}


# op name -> the generator that builds it
GENERATORS = {
    **dict.fromkeys(_graph("add", "sub", "mul", "div", "pow", "max", "min", "mod", "equal", "less", "less_equal",
                           "greater", "greater_equal", "and", "or", "xor"), gen_binary),
    **dict.fromkeys(_graph("exp", "log", "sqrt", "reciprocal", "tanh", "sigmoid", "erf", "cos", "sin", "neg", "abs",
                           "relu", "not", "isnan", "gelu", "round"), gen_unary),
    "graph.where": gen_where, "graph.cast": gen_cast, "graph.constant": gen_constant, "graph.matmul": gen_matmul,
    **dict.fromkeys(_graph("reduce_sum", "reduce_mean", "reduce_max", "reduce_min"), gen_reduce),
    **dict.fromkeys(_graph("softmax", "cumsum"), gen_softmax_cumsum),
    **dict.fromkeys(_graph("layer_norm", "rms_norm"), gen_norm),
    **dict.fromkeys(_graph("topk", "trilu"), gen_topk_trilu),
    **dict.fromkeys(_graph("reshape", "transpose", "expand", "tile"), gen_reshape_transpose),
    **dict.fromkeys(_graph("concat", "split", "slice"), gen_concat_split_slice),
    **dict.fromkeys(_graph("gather", "gather_elements", "gather_nd"), gen_gather),
    **dict.fromkeys(_graph("state", "state_write"), gen_state),
}
OP_NAMES = tuple(GENERATORS)


# --- attributes and modules ---------------------------------------------------

scalars = (st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=12)
           | st.sampled_from(ALL))
attr_lists = (st.lists(st.integers(-10**20, 10**20), max_size=5) | st.lists(st.floats(), max_size=4)
              | st.lists(st.text(max_size=5), max_size=3) | st.lists(st.booleans(), max_size=3)
              | st.lists(st.lists(st.integers(0, 9), min_size=3, max_size=3).map(tuple), max_size=3)
              | st.lists(st.integers(-5, 5) | st.floats(-1e3, 1e3), max_size=4)).map(tuple)


@st.composite
def tensor_attrs(draw):
    ttype = draw(types(ALL, st.lists(st.integers(0, 3), max_size=2).map(tuple)))
    if draw(st.booleans()):
        return Tensor.from_array(random_array(draw, ttype), ttype.dtype)
    return Tensor(ttype, draw(st.text(min_size=1, max_size=20)))  # by reference, without data


attr_values = scalars | attr_lists | tensor_attrs()


@st.composite
def modules(draw, max_ops: int = 10):
    b = Builder()
    pool: list[Value] = []
    for _ in range(draw(st.integers(1, 3))):
        pool.append(b.input(draw(value_names) or "x", draw(types())))
    # op names in a random order (a shuffle: each op is as likely as any other)
    for name in draw(st.permutations(OP_NAMES))[:draw(st.integers(1, max_ops))]:
        GENERATORS[name](draw, b, pool, name)
    outputs = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=4))
    names = draw(st.lists(st.text(max_size=8), min_size=len(outputs), max_size=len(outputs), unique=True))
    for name, v in zip(names, outputs):
        b.output(name, v)
    attrs = draw(st.dictionaries(st.sampled_from(ATTR_NAMES), attr_values, max_size=4))
    attrs.update(state_attrs(b))
    if draw(st.booleans()):
        attrs["chips"] = draw(st.integers(1, 64))
    return b.build(draw(st.text(NAME_CHARS, min_size=1, max_size=10)), **attrs)
