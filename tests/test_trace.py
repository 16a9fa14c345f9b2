"""Timelines as Chrome trace-event JSON (backends/trace.py): `lpuc viz --perfetto` (the
schedule) and `lpuc run --trace` (what the interpreter executed), checked against the
trace-event format, against the interpreter, and for chip-to-chip flows."""

from __future__ import annotations

import json
from collections import Counter
from fractions import Fraction

import pytest

from lpuc.backends import interpreter
from lpuc.backends.lpu import build_program, read_lpu, write_lpu
from lpuc.backends.trace import Transfer, chrome_trace, flow_pair, static_trace, trace_json, validate
from lpuc.compiler.cli import main
from lpuc.compiler.driver import compile_model, lpu_options
from lpuc.compiler.inputs import random_inputs
from lpuc.compiler.pipeline import CompileOptions

from helpers import SAMPLES, run_cli

MODEL = SAMPLES / "llama_prefill.onnx"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """(path of the .lpu, Program, interpreter Result) of the bundled tiny Llama."""
    options = CompileOptions()
    module, summary, machine_text = compile_model(MODEL, "tsp-v1", options)
    path = tmp_path_factory.mktemp("trace") / "llama.lpu"
    write_lpu(path, module, machine_text, lpu_options(options), summary.facts())
    program = read_lpu(path)
    result = interpreter.run(program, random_inputs(program.module, 0))
    return path, program, result


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def instructions(doc) -> list[dict]:
    return [e for e in doc["traceEvents"] if e["ph"] == "X" and e.get("cat") == "instruction"]


# --- the format -------------------------------------------------------------------------

def test_static_trace_is_what_the_interpreter_executes(compiled):
    _, program, result = compiled
    assert static_trace(program) == result.trace
    assert len(result.trace) == result.stats.instructions


def test_trace_event_format(compiled):
    _, program, result = compiled
    doc = json.loads(trace_json(program, result.trace, source="interpreter"))
    assert set(doc) == {"traceEvents", "displayTimeUnit", "otherData"} and doc["displayTimeUnit"] == "ns"
    assert validate(doc) == []
    for ev in doc["traceEvents"]:
        assert {"ph", "ts", "pid", "tid", "name"} <= set(ev), ev
        if ev["ph"] == "X":
            assert ev["dur"] >= 0
    meta = [e for e in doc["traceEvents"] if e["ph"] == "M"]
    assert {"name": "chip0 (tsp-v1)"} in [e["args"] for e in meta if e["name"] == "process_name"]
    names = {e["args"]["name"] for e in meta if e["name"] == "thread_name"}
    units = {f"vxm{i}" for i in range(16)} | {f"mxm{i}" for i in range(4)} | {"sxm0", "sxm1", "mem0", "mem1",
                                                                               "host0"}
    assert units <= names
    ports = names - units
    assert ports and all(n.startswith("slice ") and n.split()[-1] in ("read", "write") for n in ports)


def test_every_instruction_exactly_once_with_its_facts(compiled):
    _, program, result = compiled
    doc = chrome_trace(program, result.trace)
    events = instructions(doc)
    labels = Counter(e["args"]["instruction"] for e in events)
    assert labels == Counter(t.instruction for t in result.trace)
    assert set(labels.values()) == {1}
    clock = Fraction(program.machine.clock_mhz)
    tid_name = {e["tid"]: e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "thread_name"}
    by_label = {t.instruction: t for t in result.trace}
    for e in events:
        a, t = e["args"], by_label[e["args"]["instruction"]]
        assert (a["cycle"], a["occupancy"], a["latency"], a["unit"]) == (t.start, t.end - t.start,
                                                                         t.land - t.start, t.unit)
        assert tid_name[e["tid"]] == t.unit and e["name"] == t.op
        assert abs(e["ts"] - float(t.start / clock)) <= 0.0005  # µs, rounded to whole ns
        assert abs(e["ts"] + e["dur"] - float(t.end / clock)) <= 0.001
        assert len(a["operands"]) == len(a["operand_extents"]) and a["results"]
    matmul = next(e for e in events if e["name"] == "mxm.matmul")
    assert matmul["args"]["result_extents"][0] and all(len(x) == 3 for x in matmul["args"]["result_extents"][0])


def test_sram_counter_peaks_where_the_interpreter_measures(compiled):
    _, program, result = compiled
    doc = chrome_trace(program, result.trace)
    live = [e for e in doc["traceEvents"] if e["ph"] == "C" and e["name"] == "SRAM live"]
    assert max(e["args"]["bytes"] for e in live) == result.stats.sram_peak_bytes
    assert live[-1]["args"]["bytes"] == 0
    slices = [e for e in doc["traceEvents"] if e["ph"] == "C" and e["name"].startswith("SRAM slice ")]
    assert slices and all(e["args"]["bytes"] >= 0 for e in slices)


# --- chip-to-chip flows -----------------------------------------------------------------------

def test_transfers_become_paired_flows_between_chips(compiled):
    _, program, _ = compiled
    transfers = [Transfer("kv to chip1", 0, 1, 3, 100, 160, 800, bytes=19200),
                 Transfer("back", 1, 0, 3, 900, 920, 1500, bytes=640)]
    doc = chrome_trace(program, transfers=transfers)
    assert validate(doc) == []
    flows = [e for e in doc["traceEvents"] if e["ph"] in ("s", "f")]
    pairs = Counter((e["cat"], e["id"], e["ph"]) for e in flows)
    assert len(flows) == 4 and set(pairs.values()) == {1}
    assert {(c, i) for c, i, ph in pairs if ph == "s"} == {(c, i) for c, i, ph in pairs if ph == "f"}
    procs = {e["pid"]: e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "process_name"}
    assert procs == {1: "chip0 (tsp-v1)", 2: "chip1 (tsp-v1)"}
    links = [e for e in doc["traceEvents"] if e["ph"] == "X" and e["cat"] == "link"]
    assert {(e["pid"], e["name"]) for e in links} == {(1, "kv to chip1"), (2, "kv to chip1"), (2, "back"),
                                                      (1, "back")}
    tracks = {(e["pid"], e["args"]["name"]) for e in doc["traceEvents"] if e["name"] == "thread_name"}
    assert {(1, "link 3"), (2, "link 3")} <= tracks


def test_trace_chips_keeps_only_their_tracks(compiled):
    _, program, _ = compiled
    transfers = [Transfer("kv to chip1", 0, 1, 3, 100, 160, 800, bytes=19200),
                 Transfer("back", 1, 0, 3, 900, 920, 1500, bytes=640)]
    whole = chrome_trace(program, transfers=transfers)
    doc = chrome_trace(program, transfers=transfers, chips=[1])
    assert validate(doc) == []
    assert {e["pid"] for e in doc["traceEvents"]} == {2}  # chip 1 alone: its link ends, no flow arrows
    assert not [e for e in doc["traceEvents"] if e["ph"] in ("s", "f")]
    assert sorted(e["name"] for e in doc["traceEvents"] if e["ph"] == "X") == ["back", "kv to chip1"]
    only0 = chrome_trace(program, transfers=transfers, chips=[0])
    assert instructions(only0) == instructions(whole)  # every instruction of this program is on chip 0
    assert chrome_trace(program, transfers=transfers, chips=[0, 1]) == whole


def test_flow_pair_and_the_checker():
    s, f = flow_pair(7, "x", "transfer", (1, 10000, 0.5), (2, 10000, 1.25))
    assert (s["ph"], f["ph"], s["id"], f["id"], s["cat"], f["cat"]) == ("s", "f", 7, 7, "transfer", "transfer")
    with pytest.raises(ValueError):
        flow_pair(1, "x", "t", (1, 1, 2.0), (1, 1, 1.0))
    slice_ = {"ph": "X", "name": "a", "pid": 1, "tid": 1, "ts": 0, "dur": 2}
    assert validate({"traceEvents": [slice_, s, f]}) == []
    assert "1 start(s), 0 finish(es)" in validate({"traceEvents": [s]})[0]
    assert validate({"traceEvents": [slice_, dict(slice_, ts=1)]})  # partial overlap on one track
    assert validate({"traceEvents": [{"ph": "X", "name": "a", "pid": 1, "ts": 0, "dur": 1}]})  # no tid


# --- the commands --------------------------------------------------------------------------------

def test_run_trace_writes_the_executed_instructions(compiled, tmp_path, capsys):
    path, program, result = compiled
    out = tmp_path / "run.json"
    code, stdout, _ = run(capsys, "run", path, "--trace", out, "--json")
    assert code == 0 and json.loads(stdout)["trace"] == str(out)
    doc = json.loads(out.read_text())
    assert validate(doc) == [] and doc["otherData"]["source"] == "interpreter"
    executed = interpreter.run(program, random_inputs(program.module, 0)).trace
    assert sorted((e["args"]["instruction"], e["args"]["cycle"], e["args"]["unit"]) for e in instructions(doc)) \
        == sorted((t.instruction, t.start, t.unit) for t in executed)


def test_viz_perfetto_writes_the_schedule(compiled, tmp_path, capsys):
    path, program, _ = compiled
    out = tmp_path / "sched.json"
    code, _, err = run(capsys, "viz", path, "--perfetto", out)
    assert code == 0 and f"wrote {out}" in err
    assert out.read_bytes() == trace_json(program)
    assert json.loads(out.read_bytes())["otherData"]["source"] == "schedule"


def test_viz_perfetto_gzip_and_chips(tmp_path, capsys):
    import gzip

    program = tmp_path / "four.lpu"
    assert main(["compile", str(SAMPLES / "llama_decode.onnx"), "-o", str(program), "--chips", "4",
                 "--scheduler", "list"]) == 0
    capsys.readouterr()
    plain, packed = tmp_path / "t.json", tmp_path / "t.json.gz"
    code, _, err = run(capsys, "viz", program, "--perfetto", plain, "--trace-chips", "1-2")
    assert code == 0 and f"wrote {plain} (" in err and "ui.perfetto.dev" in err
    doc = json.loads(plain.read_bytes())
    assert validate(doc) == [] and {e["pid"] for e in doc["traceEvents"]} == {2, 3} and instructions(doc)
    code, _, err = run(capsys, "viz", program, "--perfetto", packed, "--trace-chips", "1-2")
    assert code == 0 and gzip.decompress(packed.read_bytes()) == plain.read_bytes()
    first = packed.read_bytes()
    assert run(capsys, "viz", program, "--perfetto", packed, "--trace-chips", "1-2")[0] == 0
    assert packed.read_bytes() == first  # no timestamp in the gzip header: the same bytes
    for argv, words in ((["--perfetto", tmp_path / "u.json", "--trace-chips", "2-9"], ["4 chips", "chip 9"]),
                        (["--perfetto", tmp_path / "u.json.zip"], ["--perfetto", "'.zip'"]),
                        (["--perfetto", tmp_path / "u.gz"], ["TRACE.json.gz"]),
                        (["--html", tmp_path / "u.html", "--trace-chips", "1"], ["--trace-chips", "--perfetto"])):
        code, _, err = run(capsys, "viz", program, *argv)
        assert code == 2 and len(err.splitlines()) == 1 and all(str(w) in err for w in words), err
    code, _, err = run_cli(capsys, "viz", program, "--perfetto", tmp_path / "u.json", "--trace-chips", "3-1")
    assert code == 2 and "expected chips and ranges" in err
    assert not list(tmp_path.glob("u.*"))


def test_viz_perfetto_compiles_a_model_first(tmp_path, capsys):
    out = tmp_path / "m.json"
    code, _, err = run(capsys, "viz", SAMPLES / "gpt2_decode.onnx", "--perfetto", out)
    assert code == 0 and "compiling" in err
    doc = json.loads(out.read_text())
    assert validate(doc) == [] and instructions(doc)


@pytest.mark.parametrize("argv, words", [
    (["run", "{lpu}", "--trace", "{tmp}/t.txt"], ["--trace", "'.txt'", ".json"]),
    (["run", "{lpu}", "--trace", "{tmp}/no/such/dir/t.json"], ["cannot write", "no such directory"]),
    (["run", "{tmp}/missing.lpu", "--trace", "{tmp}/t.json"], ["missing.lpu", "no such file"]),
    (["viz", "{lpu}", "--perfetto", "{tmp}/t.csv"], ["--perfetto", "'.csv'"]),
    (["viz", "{lpu}", "--perfetto", "{tmp}/d.json"], ["cannot write", "is a directory"]),
])
def test_bad_trace_arguments(compiled, tmp_path, capsys, argv, words):
    argv = [a.format(lpu=compiled[0], tmp=tmp_path) for a in argv]
    (tmp_path / "d.json").mkdir()
    code, _, err = run(capsys, *argv)
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lpuc: error: "), err
    assert all(w in lines[0] for w in words), lines[0]
    assert not list(tmp_path.glob("t.*"))


def test_build_program_and_file_give_one_trace(compiled):
    path, program, _ = compiled
    fresh = build_program(program.module, program.machine_text, program.options, program.manifest["summary"])
    assert trace_json(fresh) == trace_json(program)
