"""A sweep twice: the second, all from the build cache, against the first.

    python benchmarks/sweep_cache.py [--runs 3] [--jobs 1,2] [--chips 1,2,4,8] [--precision fp16,int8] [MODEL]

For each job count, `--runs` times: `lpuc sweep MODEL` (default samples/llama_decode.onnx) in a fresh
process into an empty cache, then the same sweep again into that cache. Prints the medians of both wall
times, their ratio (issue: under 10%) and the points the second sweep computed (must be 0).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _sweep(model: str, args, jobs: int, cache: str) -> tuple[float, list[dict]]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lpuc.compiler", "sweep", model, "--chips", args.chips,
                           "--precision", args.precision, "--jobs", str(jobs), "--cache-dir", cache, "--json"],
                          capture_output=True, text=True, check=True)
    return time.perf_counter() - start, [json.loads(line) for line in done.stdout.splitlines()]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", default=str(ROOT / "samples" / "llama_decode.onnx"))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--jobs", default="1,2")
    p.add_argument("--chips", default="1,2,4,8")
    p.add_argument("--precision", default="fp16,int8")
    args = p.parse_args()
    print(f"{'jobs':>4}  {'points':>6}  {'first s':>8}  {'again s':>8}  {'again/first':>11}  {'computed again':>14}")
    for jobs in map(int, args.jobs.split(",")):
        first, again, computed = [], [], 0
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as cache:
                seconds, rows = _sweep(args.model, args, jobs, cache)
                first.append(seconds)
                seconds, rows = _sweep(args.model, args, jobs, cache)
                again.append(seconds)
                computed += sum(not r["wall"].get("cached", False) for r in rows)
        a, b = statistics.median(first), statistics.median(again)
        print(f"{jobs:>4}  {len(rows):>6}  {a:>8.2f}  {b:>8.2f}  {b / a:>11.1%}  {computed:>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
