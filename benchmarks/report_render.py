"""The HTML report: its size and how fast headless Chromium renders it.

    python benchmarks/report_render.py [--runs 5] [MODEL.onnx | PROGRAM.lpu ...]

For each model (default: the sample with the most instructions, compiled for one
chip) or compiled program (a .lpu, e.g. a full-size shape-only model's, as
`lpuc viz` reads it) prints the report's size, the median over `--runs` of the time
`render_html` takes in Python (for a .lpu also reading it) and of each of its stages
(from the progress lines: parsing, verifying and describing (the facts, with the
verifier beside them as `lpuc viz` reads), the analysis, the SRAM curves, the rows
and details, the packing by chip), for a .lpu the median over `--runs` of the wall
time of the command itself, `lpuc viz PROGRAM.lpu --html` (a fresh process: its
imports, writing the page and its exit too), and the median over `--runs` fresh
headless Chromium processes (no network) of the page's render time (any console
line or error the page notes fails the run): performance.now() from navigation
start until the page's script has drawn everything and forced layout (it writes the
value into the DOM as `data-render-ms`, read back with --dump-dom; beyond 8 chips
that includes unpacking the chip shown first). Targets: < 10 MB, made from a .lpu by
`lpuc viz` in < 30 s (issue 20's acceptance, for full-size programs), drawn in < 3 s;
the exit status is 1 when one is missed.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lpuc.backends.lpu import build_program, read_lpu  # noqa: E402
from lpuc.backends.report import render_html  # noqa: E402
from lpuc.compiler.cli import no_huge_pages  # noqa: E402
from lpuc.compiler.driver import compile_model, load_model, lpu_options  # noqa: E402
from lpuc.compiler.lower import lower  # noqa: E402
from lpuc.compiler.pipeline import CompileOptions  # noqa: E402
from lpuc.ir import machine_ops as mo  # noqa: E402
from lpuc.ir import schedule_facts  # noqa: E402
from lpuc.ir.collector import collector_paused  # noqa: E402
from lpuc.ir.machine import load_machine  # noqa: E402
from lpuc.ir.target import Target  # noqa: E402

MAX_MB, MAX_MADE_S, MAX_S = 10.0, 30.0, 3.0  # the page's size, the time to make it from a .lpu, to draw it


def largest_sample() -> Path:
    target = Target(load_machine())

    def count(path):
        return sum(1 for op in lower(load_model(path)[0], target).ops if mo.unit_class(op.name))
    return max(sorted((ROOT / "samples").glob("*.onnx")), key=count)


def chromium_render_ms(chromium: str, page: Path, profile: Path) -> tuple[float, float]:
    """(the page's own render time in ms, the browser process's wall time in s)."""
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-extensions", "--no-proxy-server", "--host-resolver-rules=MAP * ~NOTFOUND",
           f"--user-data-dir={profile}", "--window-size=1400,900", "--enable-logging=stderr", "--v=0",
           "--dump-dom", page.as_uri()]
    t0 = time.perf_counter()
    done = subprocess.run(cmd + ["--virtual-time-budget=30000"], capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - t0
    m = re.search(r'data-render-ms="([0-9.]+)"', done.stdout)
    if done.returncode or not m or 'data-rendered="1"' not in done.stdout:
        raise SystemExit(f"chromium did not render {page}: {done.stderr[-500:]}")
    notes = re.search(r'<div id="lpuc-errors"[^>]*>(.*?)</div>', done.stdout, re.S)
    errors = [line for line in done.stderr.splitlines() if re.search(r"CONSOLE[:(]|Uncaught", line)]
    if errors or (notes and notes.group(1).strip()):
        raise SystemExit(f"{page}: errors in the page: {errors[:3]} {notes.group(1)[:300] if notes else ''}")
    return float(m.group(1)), wall


def viz_seconds(program: Path, page: Path) -> float:
    """The wall time of `lpuc viz PROGRAM --html PAGE` in a fresh process."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lpuc.compiler.cli", "viz", str(program), "--html", str(page)],
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"lpuc viz {program} failed: {done.stderr[-500:]}")
    return time.perf_counter() - t0


# The stages of reading a program and making its page, each starting at the first progress line
# (read_lpu's, report_data's) beginning with its prefix
STAGES = {"parse": "parsing the program", "verify+facts": "verifying",
          "analysis": "report: the timing", "sram": "report: SRAM", "rows": "report: ", "packing": "report: packing"}


def note(marks: list):
    return lambda line: marks.append((time.perf_counter(), line))


def stage_times(marks: list, start: float, end: float) -> dict[str, float]:
    """Seconds per stage (STAGES) from the progress lines' times: a stage runs from its first line to the next
    stage's first (the last to `end`); a stage with no line (a compiled model: no parse; a page not packed) has
    none."""
    starts = []  # (when, stage), in order
    for when, line in marks:
        # (the most specific prefix: "report: packing" before "report: ")
        stage = max((s for s, prefix in STAGES.items() if line.startswith(prefix)), key=lambda s: len(STAGES[s]),
                    default=None)
        if stage is not None and stage not in {s for _, s in starts}:
            starts.append((when, stage))
    bounds = [when for when, _ in starts[1:]] + [end]
    return {stage: stop - when for (when, stage), stop in zip(starts, bounds)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", type=Path)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    no_huge_pages()  # (as the `lpuc` command runs)
    chromium = shutil.which("chromium")
    models = args.models or [largest_sample()]
    print(f"{'model':<24} {'instrs':>6} {'cycles':>8} {'MB':>6} {'python s':>8} {'viz s':>7} {'render s':>8} "
          f"{'chromium s':>10}")
    ok = True
    where: dict[str, dict[str, float]] = {}  # model -> stage -> seconds
    with tempfile.TemporaryDirectory() as tmp:
        for path in models:
            program = html = compiled = None  # (the command first, while this process holds no program)
            viz = statistics.median(viz_seconds(path, Path(tmp) / "viz.html") for _ in range(args.runs)) \
                if path.suffix == ".lpu" else float("nan")
            if path.suffix != ".lpu":
                options = CompileOptions()
                module, summary, machine_text = compile_model(path, options=options)
                compiled = build_program(module, machine_text, lpu_options(options), summary.facts())
            times, stages = [], []
            for _ in range(args.runs):
                program = html = None  # (the run before's freed first, its facts too: as a fresh `lpuc viz`)
                if path.suffix == ".lpu":
                    schedule_facts.forget()
                marks = []  # (when, the progress line said then)
                with collector_paused():  # as lpuc viz reads and renders
                    t0 = time.perf_counter()
                    program = read_lpu(path, note(marks), described=True) if path.suffix == ".lpu" else compiled
                    html = render_html(program, progress=note(marks))
                    times.append(time.perf_counter() - t0)
                stages.append(stage_times(marks, t0, t0 + times[-1]))
            py_s = statistics.median(times)
            where[path.stem] = {stage: statistics.median(run.get(stage, 0.0) for run in stages) for stage in STAGES}
            page = Path(tmp) / f"{path.stem}.html"
            page.write_text(html)
            mb = len(html.encode()) / 1e6
            render, wall = float("nan"), float("nan")
            if chromium:
                runs = [chromium_render_ms(chromium, page, Path(tmp) / f"profile{i}") for i in range(args.runs)]
                render = statistics.median(r for r, _ in runs) / 1000
                wall = statistics.median(w for _, w in runs)
            print(f"{path.stem[:24]:<24} {len(program.facts.scheduled):>6} {program.facts.length:>8} {mb:>6.3f} {py_s:>8.3f} "
                  f"{viz:>7.2f} {render:>8.3f} {wall:>10.2f}")
            ok &= mb < MAX_MB and (path.suffix != ".lpu" or viz < MAX_MADE_S) and (not chromium or render < MAX_S)
    if not chromium:
        print("chromium is not installed: render times not measured")
    print(f"\nwhere the Python time goes (medians, s): {', '.join(STAGES)}")
    for name, spent in where.items():
        print(f"{name[:24]:<24} " + " ".join(f"{spent[stage]:>7.2f}" for stage in STAGES))
    print(f"targets: < {MAX_MB:g} MB, made from a .lpu by lpuc viz in < {MAX_MADE_S:g} s, drawn in < {MAX_S:g} s: "
          f"{'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
