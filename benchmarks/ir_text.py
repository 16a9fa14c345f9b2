"""Speed of the IR text form: print and parse a 100,000-op module.

    python benchmarks/ir_text.py [--ops 100000] [--runs 3]

The module is a stack of transformer layers (attention + MLP, with weights as
constants by reference, small constants inline, reshapes, transposes, splits,
slices, gathers, casts, reductions), so lines have realistic length and
attribute mix. Prints the median over `--runs` of each phase, and lines/s.
Targets on a 2-core machine: parse < 10 s, print < 3 s.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from lpuc.ir import DType, Tensor, TensorType, parse, print_module  # noqa: E402
from lpuc.ir.builder import Builder  # noqa: E402

S, D, H, F, V = 7, 96, 4, 384, 1000  # sequence, model width, heads, MLP width, vocabulary


def _weight(shape, tag: str) -> Tensor:
    """A large constant by reference (no data: printing never reads it)."""
    ttype = TensorType(shape, DType.f32)
    return Tensor(ttype, "sha256:" + hashlib.sha256(tag.encode()).hexdigest())


def _layer(b: Builder, x, i: int):
    hd = D // H
    c = lambda shape, what: b.op("graph.constant", names=(f"l{i}.{what}",), value=_weight(shape, f"{i}.{what}"))
    ln1 = b.op("graph.layer_norm", x, c((D,), "ln1.w"), c((D,), "ln1.b"), names=(f"l{i}.ln1",), epsilon=1e-5)
    qkv = b.op("graph.matmul", ln1, c((D, 3 * D), "qkv.w"))
    qkv = b.op("graph.add", qkv, c((3 * D,), "qkv.b"))
    q, k, v = b.op("graph.split", qkv, axis=2, sizes=(D, D, D), names=(f"l{i}.q", f"l{i}.k", f"l{i}.v"))
    heads = []
    for t in (q, k, v):
        t = b.op("graph.reshape", t, shape=(1, S, H, hd))
        heads.append(b.op("graph.transpose", t, perm=(0, 2, 1, 3)))
    q, k, v = heads
    kt = b.op("graph.transpose", k, perm=(0, 1, 3, 2))
    s = b.op("graph.matmul", q, kt)
    scale = b.constant(np.array(1 / np.sqrt(hd), np.float32), name=f"l{i}.scale")
    s = b.op("graph.mul", s, scale)
    mask = b.constant(np.triu(np.full((S, S), -1e9, np.float32), 1)[:2, :S], name=f"l{i}.mask_rows")
    mask = b.op("graph.slice", mask, starts=(0,), ends=(1,), axes=(0,), steps=(1,))
    s = b.op("graph.add", s, mask)
    p = b.op("graph.softmax", s, axis=-1)
    o = b.op("graph.matmul", p, v)
    o = b.op("graph.transpose", o, perm=(0, 2, 1, 3))
    o = b.op("graph.reshape", o, shape=(1, S, D))
    o = b.op("graph.matmul", o, c((D, D), "o.w"))
    x = b.op("graph.add", x, o, names=(f"l{i}.res1",))
    ln2 = b.op("graph.layer_norm", x, c((D,), "ln2.w"), c((D,), "ln2.b"), epsilon=1e-5)
    h = b.op("graph.matmul", ln2, c((D, F), "up.w"))
    h = b.op("graph.gelu", h, approximate="tanh")
    h = b.op("graph.cast", h, to=DType.bf16)
    h = b.op("graph.cast", h, to=DType.f32)
    h = b.op("graph.matmul", h, c((F, D), "down.w"))
    m = b.op("graph.reduce_mean", h, axes=(-1,), keepdims=True)
    h = b.op("graph.sub", h, m)
    x = b.op("graph.add", x, h, names=(f"l{i}.out",))
    return x


def build_module(n_ops: int):
    b = Builder()
    ids = b.input("ids", TensorType((1, S), DType.i64))
    table = b.op("graph.constant", value=_weight((V, D), "embed"), names=("embed",))
    x = b.op("graph.gather", table, ids, axis=0)
    i = 0
    while True:  # whole layers while they fit, then cheap elementwise ops to hit n_ops exactly
        mark = len(b.ops)
        y = _layer(b, x, i)
        if len(b.ops) > n_ops - 2:
            del b.ops[mark:]
            break
        x, i = y, i + 1
    while len(b.ops) < n_ops - 2:
        x = b.op("graph.tanh" if len(b.ops) % 2 else "graph.relu", x)
    last = b.op("graph.reduce_max", x, axes=(2,), keepdims=False)
    _, idx = b.op("graph.topk", last, k=3, axis=-1)
    b.output("top_ids", idx)
    return b.build("bench", machine="tsp-v1", seed=0)


def _time(fn, runs: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(runs):
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    module = build_module(args.ops)
    build_s = time.perf_counter() - t0
    print_s, text = _time(lambda: print_module(module), args.runs)
    parse_s, parsed = _time(lambda: parse(text), args.runs)
    assert parsed == module, "parse(print(m)) != m"
    assert print_module(parsed) == text, "print(parse(text)) != text"
    lines = text.count("\n")

    print(f"module: {len(module.ops):,} ops, {lines:,} lines, {len(text) / 1e6:.1f} MB "
          f"(built in {build_s:.1f} s); median of {args.runs} runs")
    print(f"{'phase':<8}{'seconds':>10}{'lines/s':>12}{'target':>10}")
    for name, secs, target in (("print", print_s, 3.0), ("parse", parse_s, 10.0)):
        ok = "ok" if secs < target else "SLOW"
        print(f"{name:<8}{secs:>10.2f}{lines / secs:>12,.0f}{f'< {target:g} s':>10} {ok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
