"""The .lpu executable schedule: round trip, byte-identical determinism (also
across processes with another PYTHONHASHSEED), and damaged files refused with
one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lpuc.backends.interpreter import run
from lpuc.backends.lpu import (FORMAT_VERSION, PARTS, PLAIN_VERSION, LpuFormatError, _pack, _unpack, build_program,
                               load_lpu, read_lpu, schedule_sha256, sha256, write_lpu)
from lpuc.ir.attributes import AttrDict
from lpuc.ir.core import Op
from lpuc.ir.errors import LpucError
from lpuc.ir.printer import print_module
from test_interpreter import MACHINE_TEXT, Sched, rng_array

OPTIONS = {"budget": 1000, "scheduler": "list", "seed": 0}


def sample_module():
    """Constants (one spanning three slices, one small enough to print inline), an MXM install, views."""
    s = Sched()
    x = s.input("x", (2, 700))
    c = s.constant(rng_array((2, 700), 1), "c", out=((3, 0, 8), (4, 16, 8), (5, 32, 8)))
    w = s.constant(rng_array((320, 64), 2), "w")
    bias = s.constant(np.arange(4, dtype=np.float32), "bias")
    hx = s.op("host.input", x, res="hx", name="x")
    a = s.op("vxm.add", hx, c, res="a")
    head = s.view("mem.column_slice", a, "head", start=0, size=320)
    wt = s.op("mxm.install", w, res="wt", unit="mxm1")
    mm = s.op("mxm.matmul", head, wt, res="mm", unit="mxm1")
    b = s.op("vxm.add", s.op("sxm.slice", mm, res="sl", starts=(0,), ends=(4,), axes=(1,), steps=(1,)), bias, res="b")
    s.output("a", s.op("host.output", a, res="oa", name="a"))
    s.output("b", s.op("host.output", b, res="ob", name="b"))
    return s.module("sample")


def expected(xv):
    a = xv + rng_array((2, 700), 1)
    return {"a": a, "b": (a[:, :320] @ rng_array((320, 64), 2))[:, :4] + np.arange(4, dtype=np.float32)}


def test_round_trip(tmp_path: Path):
    module = sample_module()
    path = tmp_path / "m.lpu"
    digest = write_lpu(path, module, MACHINE_TEXT, OPTIONS)
    assert digest == schedule_sha256(path) == sha256(path.read_bytes())
    program = read_lpu(path)
    # the program is the module with each constant's sha256: of its words in the image, in `out` order
    assert print_module(program.module) == print_module(build_program(module, MACHINE_TEXT, OPTIONS).module)
    ops = []
    for op in program.module.ops:
        if op.name == "mem.constant":
            words = b"".join(program.image[0, s, w].tobytes() for s, w, n in op.attrs["out"] if n)
            assert op.attrs["sha256"] == sha256(words)
            op = Op(op.name, op.operands, op.results, AttrDict({k: v for k, v in op.attrs.items() if k != "sha256"}))
        ops.append(op)
    assert print_module(program.module.replace(ops=tuple(ops))) == print_module(module)
    assert program.machine.name == "tsp-v1" and program.machine_text == MACHINE_TEXT
    m = program.manifest
    assert (m["format"], m["format_version"], m["machine"], m["module"]) == ("lpu", PLAIN_VERSION, "tsp-v1", "sample")
    # the chip count is the module's (attribute `chips`, absent: one); the manifest repeats it
    assert dict(program.options) == {**OPTIONS, "chips": 1} and program.manifest["summary"] == {"chips": 1}
    assert program.target.chips == 1
    assert m["inputs"] == {"x": "f32[2,700]"} and m["outputs"] == {"a": "f32[2,700]", "b": "f32[2,4]"}
    built = build_program(module, MACHINE_TEXT, OPTIONS)
    assert program.cycles == built.cycles > 0
    assert sorted(program.image) == sorted(built.image) == [(0, 0, 0), (0, 1, 0), (0, 3, 0), (0, 4, 16), (0, 5, 32)]
    assert m["weights"] is True and program.weights
    for key, words in built.image.items():
        np.testing.assert_array_equal(program.image[key], words)
        assert not program.image[key].flags.writeable
    # the constants get their data back from the image
    consts = {op.result.name: op.attrs["value"].array for op in program.module.ops if op.name == "mem.constant"}
    np.testing.assert_array_equal(consts["c"], rng_array((2, 700), 1))
    xv = rng_array((2, 700), 9)
    result = run(path, {"x": xv})
    for k, v in expected(xv).items():
        np.testing.assert_allclose(result.outputs[k], v, rtol=1e-5, atol=1e-5)
    assert result.stats.cycles == program.cycles
    # a plain zip: unzip lists its parts
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist() == sorted(PARTS)
        assert all(i.compress_type == zipfile.ZIP_STORED and i.date_time == (1980, 1, 1, 0, 0, 0)
                   for i in zf.infolist())
        manifest = json.loads(zf.read("manifest.json"))
    assert set(manifest["parts"]) == set(PARTS) - {"manifest.json"}


def test_byte_identical(tmp_path: Path):
    a, b = tmp_path / "a.lpu", tmp_path / "b.lpu"
    assert write_lpu(a, sample_module(), MACHINE_TEXT, OPTIONS) == write_lpu(b, sample_module(), MACHINE_TEXT,
                                                                             dict(reversed(OPTIONS.items())))
    assert a.read_bytes() == b.read_bytes()
    assert write_lpu(b, sample_module(), MACHINE_TEXT, {**OPTIONS, "seed": 1}) != schedule_sha256(a)


def test_byte_identical_across_processes(tmp_path: Path):
    here = write_lpu(tmp_path / "here.lpu", sample_module(), MACHINE_TEXT, OPTIONS)
    for seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = tmp_path / f"there{seed}.lpu"
        subprocess.run([sys.executable, __file__, str(out)], check=True, env=env, cwd=Path(__file__).parent)
        assert schedule_sha256(out) == here


def test_options_must_be_json(tmp_path: Path):
    with pytest.raises(LpucError, match="options must be JSON data"):
        write_lpu(tmp_path / "m.lpu", sample_module(), MACHINE_TEXT, {"f": {1, 2}})


def one_line_refusal(data: bytes, match: str = "") -> str:
    with pytest.raises(LpuFormatError) as e:
        load_lpu(data, "m.lpu")
    text = str(e.value)
    assert "\n" not in text and text.startswith("m.lpu"), text
    assert match in text, text
    return text


@pytest.fixture(scope="module")
def good() -> bytes:
    from lpuc.backends.lpu import lpu_bytes

    return lpu_bytes(sample_module(), MACHINE_TEXT, OPTIONS)


def test_every_flipped_byte_is_refused(good: bytes):
    load_lpu(good)
    step = max(1, len(good) // 1500)
    positions = sorted(set(range(0, len(good), step)) | set(range(len(good) - 200, len(good))))
    for i in positions:
        bad = bytearray(good)
        bad[i] ^= 0x01
        one_line_refusal(bytes(bad))


def test_truncated_or_not_a_zip(good: bytes):
    for n in (0, 10, len(good) // 2, len(good) - 1):
        one_line_refusal(good[:n], "not a valid .lpu file")
    one_line_refusal(b"module @m {\n}\n", "not a valid .lpu file")


def test_missing_hash_mismatch_and_version(good: bytes):
    parts = _unpack(good, "m.lpu")
    one_line_refusal(_pack({k: v for k, v in parts.items() if k != "image.bin"}), "missing part image.bin")
    one_line_refusal(_pack({**parts, "extra.txt": b"hi"}), "unexpected part extra.txt")
    one_line_refusal(_pack({**parts, "program.ir": parts["program.ir"].replace(b"mxm1", b"mxm2")}),
                     "part program.ir does not match its sha256")
    image = bytearray(parts["image.bin"])
    image[5] ^= 0xFF
    one_line_refusal(_pack({**parts, "image.bin": bytes(image)}), "part image.bin does not match its sha256")
    manifest = json.loads(parts["manifest.json"])
    manifest["format_version"] = FORMAT_VERSION + 1
    one_line_refusal(_pack({**parts, "manifest.json": json.dumps(manifest).encode()}),
                     f"format version {FORMAT_VERSION + 1}; this lpuc reads versions {PLAIN_VERSION} and "
                     f"{FORMAT_VERSION}")
    one_line_refusal(_pack({**parts, "manifest.json": b"{"}), "manifest.json is not valid JSON")
    manifest = json.loads(parts["manifest.json"])
    manifest["options"]["chips"] = 4
    one_line_refusal(_pack({**parts, "manifest.json": json.dumps(manifest).encode()}),
                     "the manifest's options say 4 chips, the module is for 1")


def test_the_chip_count_is_the_modules():
    with pytest.raises(LpucError, match="the summary say 2 chips, the module is for 1"):
        build_program(sample_module(), MACHINE_TEXT, OPTIONS, {"chips": 2})


def test_no_such_file(tmp_path: Path):
    with pytest.raises(LpuFormatError, match="no such file"):
        read_lpu(tmp_path / "none.lpu")


def test_write_is_atomic(tmp_path: Path):
    path = tmp_path / "m.lpu"
    write_lpu(path, sample_module(), MACHINE_TEXT, OPTIONS)
    assert [p.name for p in tmp_path.iterdir()] == ["m.lpu"]


def test_machine_mismatch_is_refused():
    module = sample_module()
    with pytest.raises(LpucError, match="targets machine 'tsp-v1'"):
        build_program(module, MACHINE_TEXT.replace('name = "tsp-v1"', 'name = "other"'))


if __name__ == "__main__":  # used by test_byte_identical_across_processes
    write_lpu(sys.argv[1], sample_module(), MACHINE_TEXT, OPTIONS)
