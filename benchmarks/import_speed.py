"""Speed of the ONNX frontend: `import_onnx` on every bundled sample.

    python benchmarks/import_speed.py [--runs 5] [--shape NAME=D0,D1 ...] [MODEL.onnx ...]

For each model (default: samples/*.onnx), the median over `--runs` of the
seconds `import_onnx` takes (load, support report, shape inference, conversion,
folding, dead-code elimination), with the ONNX node count and the IR op count.
The largest model (by file size, external data included) is marked `*`.
Target: the largest bundled sample imports in < 2 s.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lpuc.compiler.cli import _shape_arg  # noqa: E402
from lpuc.compiler.frontend import import_onnx, load_onnx  # noqa: E402
from lpuc.ir import LpucError  # noqa: E402

TARGET_S = 2.0


def _size(path: Path) -> int:
    """The model file plus its external data files."""
    model = load_onnx(path)
    locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    return path.stat().st_size + sum((path.parent / loc).stat().st_size for loc in locations
                                     if (path.parent / loc).exists())


def bench(path: Path, runs: int, shapes: dict) -> dict:
    times, module, error = [], None, None
    for _ in range(runs):
        gc.collect()
        t0 = time.perf_counter()
        try:
            module, _ = import_onnx(path, shapes)
        except LpucError as e:
            error = str(e)
            break
        times.append(time.perf_counter() - t0)
    return {"name": path.name, "bytes": _size(path), "nodes": len(load_onnx(path).graph.node),
            "ops": len(module.ops) if module else None, "seconds": statistics.median(times) if times else None,
            "error": error}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", type=Path, help="ONNX files (default: the bundled samples)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--shape", action="append", type=_shape_arg, default=[], metavar="NAME=D0,D1",
                    help="fix a symbolic input shape (as `lpuc import --shape`)")
    args = ap.parse_args(argv)
    samples = sorted((ROOT / "samples").glob("*.onnx"))
    paths = args.models or samples
    import_onnx(samples[0])  # warm up imports (onnx, lark, the op registry) outside the timings

    rows = [bench(p, args.runs, dict(args.shape)) for p in paths]
    largest = max(rows, key=lambda r: r["bytes"])
    print(f"import_onnx, median of {args.runs} runs; * = largest model")
    print(f"  {'model':<28}{'MB':>7}{'nodes':>8}{'IR ops':>8}{'seconds':>10}")
    for r in rows:
        mark = "*" if r is largest else " "
        secs = f"{r['seconds']:.3f}" if r["seconds"] is not None else "error"
        ops = r["ops"] if r["ops"] is not None else "-"
        print(f"{mark} {r['name']:<28}{r['bytes'] / 1e6:>7.2f}{r['nodes']:>8}{ops:>8}{secs:>10}")
        if r["error"]:
            print(f"    {r['error'][:110]}")
    ok = largest["seconds"] is not None and largest["seconds"] < TARGET_S
    secs = f"{largest['seconds']:.3f} s" if largest["seconds"] is not None else "failed"
    print(f"largest: {largest['name']} {secs} (target < {TARGET_S:g} s) {'ok' if ok else 'SLOW'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
