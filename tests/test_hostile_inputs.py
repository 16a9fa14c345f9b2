"""Files and inputs made to break lpuc: each is refused at once in one line (exit 2), or, for a
program whose parts agree with the manifest's hashes but not with each other, caught before
cycle 0. A test per class of attack: a tampered SRAM image, forged manifest facts, cycles out of
range, IR nested too deep, a zip bomb, a huge sparse file, machine files nested too deep, devices
and FIFOs, forged .npy headers, an inputs zip bomb, NaN inputs."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lpuc.backends.interpreter import HazardError, run
from lpuc.backends.lpu import LpuFormatError, _pack, _unpack, build_program, load_lpu, read_lpu, sha256, write_lpu
from lpuc.compiler.driver import compile_model
from lpuc.compiler.pipeline import CompileOptions
from lpuc.ir import parse, print_module

from helpers import SAMPLES, PeakAllocated, assert_one_line_error, run_cli

SAMPLE = "gpt2_decode"
INPUTS = SAMPLES / f"{SAMPLE}.inputs.npz"


@pytest.fixture(scope="module")
def compiled():
    return compile_model(SAMPLES / f"{SAMPLE}.onnx", options=CompileOptions(scheduler="list"))


@pytest.fixture(scope="module")
def good(compiled, tmp_path_factory) -> Path:
    module, summary, machine_text = compiled
    path = tmp_path_factory.mktemp("lpu") / f"{SAMPLE}.lpu"
    write_lpu(path, module, machine_text, {"chips": 1}, summary.facts())
    return path


def forged(good: Path, tmp_path: Path, ir=None, image=None, manifest=None, machine=None) -> Path:
    """`good` with program.ir, image.bin, machine.toml and/or the manifest changed, and the manifest's
    part hashes made to match: a file every container check passes."""
    parts = _unpack(good.read_bytes(), str(good))
    if ir is not None:
        parts["program.ir"] = ir(parts["program.ir"].decode()).encode()
    if machine is not None:
        parts["machine.toml"] = machine(parts["machine.toml"].decode()).encode()
    if image is not None:
        parts["image.bin"] = image(bytearray(parts["image.bin"]))
    m = json.loads(parts["manifest.json"])
    if manifest is not None:
        manifest(m)
    m["parts"] = {k: sha256(v) for k, v in parts.items() if k != "manifest.json"}
    parts["manifest.json"] = json.dumps(m, sort_keys=True, indent=1).encode() + b"\n"
    path = tmp_path / "forged.lpu"
    path.write_bytes(_pack(parts))
    return path


# --- the SRAM image is checked against the program --------------------------------

def _flip(at: int):
    def change(data: bytearray) -> bytes:
        data[at] ^= 0xFF
        return bytes(data)
    return change


def _reverse_extents(text: str) -> str:
    """The first constant spanning several extents, its extents in reverse order."""
    line = next(line for line in text.splitlines() if "mem.constant" in line and "out = [[" in line
                and line.count("], [") >= 1)
    out = re.search(r"out = (\[\[.*?\]\])", line).group(1)
    extents = json.loads(out)
    return text.replace(line, line.replace(out, json.dumps(extents[::-1]).replace("],[", "], [")))


def _exchange_extents(text: str) -> str:
    """Two constants of the same size trade their extents."""
    outs = [re.search(r"out = (\[\[.*?\]\])", line).group(1) for line in text.splitlines()
            if "mem.constant" in line and "f32[96]" in line.split(":")[-1]]
    a, b = outs[0], outs[1]
    return text.replace(a, "@@").replace(b, a).replace("@@", b)


@pytest.mark.parametrize("attack", ["image-bytes", "reversed-extents", "exchanged-extents"])
def test_a_tampered_image_is_a_hazard_before_cycle_0(good, tmp_path, capsys, attack):
    change = {"image-bytes": {"image": _flip(100)}, "reversed-extents": {"ir": _reverse_extents},
              "exchanged-extents": {"ir": _exchange_extents}}[attack]
    path = forged(good, tmp_path, **change)
    program = read_lpu(path)  # every container and format check passes
    for timing_only in (False, True):
        with pytest.raises(HazardError) as e:
            run(program, dict(np.load(INPUTS)) if not timing_only else None, timing_only=timing_only)
        assert e.value.kind == "constant" and e.value.cycle == 0
        assert "mem.constant does not match the SRAM image" in str(e.value)
        assert re.search(r"slice \d+ word \d+", e.value.resource), e.value.resource
    assert_one_line_error(*run_cli(capsys, "run", path, "--inputs", INPUTS)[::2], "mem.constant", "SRAM image",
                          "word")


def test_constants_record_their_sha256_and_round_trip(good, compiled):
    program = read_lpu(good)
    constants = [op for op in program.module.ops if op.name == "mem.constant"]
    assert constants and all(len(op.attrs["sha256"]) == 64 for op in constants)
    assert parse(print_module(program.module)) == program.module
    # without weights there is nothing to hash: no sha256, and a timing-only run needs none
    module, _, machine_text = compiled
    shape_only = build_program(module, machine_text, weights=False)
    assert all("sha256" not in op.attrs for op in shape_only.module.ops if op.name == "mem.constant")
    assert run(shape_only, timing_only=True).stats.cycles == program.cycles


# --- the manifest's facts are recomputed ----------------------------------------------

@pytest.mark.parametrize("field, key", [("cycles", ("cycles",)), ("summary.instructions", ("summary", "instructions")),
                                        ("summary.sram_image_bytes", ("summary", "sram_image_bytes"))])
def test_forged_manifest_facts_are_refused(good, tmp_path, capsys, field, key):
    program = read_lpu(good)
    recorded = program.manifest[key[0]] if len(key) == 1 else program.manifest[key[0]][key[1]]

    def forge(m):
        (m if len(key) == 1 else m[key[0]])[key[-1]] = recorded + 1000

    path = forged(good, tmp_path, manifest=forge)
    for argv in (("--timing-only",), ("--inputs", INPUTS)):
        code, _, err = run_cli(capsys, "run", path, *argv)
        assert_one_line_error(code, err, "forged.lpu", f"manifest records {field} {recorded + 1000}",
                              f"takes {recorded}")


# --- cycles out of range ---------------------------------------------------------------

def _last_cycle(value: int):
    def change(text: str) -> str:
        *_, last = re.finditer(r"cycle = (\d+)", text)
        return text[:last.start(1)] + str(value) + text[last.end(1):]
    return change


def _shifted(text: str) -> str:
    """Every instruction 10^6 cycles earlier (the constants stay at 0)."""
    return re.sub(r"cycle = ([1-9]\d*)", lambda m: f"cycle = {int(m.group(1)) - 10**6}", text)


@pytest.mark.parametrize("attack", ["2^63", "10^30", "shifted by -10^6"])
def test_cycles_out_of_range_are_refused(good, tmp_path, capsys, attack):
    change = {"2^63": _last_cycle(2**63), "10^30": _last_cycle(10**30), "shifted by -10^6": _shifted}[attack]
    path = forged(good, tmp_path, ir=change)
    for argv in (("--timing-only",), ("--inputs", INPUTS)):
        code, _, err = run_cli(capsys, "run", path, *argv)
        assert_one_line_error(code, err, "hazard")
        assert re.search(r"cycle -?\d+", err), err


# --- IR nested too deep ---------------------------------------------------------------

@pytest.mark.parametrize("where", ["module", "op"])
def test_ir_nested_thousands_deep_is_refused(tmp_path, capsys, where):
    deep = "[" * 5000 + "1" + "]" * 5000
    text = (f"module @m attributes {{x = {deep}}} {{\n}}\n" if where == "module" else
            f"module @m {{\n  input %x : f32[1]\n  %y = graph.relu %x {{x = {deep}}} : f32[1]\n}}\n")
    path = tmp_path / "deep.ir"
    path.write_text(text)
    assert_one_line_error(*run_cli(capsys, "check", path)[::2], "deep.ir", "nested too deep")
    fine = "[" * 100 + "1" + "]" * 100  # as deep as allowed: parses (the verifier may refuse the attribute)
    path.write_text(text.replace(deep, fine))
    code, _, err = run_cli(capsys, "check", path)
    assert "nested too deep" not in err


# --- a zip bomb inside a .lpu ------------------------------------------------------------

def test_a_zip_bomb_is_refused_without_inflating_it(good, tmp_path):
    """A part deflated from 128 MiB of zeros (~130 kB in the file) is refused from the archive's directory."""
    parts = _unpack(good.read_bytes(), str(good))
    bomb = tmp_path / "bomb.lpu"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name in sorted(parts):
            if name == "image.bin":
                with zf.open(name, "w", force_zip64=True) as f:
                    for _ in range(128):
                        f.write(bytes(1 << 20))
            else:
                zf.writestr(name, parts[name])
    assert bomb.stat().st_size < 2 << 20
    with PeakAllocated() as peak, pytest.raises(LpuFormatError, match="part image.bin is compressed"):
        read_lpu(bomb)
    assert peak.bytes < 16 << 20, f"{peak.bytes:,} bytes allocated to refuse it"


def test_a_huge_file_that_does_not_end_as_a_lpu_is_refused_unread(tmp_path):
    """A sparse 64 GiB file (no disk used) is refused from its last bytes, before it is read."""
    path = tmp_path / "huge.lpu"
    with path.open("wb") as f:
        f.truncate(64 << 30)
    with PeakAllocated() as peak, pytest.raises(LpuFormatError, match="does not end with the directory of its 5 parts"):
        read_lpu(path)
    assert peak.bytes < 1 << 20, f"{peak.bytes:,} bytes allocated to refuse it"


# --- machine files nested too deep ---------------------------------------------------------

@pytest.mark.parametrize("nesting", ["array", "inline table", "dotted key", "dotted table"])
@pytest.mark.parametrize("where", ["--machine", "in a .lpu"])
def test_machine_files_nested_too_deep_are_refused_at_once(good, tmp_path, capsys, nesting, where):
    """tomllib recurses into nested values (RecursionError), and its time and memory grow with the
    square of a dotted name's parts (30,000 parts: gigabytes)."""
    n = 30000
    deep = {"array": "x = " + "[" * n + "]" * n, "inline table": "x = " + "{a = " * n + "1" + "}" * n,
            "dotted key": ".".join(["a"] * n) + " = 1", "dotted table": "[" + ".".join(["a"] * n) + "]"}[nesting]
    words = "nested too deep" if "dotted" not in nesting else "a dotted name of more than 8 parts"
    if where == "--machine":
        machine = tmp_path / "deep.toml"
        machine.write_text(good_machine_text(good) + "\n" + deep + "\n")
        argv = ["compile", SAMPLES / f"{SAMPLE}.onnx", "--machine", machine, "-o", tmp_path / "out.lpu"]
    else:
        path = forged(good, tmp_path, machine=lambda text: text + "\n" + deep + "\n")
        argv = ["run", path]
    assert_one_line_error(*run_cli(capsys, *argv)[::2], "deep" if where == "--machine" else "machine.toml", words)
    assert not (tmp_path / "out.lpu").exists()


def good_machine_text(good: Path) -> str:
    return _unpack(good.read_bytes(), str(good))["machine.toml"].decode()


# --- devices, FIFOs and directories ------------------------------------------------------

@pytest.fixture
def alarm():
    """Fail (instead of hanging forever) when a test blocks on a FIFO."""
    def hung(*_):
        raise TimeoutError("lpuc blocked reading a FIFO or device")
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _special(tmp_path: Path, kind: str, suffix: str) -> Path:
    if kind == "fifo":
        path = tmp_path / f"fifo{suffix}"
        os.mkfifo(path)
        return path
    if kind == "directory":
        path = tmp_path / f"dir{suffix}"
        path.mkdir()
        return path
    return Path(kind)


@pytest.mark.parametrize("kind", ["/dev/zero", "/dev/urandom", "fifo", "directory"])
@pytest.mark.parametrize("command", ["run", "run --inputs", "check", "compile", "compile --machine", "eval --inputs",
                                     "diff"])
def test_only_regular_files_are_read(good, tmp_path, capsys, alarm, kind, command):
    if kind.startswith("/dev/") and not Path(kind).exists():
        pytest.skip(f"no {kind} here")
    suffix = ".npz" if "--inputs" in command else {"run": ".lpu", "check": ".ir", "compile": ".onnx",
                                                   "compile --machine": ".toml", "diff": ".lpu"}[command]
    special = _special(tmp_path, kind, suffix)
    argv = {
        "run": ["run", special], "run --inputs": ["run", good, "--inputs", special], "check": ["check", special],
        "compile": ["compile", special, "-o", tmp_path / "out.lpu"],
        "compile --machine": ["compile", SAMPLES / f"{SAMPLE}.onnx", "--machine", special, "-o", tmp_path / "out.lpu"],
        "eval --inputs": ["eval", SAMPLES / f"{SAMPLE}.onnx", "--inputs", special],
        "diff": ["diff", good, special],
    }[command]
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, str(special), "not a regular file")


# --- forged .npy headers ------------------------------------------------------------------

def _npz_with_header(tmp_path: Path, name: str, header: bytes) -> Path:
    """The sample's inputs with `name`'s .npy header replaced (its data kept)."""
    arrays = dict(np.load(INPUTS))
    path = tmp_path / "in.npz"
    with zipfile.ZipFile(path, "w") as zf:
        for key, a in arrays.items():
            raw = _npy(a)
            if key == name:
                end = raw.index(b"\n") + 1
                raw = raw[:10] + header.ljust(end - 11) + b"\n" + raw[end:]
            zf.writestr(f"{key}.npy", raw)
    return path


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a)
    return buf.getvalue()


@pytest.mark.parametrize("header, words", [
    (b"{'descr': '<i8', 'fortran_order': False, 'shape': (500000000000000, 1), }",
     ["declares", "4,000,000,000,000,000 bytes"]),
    (b"{'descr': '<i8', 'fortran_order': False, 'shape': (1, 1), garbage }", ["bad .npy header"]),
    (b"{'descr': '|O', 'fortran_order': False, 'shape': (1, 1), }", ["Python objects"]),
], ids=["huge-shape", "garbage", "objects"])
def test_forged_npy_headers_are_refused_before_allocating(good, tmp_path, capsys, header, words):
    path = _npz_with_header(tmp_path, "input_ids", header)
    for argv in (["run", good, "--inputs", path], ["eval", SAMPLES / f"{SAMPLE}.onnx", "--inputs", path]):
        code, _, err = run_cli(capsys, *argv)
        assert_one_line_error(code, err, "in.npz", "'input_ids'", *words)


def test_an_inputs_zip_bomb_is_refused_from_its_header(good, tmp_path, capsys):
    """An input deflated from 128 MiB (its header consistent with its data, ~130 kB in the file) is
    refused by its declared shape, before its data is inflated."""
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for key, a in np.load(INPUTS).items():
            if key != "input_ids":
                zf.writestr(f"{key}.npy", _npy(a))
        with zf.open("input_ids.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<i8", "fortran_order": False, "shape": (1, 1 << 24)})
            for _ in range(128):
                f.write(bytes(1 << 20))
    for argv, words in ((["run", good], "more than input input_ids (i64[1,1], as int64 8 bytes)"),
                        (["eval", SAMPLES / f"{SAMPLE}.onnx"], "input input_ids: shape [1, 16777216] given")):
        with PeakAllocated() as peak:
            code, _, err = run_cli(capsys, *argv, "--inputs", path)
        assert_one_line_error(code, err, words)
        assert peak.bytes < 64 << 20, f"{peak.bytes:,} bytes allocated to refuse it"


# --- NaN and Inf inputs -------------------------------------------------------------------

def test_non_finite_inputs_warn_and_strict_refuses_them(good, tmp_path, capsys):
    arrays = dict(np.load(INPUTS))
    arrays["past_key_values.0.key"].flat[:3] = [np.nan, np.inf, -np.inf]
    path = tmp_path / "nan.npz"
    np.savez(path, **arrays)
    code, out, err = run_cli(capsys, "run", good, "--inputs", path)
    assert code == 0 and "cycles" in out
    (line,) = err.splitlines()
    size = arrays["past_key_values.0.key"].size
    assert line == f"lpuc: warning: {path}: input past_key_values.0.key holds 3 NaN or Inf values (of {size:,}); its " \
                   "outputs may be NaN (--strict refuses such inputs)"
    code, out, err = run_cli(capsys, "run", good, "--inputs", path, "--strict", "-o", tmp_path / "out.npz")
    assert_one_line_error(code, err, "nan.npz", "past_key_values.0.key", "NaN or Inf", "--strict")
    assert not (tmp_path / "out.npz").exists()
    code, _, err = run_cli(capsys, "run", good, "--inputs", INPUTS, "--strict")
    assert code == 0 and err == ""


# --- sizes out of range for the machine ---------------------------------------------------

def test_a_value_larger_than_sram_is_refused_before_inputs_are_made(tmp_path, capsys):
    """A program whose input (and output) type was forged to 1.28 TB: refused at load, before `run`
    makes random inputs of that size."""
    from test_interpreter import MACHINE_TEXT, Sched

    s = Sched()
    x = s.input("x", (1, 320))
    s.output("y", s.op("host.output", s.op("host.input", x, res="hx", name="x"), res="y", name="y"))
    good = tmp_path / "small.lpu"
    write_lpu(good, s.module(), MACHINE_TEXT)
    path = forged(good, tmp_path, ir=lambda t: t.replace("f32[1,320]", "f32[1000000000,320]"),
                  manifest=lambda m: m.update({k: {n: t.replace("f32[1,320]", "f32[1000000000,320]")
                                                   for n, t in m[k].items()} for k in ("inputs", "outputs")}))
    code, _, err = run_cli(capsys, "run", path)
    assert_one_line_error(code, err, "forged.lpu", "%x is f32[1000000000,320]", "more than a tsp-v1 chip holds")
