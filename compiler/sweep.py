"""`lpuc sweep`: one model compiled and run timing-only at every combination of chip counts, layouts,
precisions and machines, each point an exact schedule.

Every point goes through the build cache (compiler/cache.py): a point whose program and run the cache
holds is read, not computed, so a repeated sweep compiles nothing. The others run in local worker
processes (`jobs`) or as Ray tasks (`ray`: an optional extra), each compiling without weights (a
sweep times schedules) and running the program timing-only. A failed point becomes a row with its
one-line error; the sweep goes on. Rows come back in the order of the combinations, whatever the
order points finish in: with the same cache state, the rows are the same bytes in any job count or
worker placement, except each row's `wall` (seconds and whether the cache had it).
"""

from __future__ import annotations

import itertools
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..ir import LpucError

RAY_HINT = "--ray needs Ray: pip install 'lpuc[cluster]' (or pip install ray)"


@dataclass(frozen=True)
class Point:
    chips: int
    layout: str | None    # None: lpuc's default layout for the chips
    precision: str
    machine: str          # a shipped machine's name or a machine file's path, as given

    def label(self) -> str:
        return (f"chips={self.chips} layout={self.layout or 'default'} precision={self.precision} "
                f"machine={Path(self.machine).stem}")


def combinations(chips, layouts, precisions, machines) -> list[Point]:
    """Every combination, machines outermost, then precisions, layouts and chip counts."""
    return [Point(c, lay, p, m) for m, p, lay, c in itertools.product(machines, precisions, layouts, chips)]


@dataclass(frozen=True)
class Fixed:
    """What every point of a sweep compiles with."""
    effort: float | None  # CP-SAT's budget (None: the default)
    state: str            # "auto" for a decode step (its KV cache resident, as it is served), else "none"
    prefill: str | None = None  # a decode step's prefill partner: compiled beside it for the time to first token


def fixed(model: str, effort: float | None, prefill: str | None = None) -> Fixed:
    """A decode step (Hugging Face's past_key_values.* inputs) keeps its cache resident; other graphs none."""
    if Path(model).suffix == ".ir":
        from .driver import read_ir

        names = [v.name for v in read_ir(model).inputs]
    else:
        import onnx

        try:
            names = [v.name for v in onnx.load(model, load_external_data=False).graph.input]
        except Exception:  # not ONNX: every point's compile says why, in its words
            names = []
    state = "auto" if any(n.startswith("past_key_values.") for n in names) else "none"
    if prefill is not None and state == "none":
        raise LpucError(f"--prefill {prefill}: {model} is not a decode step (no past_key_values.* inputs)")
    return Fixed(effort, state, prefill)


def _options(point: Point, settings: Fixed):
    from .pipeline import CompileOptions

    extra = {} if settings.effort is None else {"effort": settings.effort}
    return CompileOptions(chips=point.chips, layout=point.layout, precision=point.precision, state=settings.state,
                          **extra)


def _run_findings(program) -> dict:
    """What a timing-only run of `program` finds (every hazard checked), for a sweep's row."""
    from ..backends import interpreter
    from .serving import physical_bound, pipelined

    result = interpreter.run(program, timing_only=True)
    stats = result.stats
    bound = physical_bound(program, stats, result.occupancy)
    served = pipelined(program, stats)
    return {
        "run_cycles": stats.cycles, "sram_peak_bytes": stats.sram_peak_bytes,
        "physical_bound_cycles": bound["physical_bound_cycles"], "bound_gap": round(bound["gap"], 6),
        "mxm_utilization": [round(c.class_utilization.get("mxm", 0.0), 6) for c in stats.chips],
        **({"aggregate_tokens_per_s": round(served["aggregate_tokens_per_s"], 3), "in_flight": served["in_flight"]}
           if served else {}),
    }


def compute_point(model: str, point: Point, cache: str | None, settings: Fixed,
                  keep_program: bool = False) -> dict:
    """Compile `point` (cache first) and run it timing-only: {"report", "run", "seconds", "hit"} (and
    "program": the .lpu's bytes with `keep_program`, for a driver that records them in its own cache)."""
    from ..backends.lpu import read_lpu
    from .cache import lookup, store_run
    from .driver import compile_cached

    start = time.perf_counter()
    directory = Path(cache) if cache else None
    built: list = []
    with tempfile.TemporaryDirectory(prefix="lpuc-sweep-") as tmp:
        output = Path(tmp) / "point.lpu"
        report = compile_cached(model, point.machine, _options(point, settings), {}, weights=False, output=output,
                                cache=directory, keep=lambda module, program: built.append(program))
        entry = lookup(directory, report["cache"]["key"]) if report.get("cache", {}).get("status") == "hit" else None
        run = entry.run if entry else None
        if run is None:
            run = _run_findings(built[0] if built else read_lpu(output))
            if directory:
                store_run(directory, report["cache"]["key"], run)
        found = {"report": report, "run": run, "seconds": time.perf_counter() - start,
                 "hit": entry is not None and entry.run is not None}
        if keep_program:
            found["program"] = output.read_bytes()
        if settings.prefill:
            found["prefill"] = _prefill(point, settings, report, directory, Path(tmp) / "prefill.lpu")
            found["hit"] = found["hit"] and found["prefill"].get("cache", {}).get("status") == "hit"
            if keep_program:
                found["prefill_program"] = (Path(tmp) / "prefill.lpu").read_bytes()
    return found


def _prefill_options(point: Point, settings: Fixed, step: dict):
    """How the prefill partner is compiled: laid out as the step is and keeping the cache where the step keeps
    it (as `lpuc generate --prefill` compiles them), its cache's rows the step's context."""
    from .pipeline import CompileOptions

    layout = step["partition"] if step["partition"].startswith(("tp=", "pp=")) else None
    options = CompileOptions(chips=None if layout else step["chips"], layout=layout, precision=point.precision,
                             state="auto", context=step["context"],
                             **({} if settings.effort is None else {"effort": settings.effort}))
    states = {name: (chip, tuple(map(tuple, out))) for name, (chip, out) in step["state_layout"].items()}
    return options, states


def _prefill(point: Point, settings: Fixed, step: dict, directory: Path | None, output: Path) -> dict:
    """The prefill partner's compile report (cache first)."""
    from .driver import compile_cached

    options, states = _prefill_options(point, settings, step)
    report = compile_cached(settings.prefill, point.machine, options, {}, weights=False, output=output,
                            cache=directory, state_layout=states)
    if report["chips"] != step["chips"]:
        raise LpucError(f"the prefill takes {report['chips']} chips, the decode step {step['chips']}")
    return report


def _remote_point(model_name: str, model_bytes: bytes, machine_name: str, machine_text: str | None,
                  point: Point, settings: Fixed, prefill_bytes: bytes | None = None) -> dict:
    """A point computed where the model's (and prefill's) and the machine's files are not: written to a
    temporary directory first (no external data is shipped: a sweep compiles without weights)."""
    with tempfile.TemporaryDirectory(prefix="lpuc-ray-") as tmp:
        model = Path(tmp) / model_name
        model.write_bytes(model_bytes)
        if settings.prefill:
            prefill = Path(tmp) / ("prefill-" + Path(settings.prefill).name)
            prefill.write_bytes(prefill_bytes)
            settings = Fixed(settings.effort, settings.state, str(prefill))
        machine = point.machine
        if machine_text is not None:
            machine = str(Path(tmp) / machine_name)
            Path(machine).write_text(machine_text)
        try:
            found = compute_point(str(model), Point(point.chips, point.layout, point.precision, machine), None,
                                  settings, keep_program=True)
        except Exception as e:  # noqa: BLE001 -- a failed point is a row, not the sweep's end
            return {"error": _one_line(e)}
    return found


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if isinstance(e, LpucError) else f"{type(e).__name__}: {text}"


def _local_point(model: str, point: Point, cache: str | None, settings: Fixed) -> dict:
    try:
        return compute_point(model, point, cache, settings)
    except Exception as e:  # noqa: BLE001 -- a failed point is a row, not the sweep's end
        return {"error": _one_line(e)}


def row(point: Point, found: dict, tokens: int | None) -> dict:
    """A sweep's row: the point, what its compile and run found (deterministic), and `wall`."""
    base = {"chips": point.chips, "layout": point.layout or "default", "precision": point.precision,
            "machine": point.machine}
    if "error" in found:
        return {**base, "error": found["error"], "wall": {"seconds": round(found.get("seconds", 0.0), 3)}}
    report, run = found["report"], found["run"]
    out = {**base, "partition": report["partition"], "machine_name": report["machine"],
           "cycles": report["cycles"], "latency_us": report["latency_us"],
           "lower_bound_cycles": report["lower_bound_cycles"], "gap": report["gap"],
           **{k: report[k] for k in ("tokens_per_s", "per_token_us") if k in report},
           **run, "schedule_sha256": report["schedule_sha256"]}
    if "prefill" in found:
        prefill = found["prefill"]
        out.update(ttft_us=prefill["latency_us"], prefill_cycles=prefill["cycles"],
                   prefill_schedule_sha256=prefill["schedule_sha256"])
    if tokens and "per_token_us" in report:
        out["tokens_ms"] = round(tokens * report["per_token_us"] / 1000, 3)
    out["wall"] = {"seconds": round(found["seconds"], 3), "cached": found["hit"],
                   "compile_seconds": report["cache"].get("compiled_seconds", report["compile_seconds"])
                   if "cache" in report else report["compile_seconds"]}
    return out


def sweep(model: str | Path, chips, layouts=(None,), precisions=("fp16",), machines=("tsp-v1",), *,
          tokens: int | None = None, jobs: int | None = None, ray: str | None = None, cache: str | Path | None = None,
          effort: float | None = None, prefill: str | Path | None = None, progress=None) -> list[dict]:
    """Every combination compiled (cache first) and run timing-only: a row each, in combination order
    (`lpuc sweep`; docs/design.md, "Sweeps"). `jobs`: local worker processes (default: the cores);
    `ray`: "auto" or a cluster's address, each point a Ray task; `cache`: the build cache's directory
    (None: no cache); `prefill`: a decode step's prefill graph, compiled beside each point for its time to
    first token; `progress(line)`: a line per finished point with an estimate of the time left.
    Ctrl-C stops it: finished points stay in the cache."""
    from .cache import lookup

    model = str(model)
    if not Path(model).is_file():
        raise LpucError(f"{model}: no such file")
    for text in map(str, machines):
        from ..ir.machine import read_machine

        read_machine(text)  # an unknown machine is the sweep's error, not every point's
    todo = combinations(chips, layouts, precisions, [str(m) for m in machines])
    if prefill is not None and not Path(prefill).is_file():
        raise LpucError(f"{prefill}: no such file")
    settings = fixed(model, effort, None if prefill is None else str(prefill))
    found: dict[int, dict] = {}
    directory = Path(cache) if cache else None
    if directory:  # cache first: a point whose program and run are recorded costs a lookup
        for i, point in enumerate(todo):
            hit = _recorded(model, point, directory, settings, lookup)
            if hit:
                found[i] = hit
    say = progress or (lambda line: None)
    total, start = len(todo), time.perf_counter()
    for i in sorted(found):
        say(f"[{len(found)}/{total}] {todo[i].label()}: {found[i]['report']['cycles']:,} cycles (cache hit)")
    rest = [i for i in range(total) if i not in found]
    computed = 0

    def finished(i: int, result: dict) -> None:
        nonlocal computed
        found[i] = result
        computed += 1
        elapsed = time.perf_counter() - start
        left = elapsed / computed * (len(rest) - computed)
        what = result["error"] if "error" in result else f"{result['report']['cycles']:,} cycles"
        say(f"[{len(found)}/{total}] {todo[i].label()}: {what}; {elapsed:.0f} s so far, about {left:.0f} s left")

    if rest:
        if ray:
            _on_ray(model, todo, rest, ray, directory, settings, finished)
        else:
            _on_processes(model, todo, rest, jobs, directory, settings, finished)
    return [row(todo[i], found[i], tokens) for i in range(total)]


def _key(model: str, point: Point, settings: Fixed) -> str:
    """The point's build-cache key, as its compile computes it."""
    from .driver import cache_key

    return cache_key(model, point.machine, _options(point, settings), {}, False)


def _prefill_key(point: Point, settings: Fixed, step: dict) -> str:
    from .driver import cache_key

    options, states = _prefill_options(point, settings, step)
    return cache_key(settings.prefill, point.machine, options, {}, False, states)


def _recorded(model: str, point: Point, directory: Path, settings: Fixed, lookup) -> dict | None:
    """The point's recorded compile and run (and its prefill's compile), or None."""
    from .driver import cached_report

    key = _key(model, point, settings)
    entry = lookup(directory, key)
    if entry is None or entry.run is None:
        return None
    found = {"report": cached_report(entry.report, key), "run": entry.run, "seconds": 0.0, "hit": True}
    if settings.prefill:
        prefill_key = _prefill_key(point, settings, entry.report)
        prefill = lookup(directory, prefill_key)
        if prefill is None:
            return None
        found["prefill"] = cached_report(prefill.report, prefill_key)
    return found


def _on_processes(model, todo, rest, jobs, directory, settings, finished) -> None:
    import multiprocessing
    import os

    workers = max(1, min(jobs or os.cpu_count() or 1, len(rest)))
    cache = str(directory) if directory else None
    if workers == 1:
        for i in rest:
            finished(i, _local_point(model, todo[i], cache, settings))
        return
    # Workers ignore Ctrl-C: the sweep itself stops them (terminate), so none lives on after it.
    pool = multiprocessing.get_context().Pool(workers, initializer=_ignore_interrupts)
    try:
        for i, result in pool.imap_unordered(_indexed_point, [(i, model, todo[i], cache, settings) for i in rest]):
            finished(i, result)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


def _ignore_interrupts() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _indexed_point(task) -> tuple[int, dict]:
    i, *point = task
    return i, _local_point(*point)


def _on_ray(model, todo, rest, address, directory, settings, finished) -> None:
    try:
        import ray
    except ImportError:
        raise LpucError(RAY_HINT) from None
    joined = not ray.is_initialized()  # else the caller's session: theirs to end
    if joined:
        try:
            if address == "auto":
                try:  # the cluster `ray start` made, else a local one (on the loopback interface: it is ours alone)
                    ray.init(address="auto", log_to_driver=False)
                except ConnectionError:
                    ray.init(log_to_driver=False, _node_ip_address="127.0.0.1")
            else:
                ray.init(address=address, log_to_driver=False)
        except Exception as e:  # noqa: BLE001 -- Ray's many ways of not connecting: one line
            raise LpucError(f"--ray {address}: cannot join the cluster: {_one_line(e)}") from None
    try:
        _ray_points(ray, model, todo, rest, directory, settings, finished)
    finally:
        if joined:  # leave the cluster (a local one we started stops with it): nothing outlives the sweep
            ray.shutdown()


def _ray_points(ray, model, todo, rest, directory, settings, finished) -> None:
    from ..ir.machine import SHIPPED

    task = ray.remote(num_cpus=1)(_remote_point)
    model_ref = ray.put(Path(model).read_bytes())
    machines = {}
    for point in (todo[i] for i in rest):
        shipped = not point.machine.endswith(".toml") and (SHIPPED / f"{point.machine}.toml").is_file()
        machines[point.machine] = None if shipped else Path(point.machine).read_text()
    prefill_ref = ray.put(Path(settings.prefill).read_bytes()) if settings.prefill else None
    pending = {task.remote(Path(model).name, model_ref, Path(todo[i].machine).name, machines[todo[i].machine],
                           todo[i], settings, prefill_ref): i for i in rest}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(done[0])
            try:
                result = ray.get(done[0])
            except Exception as e:  # noqa: BLE001 -- a lost worker or task: that point's row
                result = {"error": f"Ray: {_one_line(e)}"}
            if "error" not in result and directory:
                _record(directory, _key(model, todo[i], settings), result)
                if settings.prefill:
                    _record(directory, _prefill_key(todo[i], settings, result["report"]),
                            {"program": result.pop("prefill_program"), "report": result["prefill"]})
            result.pop("program", None)
            result.pop("prefill_program", None)
            finished(i, result)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise


def _record(directory: Path, key: str, result: dict) -> None:
    """A remote compile's program, report (and run), recorded in the driver's cache."""
    from .cache import store, store_run

    store(directory, key, result["program"], result["report"])
    if "run" in result:
        store_run(directory, key, result["run"])


# --- output -----------------------------------------------------------------------------------------

COLUMNS = (("chips", "chips"), ("layout", "partition"), ("precision", "precision"), ("machine", "machine_name"),
           ("cycles", "cycles"), ("latency us", "latency_us"), ("tokens/s", "tokens_per_s"), ("TTFT us", "ttft_us"),
           ("N tokens ms", "tokens_ms"), ("SRAM peak MiB", "sram_peak_bytes"), ("gap to bound", "bound_gap"),
           ("compile s", None), ("cache", None))
_OPTIONAL = {"tokens_per_s", "ttft_us", "tokens_ms"}  # shown when some row has them


def _columns(rows: list[dict]):
    return [(t, k) for t, k in COLUMNS if k not in _OPTIONAL or any(k in r for r in rows)]


def _cell(r: dict, key: str | None, title: str) -> str:
    if "error" in r and key not in ("chips", "precision"):
        return {"layout": r["layout"], "machine": Path(r["machine"]).stem, "cycles": "error: " + r["error"]
                }.get(title, "")
    if title == "compile s":
        return f"{r['wall']['compile_seconds']:.1f}"
    if title == "cache":
        return "hit" if r["wall"]["cached"] else "miss"
    if title == "layout" and r["layout"] not in ("default", r["partition"]):  # what was asked, beside what came
        return f"{r['partition']} ({r['layout']})"
    value = r.get(key)
    if value is None:
        return ""
    if key == "sram_peak_bytes":
        return f"{value / 2 ** 20:.1f}"
    if key == "bound_gap":
        return f"{value:.1%}"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(rows: list[dict]) -> str:
    columns = _columns(rows)
    cells = [[title for title, _ in columns]] + [[_cell(r, key, title) for title, key in columns] for r in rows]
    widths = [max(len(c[j]) for c in cells if not c[j].startswith("error")) for j in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells)


def csv_text(rows: list[dict]) -> str:
    import csv
    import io

    fields = ["chips", "layout", "partition", "precision", "machine", "machine_name", "cycles", "latency_us",
              "tokens_per_s", "per_token_us", "aggregate_tokens_per_s", "ttft_us", "prefill_cycles", "tokens_ms",
              "sram_peak_bytes",
              "lower_bound_cycles", "gap", "physical_bound_cycles", "bound_gap", "schedule_sha256", "error",
              "compile_seconds", "cached"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "compile_seconds": r["wall"].get("compile_seconds", ""),
                         "cached": r["wall"].get("cached", "")})
    return out.getvalue()


# --- the HTML page: self-contained, no script, no network -------------------------------------------

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")


def _series_name(r: dict) -> str:
    return f"{r['layout']} {r['precision']} {Path(r['machine']).stem}"


def _plot(title: str, x_label: str, y_label: str, series: dict[str, list[tuple[float, float]]]) -> str:
    """One SVG line plot: a polyline and its dots per series, linear axes from zero, a legend."""
    from html import escape

    w, h, left, right, top, bottom = 640, 320, 70, 170, 30, 45
    xs = [x for pts in series.values() for x, _ in pts] or [1]
    ys = [y for pts in series.values() for _, y in pts] or [1]
    x_max, y_max = max(xs) or 1, max(ys) or 1

    def px(x):
        return left + (w - left - right) * x / x_max

    def py(y):
        return h - bottom - (h - top - bottom) * y / y_max

    parts = [f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" '
             f'role="img" aria-label="{escape(title)}">',
             f'<text x="{w / 2 - right / 2}" y="18" text-anchor="middle" class="t">{escape(title)}</text>',
             f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" class="ax"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" class="ax"/>',
             f'<text x="{(left + w - right) / 2}" y="{h - 8}" text-anchor="middle">{escape(x_label)}</text>',
             f'<text x="14" y="{(top + h - bottom) / 2}" text-anchor="middle" transform="rotate(-90 14 '
             f'{(top + h - bottom) / 2})">{escape(y_label)}</text>']
    distinct = sorted(set(xs))  # integer axes (chips, a chip's index): their own values when few, else steps
    x_ticks = distinct if len(distinct) <= 8 else [round(x_max * k / 4) for k in range(5)]
    for x in x_ticks:
        parts.append(f'<text x="{px(x)}" y="{h - bottom + 16}" text-anchor="middle">{x:,}</text>')
    for k in range(5):
        parts.append(f'<text x="{left - 6}" y="{py(y_max * k / 4) + 4}" text-anchor="end">{y_max * k / 4:,.3g}</text>')
    for n, (name, pts) in enumerate(series.items()):
        colour = _COLOURS[n % len(_COLOURS)]
        pts = sorted(pts)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="'
                     + " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts) + '"/>')
        parts += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"/>' for x, y in pts]
        parts.append(f'<text x="{w - right + 10}" y="{top + 16 * n + 10}" fill="{colour}">{escape(name)}</text>')
    return "".join(parts) + "</svg>"


def html_page(rows: list[dict], model: str) -> str:
    """The sweep as one offline page: its table, latency and (for a decode step) tokens/s against
    chips, and each point's MXM utilization chip by chip."""
    from html import escape

    ok = [r for r in rows if "error" not in r]
    by_series: dict[str, list[dict]] = {}
    for r in ok:
        by_series.setdefault(_series_name(r), []).append(r)
    plots = [_plot("Latency of one run", "chips", "latency (us)",
                   {name: [(r["chips"], r["latency_us"]) for r in rs] for name, rs in by_series.items()})]
    if any("tokens_per_s" in r for r in ok):
        plots.append(_plot("Tokens/s at batch 1 (one decode step a token)", "chips", "tokens/s",
                           {name: [(r["chips"], r["tokens_per_s"]) for r in rs if "tokens_per_s" in r]
                            for name, rs in by_series.items()}))
    plots.append(_plot("MXM utilization of each chip", "chip", "MXM utilization",
                       {f"{r['chips']} chip{'s' if r['chips'] > 1 else ''}, {_series_name(r)}": list(enumerate(r["mxm_utilization"]))
                        for r in ok}))
    columns = _columns(rows)
    head = "".join(f"<th>{escape(t)}</th>" for t, _ in columns)
    body = "".join("<tr>" + "".join(f"<td>{escape(_cell(r, key, t))}</td>" for t, key in columns) + "</tr>"
                   for r in rows)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<title>lpuc sweep: {escape(Path(model).name)}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin: 12px 0 24px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th {{ background: #f3f3f3; }}
svg.plot {{ display: block; margin: 12px 0 24px; font-size: 11px; }}
svg .t {{ font-size: 14px; font-weight: 600; }}
svg .ax {{ stroke: #444; }}
</style></head><body>
<h1>lpuc sweep: {escape(Path(model).name)}</h1>
<p>{len(rows)} points ({len(rows) - len(ok)} failed), each an exact schedule run timing-only.</p>
<table id="points"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<section id="plots">{"".join(plots)}</section>
</body></html>
"""
