"""The HTML report (backends/report.py): its data, the page's structure, and the
page itself in headless Chromium (no network): no errors, one timeline element per
instruction, a screenshot that is not blank.

The browser test opens the report of the largest sample (by instruction count,
compiled for one chip); it is skipped only when `chromium` is not installed (CI
installs it: .ci/run)."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from lpuc.backends.interpreter import run, schedule_stats
from lpuc.backends.lpu import build_program, read_lpu, write_lpu
from lpuc.backends.report import analyze, decode_batch, described_stats, render_html, report_data
from lpuc.compiler.driver import compile_model, load_model, lpu_options
from lpuc.compiler.lower import lower
from lpuc.compiler.pipeline import CompileOptions
from lpuc.ir import machine_ops as mo
from lpuc.ir.costs import units
from lpuc.ir.machine import load_machine
from lpuc.ir.target import Target

from helpers import SAMPLES

MAX_BYTES = 5 * 1024 * 1024
DATA_RE = re.compile(r'<script type="application/json" id="lpuc-data">(.*?)</script>', re.S)
INSTR_RE = re.compile(r'<rect class="(instr\b[^"]*)"[^>]*\bdata-i="(\d+)"')  # the timeline's elements


def largest_sample() -> Path:
    """The sample with the most machine instructions (lowering alone tells; cheap)."""
    target = Target(load_machine())

    def count(path):
        return sum(1 for op in lower(load_model(path)[0], target).ops if mo.unit_class(op.name))
    return max(sorted(SAMPLES.glob("*.onnx")), key=count)


def compile_program(path: Path):
    options = CompileOptions()
    module, summary, machine_text = compile_model(path, options=options)
    return build_program(module, machine_text, lpu_options(options), summary.facts())


@pytest.fixture(scope="module")
def largest():
    return compile_program(largest_sample())


@pytest.fixture(scope="module")
def page(largest):
    return render_html(largest)


def embedded(page_text: str) -> dict:
    """The page's data (of a page of many chips, its gzip-compressed `core` unpacked, with its chunks)."""
    import base64
    import gzip

    m = DATA_RE.search(page_text)
    assert m, "no embedded JSON data block"
    data = json.loads(m.group(1))
    if "core" in data:
        assert set(data) == {"core", "chunks", "detailed"}
        core = json.loads(gzip.decompress(base64.b64decode(data["core"])))
        assert not set(core) & {"chunks", "detailed"}
        return {**core, "chunks": data["chunks"], "detailed": data["detailed"]}
    return data


def timed_instructions(program) -> int:
    return sum(1 for op in program.module.ops if mo.unit_class(op.name) and op.attrs.get("cycle") is not None)


# --- the data --------------------------------------------------------------------------

def test_embedded_json_is_the_report_data(largest, page):
    data = embedded(page)
    assert data == json.loads(json.dumps(report_data(largest)))
    n = timed_instructions(largest)
    assert len(data["instrs"]) == len(data["details"]) == n == \
        schedule_stats(largest.module, largest.target).instructions
    rows = data["rows"]
    assert all(0 <= r < len(rows) for r, *_ in data["instrs"])
    # every instruction sits on its own unit's row
    for (r, start, occ, lat, op, cls), d, op_ in zip(data["instrs"], data["details"],
                                                     [o for o in largest.module.ops if mo.unit_class(o.name)]):
        assert rows[r]["unit"] == op_.attrs["unit"] and start == op_.attrs["cycle"] and data["ops"][op] == op_.name
        assert 0 < occ <= lat and f"%{d['results'][0][0]} = {data['ops'][op]}" == op_.label()


def test_summary_matches_the_schedule(largest, page):
    s = embedded(page)["summary"]
    stats = schedule_stats(largest.module, largest.target)
    facts = largest.manifest["summary"]
    assert s["cycles"] == largest.cycles == stats.cycles
    assert s["latency_us"] == pytest.approx(stats.latency_us)
    assert s["instructions"] == stats.instructions and s["chips"] == 1
    assert s["lower_bound_cycles"] == facts["lower_bound_cycles"] and s["bound"] == facts["bound"]
    assert s["gap"] == pytest.approx(s["cycles"] / s["lower_bound_cycles"] - 1)
    assert s["sram_peak_bytes"] == stats.sram_peak_bytes
    assert s["model"] == largest.module.name and s["machine"] == "tsp-v1"
    if s["decode"]:
        assert s["tokens_per_s"] == pytest.approx(s["batch"] * 1e6 / s["latency_us"])
    else:
        assert s["tokens_per_s"] is None


def test_decode_is_a_kv_cache_input_and_one_token():
    for path in sorted(SAMPLES.glob("*.onnx")):
        module = load_model(path)[0]
        batch = decode_batch(SimpleNamespace(module=module))
        assert batch == (1 if "decode" in path.stem else None), path.name


def test_utilization_and_links(largest, page):
    data = embedded(page)
    stats = schedule_stats(largest.module, largest.target)
    working = {ins.attrs["unit"] for ins in largest.module.ops if "unit" in ins.attrs and "cycle" in ins.attrs}
    assert {r["unit"]: r["busy"] for r in data["rows"]} == {u: b for u, b in stats.busy.items() if u in working}
    # one chip: only the units that do work have rows; the idle ones (every rx/tx among them) are counted
    assert all(r["n"] > 0 for r in data["rows"]) and not any(r["cls"] in ("rx", "tx") for r in data["rows"])
    counts = units(largest.machine)
    assert len(data["rows"]) + sum(data["folded"].values()) == sum(counts.values())
    assert data["folded"]["rx"] == counts["rx"] and data["folded"]["tx"] == counts["tx"]
    for c in data["class_rows"]:
        assert c["busy"] == stats.class_busy[c["cls"]]
        assert c["util"] == pytest.approx(stats.class_utilization[c["cls"]])
    assert sum(r["n"] for r in data["rows"]) == len(data["instrs"])
    assert data["links"] == {"used": False, "rows": [], "links_per_chip": largest.machine.c2c.links}


def test_sram_occupancy_peaks_where_the_interpreter_says(largest, page):
    data = embedded(page)
    (chip,) = data["sram"]["chips"]
    assert len(chip["slices"]) == largest.machine.sram.slices
    for steps in chip["slices"] + [chip["total"]]:
        times, levels = steps[0::2], steps[1::2]
        assert times == sorted(set(times)) and min(levels, default=0) >= 0
        assert not levels or levels[-1] == 0  # everything is freed by the end
    assert chip["peak_words"] * largest.machine.sram.word_bytes == \
        schedule_stats(largest.module, largest.target).sram_peak_bytes
    assert chip["max_slice_words"] <= largest.machine.sram.words_per_slice


def test_critical_path_is_a_chain_of_reads_after_writes(largest):
    a = analyze(largest)
    chain = a.critical
    assert chain and a.instrs[chain[-1].instr].land == a.cycles == largest.cycles
    assert chain[0].producer is None and chain[0].wait == a.instrs[chain[0].instr].start
    for prev, step in zip(chain, chain[1:]):
        ins, producer = a.instrs[step.instr], a.instrs[step.producer]
        assert step.producer == prev.instr
        assert step.ready == producer.land <= ins.start and step.wait == ins.start - producer.land >= 0
        # the producer made (the words of) the named operand, through views
        pos = [v.name for v in ins.op.operands].index(step.operand)
        assert step.producer in ins.producers[pos]
    latency = sum(a.instrs[s.instr].lat for s in chain)
    assert chain[0].wait + latency + sum(s.wait for s in chain[1:]) == a.cycles
    assert latency <= largest.manifest["summary"]["critical_path_cycles"]


def test_deterministic_and_from_a_file(largest, page, tmp_path):
    assert render_html(largest) == page
    path = tmp_path / "m.lpu"
    write_lpu(path, largest.module, largest.machine_text, largest.options, largest.manifest["summary"])
    assert render_html(read_lpu(path)) == page


def test_with_a_run_result(tmp_path):
    path = SAMPLES / "gpt2_decode.onnx"
    program = compile_program(path)
    inputs = dict(np.load(SAMPLES / "gpt2_decode.inputs.npz"))
    result = run(program, inputs)
    data = embedded(render_html(program, result))
    assert data["summary"]["measured"] and data["run"]["hazard_count"] == 0
    assert [o["name"] for o in data["run"]["outputs"]] == sorted(result.outputs)
    assert data["run"]["trace_events"] == len(data["instrs"])
    assert data["summary"]["tokens_per_s"] == pytest.approx(1e6 / result.stats.latency_us)


# --- the page's structure ------------------------------------------------------------------

def test_self_contained(page):
    assert len(page.encode()) < MAX_BYTES
    assert not re.search(r"https?://", page, re.I), "the page names a URL"
    # no way to load anything: no src/href attributes, CSS imports or urls but #fragments, no fetch APIs
    assert not re.search(r"""\s(src|href|srcset|action|poster|data)\s*=\s*["']?[^"'#\s>]""", page, re.I)
    assert not re.search(r"@import|url\((?!#)|\bfetch\(|XMLHttpRequest|WebSocket|EventSource|\bimport\(", page)
    assert "default-src 'none'" in page  # and the page's own policy forbids it
    assert page.count("<script") == 3 and "</script>" not in DATA_RE.search(page).group(1)


def test_json_block_cannot_be_closed_early():
    from lpuc.backends.report import _json_for_script

    tricky = {"name": "</script><!--<script>&"}
    text = _json_for_script(tricky)
    assert "<" not in text and ">" not in text and json.loads(text) == tricky


# --- the page in headless Chromium -----------------------------------------------------------

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI installs it: .ci/run)")


def chromium(args: list[str], profile: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Headless Chromium on a fresh profile, without network (no proxy, every host unresolvable)."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-extensions", "--no-proxy-server", "--host-resolver-rules=MAP * ~NOTFOUND",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def page_errors(done: subprocess.CompletedProcess) -> list[str]:
    """What went wrong in a page Chromium opened: console lines, and the notes the page shows itself."""
    notes = re.search(r'<div id="lpuc-errors"[^>]*>(.*?)</div>', done.stdout, re.S)
    return ([line for line in done.stderr.splitlines() if re.search(r"CONSOLE[:(]|Uncaught", line)]
            + ([notes.group(1)] if notes and notes.group(1).strip() else []))


def read_png(path: Path) -> np.ndarray:
    """RGB(A) pixels of an 8-bit, non-interlaced PNG (what Chromium writes): zlib and the five filters."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        (n,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    assert depth == 8 and color in (2, 6) and interlace == 0
    bpp = 4 if color == 6 else 3
    raw, stride = zlib.decompress(idat), w * bpp
    prev = bytearray(stride)
    rows = []
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if f == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif f == 2:
            line = bytearray((np.frombuffer(line, np.uint8) + np.frombuffer(prev, np.uint8)).tobytes())
        elif f == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 255
        elif f == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return np.frombuffer(b"".join(rows), np.uint8).reshape(h, w, bpp)


@pytest.fixture(scope="module")
def report_file(page, tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(page)
    return path


@needs_chromium
def test_page_renders_in_chromium(largest, page, report_file, tmp_path):
    done = chromium(["--virtual-time-budget=5000", "--dump-dom", report_file.as_uri()], tmp_path / "profile")
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert 'data-rendered="1"' in dom, "the page's script did not finish"
    # (1) no errors: the page's collector (window.onerror, console.error, failed loads) and Chromium's log
    errors = re.search(r'<div id="lpuc-errors"[^>]*>(.*?)</div>', dom, re.S)
    assert errors and errors.group(1).strip() == "", errors.group(1) if errors else dom[:2000]
    assert 'id="lpuc-errors" class="errors" hidden' in dom
    # the page never logs: any console line (an uncaught error, a CSP violation ...) is a failure
    console = [line for line in done.stderr.splitlines() if re.search(r"CONSOLE[:(]|Uncaught", line)]
    assert not console, "\n".join(console)
    # (2) one timeline element per instruction, in order; the critical path marked
    elements = [(cls.split(), int(i)) for cls, i in INSTR_RE.findall(dom)]
    assert [i for _, i in elements] == list(range(timed_instructions(largest)))
    crit = [i for cls, i in elements if "crit" in cls]
    assert crit == sorted(step.instr for step in analyze(largest).critical)
    assert "no chip-to-chip links used" in dom.lower()
    for section in ("summary", "timeline", "sram", "links", "util", "crit"):
        assert f'id="{section}"' in dom


@needs_chromium
def test_screenshot_is_not_blank(report_file, tmp_path):
    shot = tmp_path / "report.png"
    done = chromium(["--virtual-time-budget=5000", "--window-size=1400,900", f"--screenshot={shot}",
                     report_file.as_uri()], tmp_path / "profile")
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    px = read_png(shot)[:, :, :3]
    assert px.shape[:2] == (900, 1400)
    colours = np.unique(px.reshape(-1, 3) // 8, axis=0)  # coarse colours: anti-aliasing aside
    assert len(colours) >= 20, f"{len(colours)} colours: blank?"
    assert px.std() > 10
    # the timeline's unit colours are there (mxm blue, vxm green, sxm orange)
    for rgb in ((0x4c, 0x78, 0xa8), (0xf2, 0x8e, 0x2b)):
        close = (np.abs(px.astype(int) - rgb).sum(axis=2) < 30).sum()
        assert close > 200, f"colour {rgb} hardly on screen ({close} px)"


@pytest.fixture(scope="module")
def many_chips():
    from lpuc.compiler.pipeline import compile_module
    from lpuc.ir.machine import read_machine

    machine, text = read_machine("tsp-v1")
    module, summary = compile_module(load_model(SAMPLES / "llama_decode.onnx")[0], machine,
                                     CompileOptions(scheduler="list", chips=4, partition="pipeline"))
    return build_program(module, text, lpu_options(CompileOptions(scheduler="list", chips=4)), summary.facts())


def test_many_chips_links_and_chips(many_chips):
    data = embedded(render_html(many_chips))
    sends = [op for op in many_chips.module.ops if op.name == "c2c.send"]
    assert data["links"]["used"] and sum(r["transfers"] for r in data["links"]["rows"]) == len(sends)
    assert {r["chip"] for r in data["links"]["rows"]} <= {0, 1, 2, 3}
    assert data["summary"]["chips"] == 4


@needs_chromium
def test_many_chips_page_renders_in_chromium(many_chips, tmp_path):
    path = tmp_path / "many.html"
    path.write_text(render_html(many_chips))
    done = chromium(["--virtual-time-budget=5000", "--dump-dom", path.as_uri()], tmp_path / "profile")
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert 'data-rendered="1"' in dom
    errors = re.search(r'<div id="lpuc-errors"[^>]*>(.*?)</div>', dom, re.S)
    assert errors and errors.group(1).strip() == ""
    links = re.search(r'<div id="links">(.*?)</section>', dom, re.S)
    assert links and "<table" in links.group(1) and "No chip-to-chip links" not in links.group(1)
    # the overview: shown (hidden on one chip), a row drawn per chip, cells inked, and on screen
    overview = re.search(r'<canvas id="overview"([^>]*)>', dom)
    assert overview and 'data-rows="4"' in overview.group(1), dom[:2000]
    assert int(re.search(r'data-cells="(\d+)"', overview.group(1)).group(1)) > 0
    assert '<section id="overview-section">' in dom
    shot = tmp_path / "many.png"
    chromium(["--virtual-time-budget=5000", "--window-size=1400,900", f"--screenshot={shot}", path.as_uri()],
             tmp_path / "profile2")
    band = read_png(shot)[250:420, :, :3]  # the overview, under the summary cards: coloured, not blank
    assert len(np.unique(band.reshape(-1, 3) // 8, axis=0)) >= 8 and band.std() > 10


def test_many_chips_overview_data(many_chips):
    data = embedded(render_html(many_chips))
    ov = data["overview"]
    assert [c["chip"] for c in ov["chips"]] == [0, 1, 2, 3]
    assert all(len(c["busy"]) == len(c["cls"]) == ov["bins"] for c in ov["chips"])
    assert all(0 <= b <= 100 for c in ov["chips"] for b in c["busy"]) and any(b == 100 for c in ov["chips"]
                                                                                 for b in c["busy"])
    sends = [op for op in many_chips.module.ops if op.name == "c2c.send"]
    assert sum(p[2] for p in ov["pairs"]) == sum(link["bytes"] for link in data["links"]["rows"]) > 0
    assert all(src != dst for src, dst, *_ in ov["pairs"]) and len(sends) >= len(ov["pairs"])
    assert [st[0] for st in ov["critical"]] == [data["rows"][data["instrs"][i][0]]["chip"]
                                                for i in data["critical"]["chain"]]
    # a chip busy in a span of time has a class there, and its busy share is what the instructions hold
    total = sum(r["busy"] for r in data["rows"] if r["chip"] == 1 and r["cls"] == "host")
    width = ov["cycles"] / ov["bins"]
    host = data["classes"].index("host")
    share = sum(b for c, b in zip(ov["chips"][1]["cls"], ov["chips"][1]["busy"]) if c == host) / 100 * width
    assert share == pytest.approx(total, rel=0.05)


@needs_chromium
def test_sixteen_chips_show_one_chip_at_a_time(tmp_path):
    """Beyond 8 chips the timeline draws one chip (the critical path's busiest, or the one picked), not every
    chip."""
    from lpuc.compiler.pipeline import compile_module
    from lpuc.ir.machine import read_machine

    machine, text = read_machine("tsp-v1")
    options = CompileOptions(scheduler="list", chips=16)
    module, summary = compile_module(load_model(SAMPLES / "llama_decode.onnx")[0], machine, options)
    program = build_program(module, text, lpu_options(options), summary.facts())
    page = render_html(program)
    data = embedded(page)
    focus = data["overview"]["focus"]
    path = tmp_path / "sixteen.html"
    path.write_text(page)
    done = chromium(["--virtual-time-budget=5000", "--dump-dom", path.as_uri()], tmp_path / "profile")
    assert done.returncode == 0 and 'data-rendered="1"' in done.stdout, done.stderr[-2000:]
    assert not page_errors(done)
    drawn = [int(i) for i in re.findall(r'class="instr[^"]*" data-i="(\d+)"', done.stdout)]
    on_focus = [i for i, ins in enumerate(program.facts.scheduled) if ins.chip == focus]
    assert drawn == on_focus and 0 < len(drawn) < data["summary"]["instructions"]
    assert re.search(r'<canvas id="overview"[^>]*data-rows="16"', done.stdout)
    picker = re.search(r'<select id="chip-pick">(.*?)</select>', done.stdout, re.S).group(1)
    assert picker.count("<option") == 16 and "all" not in picker
    assert len(re.findall(r"<tr data-chip=\"\d+\"", done.stdout)) == 16  # the chip table
    # the shown chip's packed details and SRAM steps were unpacked in the page (gzip, base64)
    assert f'data-unpacked="{focus}"' in done.stdout
    # an address naming another chip and one of its instructions: that chip drawn, the instruction's
    # details (unpacked in the page) in the panel
    other = next(c for c in range(16) if c != focus and c != data["overview"]["critical"][-1][0])
    instr = next(i for i, ins in reversed(list(enumerate(program.facts.scheduled)))
                 if ins.chip == other and ins.op.results and ins.op.operands)
    done = chromium(["--virtual-time-budget=5000", "--dump-dom", f"{path.as_uri()}#chip={other}&i={instr}"],
                    tmp_path / "profile3")
    assert 'data-rendered="1"' in done.stdout and f'data-unpacked="{other}"' in done.stdout and not page_errors(done)
    drawn = [int(i) for i in re.findall(r'class="instr[^"]*" data-i="(\d+)"', done.stdout)]
    assert drawn == [i for i, ins in enumerate(program.facts.scheduled) if ins.chip == other]
    panel = re.search(r'<div id="details" class="details">(.*?)</div>', done.stdout, re.S).group(1)
    op = program.facts.scheduled[instr].op
    assert f"%{op.results[0].name}" in panel and str(op.results[0].type) in panel
    assert all(f"%{v.name}" in panel for v in op.operands) and f"instruction {instr}," in panel


def unpack_chunk(part: dict) -> tuple[list[int], list[list], list[dict], list[list[int]], list[int]]:
    """A chip's packed chunk read back the way the page's unpackPart reads it: (indices, instrs, details,
    slices, total)."""
    from itertools import accumulate

    from lpuc.backends.report import KINDS

    def steps(p):
        return [x for pair in zip(accumulate(p[0]), accumulate(p[1])) for x in pair]

    index, start, k = (list(accumulate(part[c])) for c in ("i", "start", "k"))
    instrs = [list(r) for r in zip(part["row"], start, part["occ"], part["lat"], part["op"], part["cls"])]
    attrs = {j: dict(part["attr_table"][t] for t in a) for j, a in part["attrs"]}

    def extents(flat):
        out = []
        for j in range(0, len(flat), 3):
            before = out[-1] if out else [0, 0, 0]
            out.append([b + d for b, d in zip(before, flat[j:j + 3])])
        return out

    def value(v):
        return [part["values"][v], part["types"][part["value_types"][v]]]

    def operand(i, e):
        o = dict(zip(("name", "type"), value(e[0])))
        if e[1]:
            o["kind"] = KINDS[e[1]]
        if e[2]:
            o["producers"] = [i - q for q in e[2]]
        if len(e) > 3:
            o["views"], o["sources"] = [part["values"][v] for v in e[3]], [part["values"][v] for v in e[4]]
        return o
    details = []
    for j, i in enumerate(index):
        d = {"k": k[j], "out": [extents(e) for e in part["out"][j]], "reads": [extents(e) for e in part["reads"][j]],
             "streams": part["streams"][j],
             "results": [value(v) for v in part["results"][j]],
             "operands": [operand(i, e) for e in part["operands"][j]]}
        if j in attrs:
            d["attrs"] = attrs[j]
        details.append(d)
    return index, instrs, details, [steps(s) for s in part["slices"]], steps(part["total"])


def test_many_chips_pack_each_chip_apart(monkeypatch):
    """Beyond 8 chips a chip's instructions, details and SRAM steps are a gzip chunk each: unpacked, what
    the page had."""
    import base64
    import gzip

    import lpuc.backends.report as report
    from lpuc.compiler.pipeline import compile_module
    from lpuc.ir.machine import read_machine

    machine, text = read_machine("tsp-v1")
    options = CompileOptions(scheduler="list", chips=16)
    module, summary = compile_module(load_model(SAMPLES / "llama_decode.onnx")[0], machine, options)
    program = build_program(module, text, lpu_options(options), summary.facts())
    packed = report_data(program)
    monkeypatch.setattr(report, "ONE_CHIP_BEYOND", 100)
    whole = report_data(program)
    assert packed["details"] is None and whole.get("chunks") is None
    chips = [whole["rows"][a[0]]["chip"] for a in whole["instrs"]]
    for entry in whole["sram"]["chips"]:
        part = json.loads(gzip.decompress(base64.b64decode(packed["chunks"][str(entry["chip"])])))
        index, instrs, details, slices, total = unpack_chunk(part)
        assert index == [i for i, c in enumerate(chips) if c == entry["chip"]]
        assert instrs == [whole["instrs"][i] for i in index]
        assert details == [{k: v for k, v in whole["details"][i].items() if k != "crit"} for i in index]
        assert slices == entry["slices"] and total == entry["total"]
    # the critical path's instructions stay unpacked, with their labels
    steps = whole["critical"]["steps"]
    assert {int(i) for i in packed["instrs"]} >= {s[0] for s in steps} | {s[1] for s in steps if s[1] is not None}
    for i, name in packed["labels"].items():
        results = whole["details"][int(i)]["results"]
        assert packed["instrs"][i] == whole["instrs"][int(i)]
        assert name == (f"%{results[0][0]} = " if results else "") + whole["ops"][whole["instrs"][int(i)][4]]

def test_many_chips_numbers_are_lpuc_runs(tmp_path, capsys):
    """The page's cycles, each chip's instructions, SRAM peak and utilization, and each link's bytes are
    what `lpuc run --json` prints for the same program (16 chips: the page packs each chip apart)."""
    from helpers import run_cli

    lpu = tmp_path / "sixteen.lpu"
    code, _, err = run_cli(capsys, "compile", SAMPLES / "llama_decode.onnx", "--chips", 16, "--scheduler", "list",
                           "--no-cache", "-o", lpu)
    assert code == 0, err
    code, out, err = run_cli(capsys, "run", lpu, "--json", "--timing-only")
    assert code == 0, err
    ran = json.loads(out)
    data = embedded(render_html(read_lpu(lpu)))
    assert data["chunks"] and data["summary"]["cycles"] == ran["cycles"]
    assert data["summary"]["instructions"] == ran["instructions"]
    assert data["summary"]["sram_peak_bytes"] == ran["sram_peak_bytes"]
    assert data["per_chip"] == ran["per_chip"] and len(data["per_chip"]) == 16
    assert [[x["link"], x["bytes"], x["busy"], x["transfers"]] for x in data["links"]["rows"]] == \
        [[x["link"], x["bytes"], x["busy_cycles"], x["transfers"]] for x in ran["links"]]
    assert sum(p[2] for p in data["overview"]["pairs"]) == ran["transfer_bytes"] > 0
    assert [c["chip"] for c in data["overview"]["chips"]] == list(range(16))  # a row per chip


@pytest.fixture(scope="module")
def stamped(tmp_path_factory):
    """A program stamped from a layer template (five layers of a tiny decoder on one chip)."""
    import subprocess
    import sys

    import lpuc
    from helpers import ROOT

    path = tmp_path_factory.mktemp("stamped") / "tiny.onnx"
    subprocess.run([sys.executable, str(ROOT / "samples" / "shape_only.py"), "tiny", "--mode", "decode", "--seq", "5",
                    "--past", "6", "--layers", "5", "--dtype", "float32", "--weights", "random", "-o", str(path)],
                   check=True, capture_output=True)
    program = lpuc.compile(path, precision="fp32", scheduler="list")
    assert program.module.pieces
    return program


def test_layer_templates_are_marked_with_their_pieces(stamped):
    pieces = embedded(render_html(stamped))["pieces"]
    module, a = stamped.module, analyze(stamped)
    assert [[t, n] for t, _, n in pieces["templates"]] == sorted(
        [t, sum(p.template == t for p in module.pieces)] for t in {p.template for p in module.pieces})
    by_op = {ins.k: ins for ins in a.instrs}
    assert [s[1] for s in pieces["spans"]] == list(range(len(module.pieces)))  # one chip: a span per piece
    for (t, n, chip, lo, hi), piece in zip(pieces["spans"], module.pieces):
        ins = [by_op[k] for k in piece.ops if k in by_op]
        assert t == piece.template and chip == 0
        assert lo == min(i.start for i in ins) and hi == max(i.end for i in ins)
    assert embedded(render_html(compile_program(SAMPLES / "llama_decode.onnx")))["pieces"] is None


@needs_chromium
def test_layer_templates_drawn_in_chromium(stamped, tmp_path):
    path = tmp_path / "stamped.html"
    path.write_text(render_html(stamped))
    done = chromium(["--virtual-time-budget=5000", "--dump-dom", path.as_uri()], tmp_path / "profile")
    assert 'data-rendered="1"' in done.stdout, done.stderr[-2000:]
    assert not page_errors(done)
    drawn = re.findall(r'<rect class="piece( first)?" data-span="(\d+)"', done.stdout)
    assert [int(j) for _, j in drawn] == list(range(len(stamped.module.pieces)))  # the whole run is in view
    assert sum(1 for first, _ in drawn if first) == len({p.template for p in stamped.module.pieces})
    assert re.search(r'<div id="templates" class="hint muted">Layer templates', done.stdout)


@pytest.fixture(scope="module")
def sixteen(tmp_path_factory):
    """llama_decode on 16 chips (the list scheduler), as a .lpu."""
    from lpuc.compiler.cli import main

    lpu = tmp_path_factory.mktemp("sixteen") / "sixteen.lpu"
    assert main(["compile", str(SAMPLES / "llama_decode.onnx"), "--chips", "16", "--scheduler", "list",
                 "--no-cache", "-o", str(lpu)]) == 0
    return lpu


def test_detail_chips_keep_every_chips_timing_and_some_chips_details(sixteen):
    import base64
    import gzip

    program = read_lpu(sixteen)
    data = report_data(program, detail_chips=[3, 5])
    assert data["detailed"] == [3, 5]
    whole = report_data(program)
    assert whole["detailed"] == list(range(16))  # within the budget: every chip
    timing = {"i", "row", "start", "occ", "lat", "op", "cls", "total"}
    for chip, chunk in data["chunks"].items():
        part = json.loads(gzip.decompress(base64.b64decode(chunk)))
        full = json.loads(gzip.decompress(base64.b64decode(whole["chunks"][chip])))
        assert part == (full if int(chip) in (3, 5) else {k: full[k] for k in timing})


@needs_chromium
def test_a_chip_without_details_says_how_to_get_them(sixteen, tmp_path, capsys):
    from helpers import run_cli

    page = tmp_path / "r.html"
    code, _, err = run_cli(capsys, "viz", sixteen, "--html", page, "--detail-chips", "0-2")
    assert code == 0, err
    program = read_lpu(sixteen)
    instr, chip = next((i, ins.chip) for i, ins in enumerate(program.facts.scheduled) if ins.chip > 2)
    done = chromium(["--virtual-time-budget=5000", "--dump-dom", f"{page.as_uri()}#chip={chip}&i={instr}"],
                    tmp_path / "profile")
    assert 'data-rendered="1"' in done.stdout, done.stderr[-2000:]
    assert not page_errors(done)
    drawn = [int(i) for i in re.findall(r'class="instr[^"]*" data-i="(\d+)"', done.stdout)]
    assert drawn == [i for i, ins in enumerate(program.facts.scheduled) if ins.chip == chip]  # its timing
    panel = re.search(r'<div id="details" class="details">(.*?)</div>', done.stdout, re.S).group(1)
    assert "chips 0-2 only" in panel and f"--detail-chips {chip}" in panel
    assert f"cycle {program.facts.scheduled[instr].cycle:,}" in panel


def test_detail_chips_errors(sixteen, tmp_path, capsys):
    from helpers import run_cli

    for argv, words in ((["--html", tmp_path / "u.html", "--detail-chips", "9-16"], ["16 chips", "chip 16"]),
                        (["--perfetto", tmp_path / "u.json", "--detail-chips", "1"], ["--detail-chips", "--html"]),
                        (["--html", tmp_path / "u.html", "--detail-chips", "x"], ["expected chips and ranges"])):
        code, _, err = run_cli(capsys, "viz", sixteen, *argv)
        assert code == 2 and len(err.strip().splitlines()) == 1 and all(str(w) in err for w in words), err
    assert not list(tmp_path.glob("u.*"))


def test_the_page_keeps_to_its_size_by_leaving_out_details(sixteen, monkeypatch):
    """By default a page of many chips holds the details of as many chips as fit PAGE_BYTES, those the
    critical path spends the most cycles on first, and at least one (the chip it opens on)."""
    import lpuc.backends.report as report

    program = read_lpu(sixteen)
    full = render_html(program)
    assert embedded(full)["detailed"] == list(range(16))
    order = report._by_critical_cycles(analyze(program))
    monkeypatch.setattr(report, "PAGE_BYTES", 1)
    data = embedded(render_html(program))
    assert data["detailed"] == [order[0]] == [data["overview"]["focus"]]
    one = len(render_html(program))
    second = len(render_html(program, detail_chips=order[:2]))
    # (the page's size is reckoned with every chip in `detailed`: a few bytes over, never under)
    for budget, kept in ((second + 64, 2), (second - 1, 1), ((second + len(full)) // 2, None)):
        monkeypatch.setattr(report, "PAGE_BYTES", budget)
        page = render_html(program)
        detailed = embedded(page)["detailed"]
        assert sorted(order[:len(detailed)]) == detailed and len(detailed) == (kept or len(detailed))
        assert len(page) <= budget and 1 < len(detailed) < 16 if kept is None else len(page) <= max(budget, one)


def test_chips_packed_beside_give_the_same_page(sixteen, monkeypatch):
    """Chips are packed two at a time, every second one in a forked copy (ir.beside), and a page's details stop at
    its budget: the page is the same when all are packed here."""
    import lpuc.backends.report as report
    from lpuc.ir import beside

    program = read_lpu(sixteen)
    order = report._by_critical_cycles(analyze(program))
    monkeypatch.setattr(report, "PAGE_BYTES", (len(render_html(program)) + len(render_html(program,
                                                                                          detail_chips=order[:2]))) // 2)
    pages = []
    for fork in (beside.FORK, False):
        monkeypatch.setattr(beside, "FORK", fork)
        pages += [render_html(program), render_html(program, detail_chips=[1, 2, 7])]
    assert pages[:2] == pages[2:]
    assert 1 < len(embedded(pages[0])["detailed"]) < 16 and embedded(pages[1])["detailed"] == [1, 2, 7]


@pytest.mark.parametrize("which", ["largest", "many_chips", "stamped", "sixteen"])
def test_the_reports_statistics_are_the_interpreters(which, request):
    """The report sums its statistics from the program's description (ir.schedule_facts); the interpreter derives
    them on its own: both give the same Stats, field by field (links, SRAM peaks, per chip)."""
    program = request.getfixturevalue(which)
    if not hasattr(program, "module"):
        program = read_lpu(program)
    a = analyze(program)
    ours, theirs = described_stats(a, a.facts.sram_live()), schedule_stats(program.module, program.target)
    assert ours == theirs
    assert ours.instructions > 0 and (ours.links or program.target.chips == 1)
