"""Bad input to `lpuc compile` and `lpuc run`: ONE line on stderr,
`lpuc: error: ...`, exit code 2, no traceback, nothing written at -o.

Damaged .lpu files, wrong inputs, bad machine descriptions, --chips 2, a model
that does not fit, and a program with a hazard."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lpuc.backends.lpu import FORMAT_VERSION, _pack, read_lpu, write_lpu
from lpuc.compiler.cli import main
from lpuc.compiler.driver import compile_model
from lpuc.ir.attributes import AttrDict
from lpuc.ir.core import Op
from lpuc.ir.costs import cost
from lpuc.ir.layout import sub_extents, view_extents, words
from lpuc.ir.machine import SHIPPED, load_machine
from lpuc.ir import machine_ops as mo

from helpers import assert_one_line_error, run_cli, LANES, ROOT, SAMPLES

SAMPLE = SAMPLES / "gpt2_prefill.onnx"
INPUTS = SAMPLES / "gpt2_prefill.inputs.npz"
TSP_V1 = (SHIPPED / "tsp-v1.toml").read_text()


lpuc = run_cli


def one_error_line(code, out, err, *words) -> str:
    assert out == "", out
    return assert_one_line_error(code, err, *words)


@pytest.fixture(scope="module")
def good_lpu(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "gpt2.lpu"
    assert main(["compile", str(SAMPLE), "-o", str(path)]) == 0
    return path


# --- damaged .lpu files ---------------------------------------------------------------

def _flipped(data: bytes) -> bytes:
    i = len(data) // 2
    return data[:i] + bytes([data[i] ^ 0x5A]) + data[i + 1:]


def _parts(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _with_manifest(data: bytes, **changes) -> bytes:
    """A well-formed container (hashes intact) whose manifest says something else."""
    parts = _parts(data)
    manifest = json.loads(parts["manifest.json"])
    manifest.update(changes)
    parts["manifest.json"] = (json.dumps(manifest, sort_keys=True, indent=1) + "\n").encode()
    return _pack(parts)


def _with_part(data: bytes, name: str, content: bytes) -> bytes:
    parts = _parts(data)
    parts[name] = content
    return _pack(parts)


DAMAGED = {
    "flipped-byte": (_flipped, []),
    "flipped-first-byte": (lambda d: bytes([d[0] ^ 1]) + d[1:], ["not a valid .lpu file"]),
    "truncated": (lambda d: d[: len(d) // 3], ["not a valid .lpu file"]),
    "truncated-tail": (lambda d: d[:-7], []),
    "empty": (lambda d: b"", ["not a valid .lpu file"]),
    "format-version-next": (lambda d: _with_manifest(d, format_version=FORMAT_VERSION + 1),
                            [f".lpu format version {FORMAT_VERSION + 1}", f"reads versions 3 and {FORMAT_VERSION}",
                             "recompile"]),
    "other-format": (lambda d: _with_manifest(d, format="onnx"), ["not a .lpu file"]),
    "program-edited": (lambda d: _with_part(d, "program.ir", _parts(d)["program.ir"] + b"\n"),
                       ["program.ir", "sha256"]),
}


@pytest.mark.parametrize("case", DAMAGED)
def test_damaged_lpu(tmp_path, capsys, good_lpu, case):
    damage, words_ = DAMAGED[case]
    bad = tmp_path / "bad.lpu"
    bad.write_bytes(damage(good_lpu.read_bytes()))
    out = tmp_path / "out.npz"
    code, stdout, err = lpuc(capsys, "run", bad, "--inputs", INPUTS, "-o", out)
    one_error_line(code, stdout, err, "bad.lpu", *words_)
    assert not out.exists()


def test_missing_lpu(tmp_path, capsys):
    code, out, err = lpuc(capsys, "run", tmp_path / "nowhere.lpu", "-o", tmp_path / "out.npz")
    one_error_line(code, out, err, "nowhere.lpu", "no such file")
    assert not (tmp_path / "out.npz").exists()


# --- wrong inputs to `lpuc run` -------------------------------------------------------------

def _inputs(**changes) -> dict:
    with np.load(INPUTS) as f:
        d = {k: f[k] for k in f.files}
    d.update(changes)
    return {k: v for k, v in d.items() if v is not None}


BAD_INPUTS = {
    "unknown-name": (_inputs(bogus=np.zeros(3, np.float32)), ["unknown input(s): bogus"]),
    "missing-name": (_inputs(position_ids=None), ["missing input(s): position_ids"]),
    "renamed": (_inputs(input_ids=None, token_ids=np.zeros((1, 7), np.int64)), ["input_ids"]),
    "wrong-shape": (_inputs(input_ids=np.zeros((1, 5), np.int64)), ["input_ids", "[1, 5]", "[1, 7]"]),
    "wrong-rank": (_inputs(input_ids=np.zeros(7, np.int64)), ["input_ids", "[7]", "[1, 7]"]),
    "wrong-dtype": (_inputs(input_ids=np.zeros((1, 7), np.int32)), ["input_ids", "int32", "int64"]),
    "float-ids": (_inputs(input_ids=np.zeros((1, 7), np.float32)), ["input_ids", "float32", "int64"]),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_run_inputs(tmp_path, capsys, good_lpu, case):
    inputs, words_ = BAD_INPUTS[case]
    npz = tmp_path / "in.npz"
    np.savez(npz, **inputs)
    out = tmp_path / "out.npz"
    code, stdout, err = lpuc(capsys, "run", good_lpu, "--inputs", npz, "-o", out)
    one_error_line(code, stdout, err, *words_)
    assert not out.exists()


# --- machine descriptions, --chips -------------------------------------------------------------

def _machine_file(tmp: Path, text: str) -> Path:
    path = tmp / "bad.toml"
    path.write_text(text)
    return path


BAD_MACHINES = {
    "not-toml": (lambda: 'name = "x"\nclock_mhz = \n', ["bad.toml", "not valid TOML"]),
    "not-toml-binary": (lambda: "\x00\x01\x02", ["bad.toml", "TOML"]),
    "missing-key": (lambda: re.sub(r"(?m)^read_ports.*\n", "", TSP_V1), ["bad.toml", "sram.read_ports"]),
    "missing-table": (lambda: TSP_V1.replace("[mxm]", "[mxm_planes]"), ["bad.toml", "mxm"]),
    "negative": (lambda: TSP_V1.replace("words_per_slice = 8192", "words_per_slice = -8192"),
                 ["bad.toml", "sram.words_per_slice", "-8192"]),
    "zero-clock": (lambda: TSP_V1.replace("clock_mhz = 900", "clock_mhz = 0"), ["bad.toml", "clock_mhz"]),
    "wrong-type": (lambda: TSP_V1.replace("planes = 4", 'planes = "four"'), ["bad.toml", "mxm.planes"]),
}


@pytest.mark.parametrize("case", BAD_MACHINES)
def test_bad_machine_file(tmp_path, capsys, case):
    text, words_ = BAD_MACHINES[case]
    machine = _machine_file(tmp_path, text())
    out = tmp_path / "m.lpu"
    code, stdout, err = lpuc(capsys, "compile", SAMPLE, "-o", out, "--machine", machine)
    one_error_line(code, stdout, err, *words_)
    assert not out.exists()


@pytest.mark.parametrize("name", ["tsp-v9", "groq", "missing.toml"])
def test_unknown_machine(tmp_path, capsys, name):
    out = tmp_path / "m.lpu"
    code, stdout, err = lpuc(capsys, "compile", SAMPLE, "-o", out, "--machine", name)
    one_error_line(code, stdout, err, name)
    assert not out.exists()


@pytest.mark.parametrize("chips, words_", [("9", ["dragonfly cannot have 9 chips", "nearest sizes", "are 8 and 16"]),
                                           ("300", ["cannot have 300 chips", "whole racks of 72", "are 288 and 360"]),
                                           ("10441", ["at most 10440 chips"]),
                                           ("0", ["at least 1"]), ("-3", ["at least 1"])])
def test_bad_chip_counts(tmp_path, capsys, chips, words_):
    out = tmp_path / "m.lpu"
    code, stdout, err = lpuc(capsys, "compile", SAMPLE, "-o", out, "--chips", chips)
    one_error_line(code, stdout, err, f"--chips {chips}", *words_)
    assert not out.exists()


def test_model_does_not_fit(tmp_path, capsys):
    """A machine with 88 slices of 64 words: 1.8 MB of SRAM for a model needing ~3 MB."""
    text = TSP_V1.replace("words_per_slice = 8192", "words_per_slice = 64").replace('name = "tsp-v1"',
                                                                                    'name = "tiny"')
    machine = _machine_file(tmp_path, text)
    out = tmp_path / "m.lpu"
    code, stdout, err = lpuc(capsys, "compile", SAMPLE, "-o", out, "--machine", machine, "--chips", "1",
                             "--precision", "fp32")  # (fp32 weights: at fp16 the sample fits)
    line = one_error_line(code, stdout, err, "does not fit", "tiny")
    assert not out.exists()
    available = load_machine(machine).sram.chip_bytes
    assert available == 88 * 64 * 320
    m = re.search(r"needs (\d+) bytes.*has (\d+) bytes.*fit on (\d+) chips", line)
    assert m, line
    needed, have, chips = map(int, m.groups())
    assert have == available and needed > available
    assert chips == -(-needed // available) >= 2


def test_without_chips_a_model_too_big_for_one_chip_spreads(tmp_path, capsys):
    """The default chip count: the fewest chips (of a size the topology has) that hold the model."""
    text = TSP_V1.replace("words_per_slice = 8192", "words_per_slice = 64").replace('name = "tsp-v1"',
                                                                                    'name = "tiny"')
    machine = _machine_file(tmp_path, text)
    out = tmp_path / "m.lpu"
    code, stdout, err = lpuc(capsys, "compile", SAMPLE, "-o", out, "--machine", machine, "--json",
                             "--precision", "fp32")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["chips"] >= 2 and len(report["partition_chips"]) == report["chips"]
    assert read_lpu(out).module.attrs["chips"] == report["chips"]


# --- a program with a hazard -----------------------------------------------------------------

def _raw_perturbed(module, machine):
    """The program with one instruction moved to the cycle before one of its operands lands
    (proved from ir.costs here): (module, the moved instruction's label)."""
    seg, land, producer = {}, {}, {}
    for op in module.ops:
        if mo.is_view(op.name):
            ext = view_extents(op.name, op.attrs, [v.type for v in op.operands], [seg[v.name] for v in op.operands],
                               LANES)
            seg[op.result.name] = ext
            land[op.result.name] = max(land[v.name] for v in op.operands)
            continue
        results = [] if op.name in ("mxm.install", "host.output") else list(op.results)
        writes, pos = [], 0
        for r in results:
            writes.append(sub_extents(op.attrs.get("out") or (), pos, words(r.type, LANES)))
            pos += words(r.type, LANES)
        if op.name == "mem.constant":
            seg[op.result.name], land[op.result.name] = writes[0], 0
            continue
        reads = [seg[v.name] for i, v in enumerate(op.operands)
                 if v.name in seg and op.name != "host.input" and not (op.name == "mxm.matmul" and i == 1)]
        c = cost(op, machine, reads, writes)
        for r, ext in zip(results, writes):
            seg[r.name], land[r.name] = ext, op.attrs["cycle"] + c.latency
            producer[r.name] = op
    # the vxm instruction whose operand lands last in the program, moved one cycle before that
    best = None
    for idx, op in enumerate(module.ops):
        if op.name.startswith("vxm."):
            ready = max(land[v.name] for v in op.operands if v.name in land)
            if best is None or ready > best[1]:
                best = (idx, ready)
    idx, ready = best
    op = module.ops[idx]
    assert op.attrs["cycle"] >= ready > ready - 1
    moved = Op(op.name, op.operands, op.results, AttrDict({**op.attrs, "cycle": ready - 1}))
    return module.replace(ops=module.ops[:idx] + (moved,) + module.ops[idx + 1:]), op.label()


@pytest.fixture(scope="module")
def hazard_lpu(tmp_path_factory):
    module, _, machine_text = compile_model(SAMPLE)
    bad, label = _raw_perturbed(module, load_machine("tsp-v1"))
    path = tmp_path_factory.mktemp("hazard") / "hazard.lpu"
    write_lpu(path, bad, machine_text)   # a well-formed file: the hazard is found by running it
    return path, label


def test_hazard_in_program(tmp_path, capsys, hazard_lpu):
    path, label = hazard_lpu
    out = tmp_path / "out.npz"
    code, stdout, err = lpuc(capsys, "run", path, "--inputs", INPUTS, "-o", out)
    line = one_error_line(code, stdout, err, "hazard at cycle", label)
    assert not out.exists()
    assert re.search(r"hazard at cycle \d+: ", line)


# --- one real process -----------------------------------------------------------------------------

def test_real_process(tmp_path, good_lpu, hazard_lpu):
    bad = tmp_path / "bad.lpu"
    bad.write_bytes(good_lpu.read_bytes()[:1000])
    for lpu, word in ((bad, "not a valid .lpu file"), (hazard_lpu[0], hazard_lpu[1])):
        out = tmp_path / "out.npz"
        r = subprocess.run([sys.executable, "-m", "lpuc.compiler", "run", str(lpu), "--inputs", str(INPUTS),
                            "-o", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2
        assert r.stdout == ""
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("lpuc: error: ") and word in lines[0], r.stderr
        assert not out.exists()
