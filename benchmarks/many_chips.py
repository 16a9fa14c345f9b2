"""Many chips: cycles at 1, 2, 4 and 8 chips per prefill sample, and the speed-up over one chip.

    python benchmarks/many_chips.py [--chips 1,2,4,8] [--machine tsp-v1|FILE.toml] [--run] [MODEL.onnx ...]

For each model (default: samples/*prefill*.onnx) and chip count, the compiler's
chosen partition (`auto`: the faster of pipeline and tensor by a quick schedule)
and its cycles (with the default scheduler, CP-SAT); `pipeline` and
`tensor` are each candidate's quick schedule (no rounds), as `auto` compares
them; `speed-up` is 1-chip cycles / N-chip cycles of the chosen one. With --run, each chosen program also runs on the interpreter
against the sample's stored onnxruntime outputs (`err`: max relative error).
Cycles are deterministic: one compile each, no medians needed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lpuc.backends import interpreter  # noqa: E402
from lpuc.backends.lpu import build_program  # noqa: E402
from lpuc.compiler.driver import load_model, max_relative_error  # noqa: E402
from lpuc.compiler.pipeline import CompileOptions, compile_module  # noqa: E402
from lpuc.ir.machine import read_machine  # noqa: E402


def _stored(path: Path, kind: str) -> dict:
    with np.load(path.with_name(path.name.removesuffix(".onnx") + f".{kind}.npz")) as f:
        return {k: f[k] for k in f.files}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", type=Path)
    p.add_argument("--chips", default="1,2,4,8")
    p.add_argument("--machine", default="tsp-v1")
    p.add_argument("--run", action="store_true", help="also run each chosen program against onnxruntime's outputs")
    args = p.parse_args(argv)
    models = args.models or sorted((ROOT / "samples").glob("*prefill*.onnx"))
    counts = [int(c) for c in args.chips.split(",")]
    machine, machine_text = read_machine(args.machine)
    head = f"{'model':<22} {'chips':>5} {'chosen':>9} {'cycles':>10} {'us':>8} {'speed-up':>8} " \
           f"{'pipeline':>10} {'tensor':>10} {'xfers':>6} {'compile s':>9}" + (f" {'err':>8}" if args.run else "")
    print(head)
    print("-" * len(head))
    for path in models:
        graph, _ = load_model(path)
        base = None
        for n in counts:
            t0 = time.perf_counter()
            module, s = compile_module(graph, machine, CompileOptions(chips=n))
            seconds = time.perf_counter() - t0
            base = base or s.cycles
            tried = dict(s.candidates)
            cells = [tried.get(k, "-") if n > 1 else "-" for k in ("pipeline", "tensor")]
            cells = [c if c.isdigit() or c == "-" else "no fit" for c in cells]
            line = (f"{path.stem:<22} {n:>5} {s.partition:>9} {s.cycles:>10,} {s.microseconds:>8.1f} "
                    f"{base / s.cycles:>7.2f}x {cells[0]:>10} {cells[1]:>10} {s.transfers:>6} {seconds:>9.2f}")
            if args.run:
                ref = _stored(path, "outputs")
                result = interpreter.run(build_program(module, machine_text), _stored(path, "inputs"))
                line += f" {max(max_relative_error(result.outputs[k], ref[k]) for k in ref):>8.1e}"
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
