"""One chip, end to end: compile, schedule quality and interpreter speed per sample.

    python benchmarks/one_chip.py [--runs 5] [--machine tsp-v1|FILE.toml] [MODEL.onnx ...]

For each model (default: samples/*.onnx, with their stored inputs MODEL.inputs.npz),
the median over `--runs` of:
  compile s   compile_model (import, lower, allocate, schedule) + writing the .lpu bytes
  interp s    the cycle-accurate interpreter running the program on the inputs
  ORT s       ONNX Runtime (CPUExecutionProvider, one session) on the same inputs
and, from the compile, the schedule's cycles, its lower bound, the gap
(cycles / bound - 1) and the predicted latency at the machine's clock.
`err` is the interpreter's max relative error against ONNX Runtime.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lpuc.backends import interpreter  # noqa: E402
from lpuc.backends.lpu import build_program, lpu_bytes  # noqa: E402
from lpuc.compiler.driver import compile_model, max_relative_error  # noqa: E402
from lpuc.compiler.inputs import random_inputs  # noqa: E402
from lpuc.ir import LpucError  # noqa: E402


def _median_seconds(fn, runs: int):
    times, value = [], None
    for _ in range(runs):
        gc.collect()
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), value


def _inputs(path: Path, module) -> dict:
    stored = path.with_name(path.name.removesuffix(".onnx") + ".inputs.npz")
    if stored.exists():
        with np.load(stored) as f:
            return {k: f[k] for k in f.files}
    return random_inputs(module, 0)


def bench(path: Path, runs: int, machine: str) -> dict:
    import onnxruntime as ort

    def compile_once():
        module, summary, machine_text = compile_model(path, machine)
        lpu_bytes(module, machine_text)
        return module, summary, machine_text

    compile_s, (module, summary, machine_text) = _median_seconds(compile_once, runs)
    program = build_program(module, machine_text)
    inputs = _inputs(path, module)
    interp_s, result = _median_seconds(lambda: interpreter.run(program, inputs), runs)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feed = {i.name: inputs[i.name] for i in session.get_inputs()}
    session.run(names, feed)  # warm up
    ort_s, ref = _median_seconds(lambda: session.run(names, feed), runs)
    err = max(max_relative_error(result.outputs[n], r) for n, r in zip(names, ref))
    assert result.stats.cycles == summary.cycles, (path.name, result.stats.cycles, summary.cycles)
    return {"model": path.stem, "compile": compile_s, "cycles": summary.cycles, "bound": summary.lower_bound,
            "gap": summary.gap, "us": summary.microseconds, "interp": interp_s, "ort": ort_s, "err": err,
            "instructions": summary.instructions}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", type=Path, help="ONNX files (default: the bundled samples)")
    ap.add_argument("--runs", type=int, default=5, help="runs per measurement; the median is shown (default 5)")
    ap.add_argument("--machine", default="tsp-v1", help="machine description (default tsp-v1)")
    args = ap.parse_args(argv)
    models = args.models or sorted((ROOT / "samples").glob("*.onnx"))
    head = (f"{'model':<22} {'compile s':>9} {'cycles':>8} {'bound':>8} {'gap':>6} {'us':>7} {'instrs':>6} "
            f"{'interp s':>8} {'ORT s':>8} {'err':>8}")
    print(head)
    print("-" * len(head))
    rows = []
    for path in models:
        try:
            r = bench(path, args.runs, args.machine)
        except LpucError as e:
            print(f"{path.stem:<22} error: {e}")
            continue
        rows.append(r)
        print(f"{r['model']:<22} {r['compile']:>9.3f} {r['cycles']:>8,} {r['bound']:>8,} {r['gap']:>6.1%} "
              f"{r['us']:>7.1f} {r['instructions']:>6} {r['interp']:>8.3f} {r['ort']:>8.5f} {r['err']:>8.1e}",
              flush=True)
    if rows:
        print("-" * len(head))
        print(f"{'total':<22} {sum(r['compile'] for r in rows):>9.3f} {sum(r['cycles'] for r in rows):>8,} "
              f"{sum(r['bound'] for r in rows):>8,} {'':>6} {'':>7} {'':>6} {sum(r['interp'] for r in rows):>8.3f} "
              f"{sum(r['ort'] for r in rows):>8.5f}")
        print(f"median runs: {args.runs}; gap = cycles / lower bound - 1; us at the machine's clock; "
              f"err = max relative error vs ONNX Runtime")
    return 0 if len(rows) == len(models) else 1


if __name__ == "__main__":
    sys.exit(main())
