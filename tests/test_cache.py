"""The build cache (compiler/cache.py): a compile taken from it is byte-identical to a fresh one, and
its key follows the model's content, the options, the machine file and whether weights are in."""

import json
import shutil

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lpuc.compiler import cache
from lpuc.ir.machine import SHIPPED

from helpers import SAMPLES, assert_one_line_error, run_cli

SAMPLE = SAMPLES / "llama_decode.onnx"


def compile_json(capsys, model, out, cache_dir, *extra):
    code, stdout, err = run_cli(capsys, "compile", model, "-o", out, "--cache-dir", cache_dir, "--json",
                                "--scheduler", "list", *extra)
    assert code == 0, err
    return json.loads(stdout)


def test_a_cached_compile_is_byte_identical_to_a_fresh_one(tmp_path, capsys):
    store = tmp_path / "cache"
    first = compile_json(capsys, SAMPLE, tmp_path / "a.lpu", store, "--chips", "2")
    again = compile_json(capsys, SAMPLE, tmp_path / "b.lpu", store, "--chips", "2")
    code, _, err = run_cli(capsys, "compile", SAMPLE, "-o", tmp_path / "c.lpu", "--chips", "2", "--scheduler", "list",
                           "--no-cache", "--cache-dir", tmp_path / "unused")
    assert code == 0, err
    assert first["cache"]["status"] == "miss" and again["cache"]["status"] == "hit"
    assert first["cache"]["key"] == again["cache"]["key"]
    fresh = (tmp_path / "c.lpu").read_bytes()
    assert (tmp_path / "a.lpu").read_bytes() == (tmp_path / "b.lpu").read_bytes() == fresh
    assert not (tmp_path / "unused").exists()  # --no-cache neither reads nor records
    ignored = {"cache", "compile_seconds", "output"}
    assert {k: v for k, v in first.items() if k not in ignored} == {k: v for k, v in again.items() if k not in ignored}
    # the table says where the program came from
    code, out, _ = run_cli(capsys, "compile", SAMPLE, "-o", tmp_path / "d.lpu", "--chips", "2", "--scheduler", "list",
                           "--cache-dir", store)
    assert code == 0 and f"hit {first['cache']['key'][:16]}" in out and "compiled in" in out


def test_the_key_follows_content_not_paths(tmp_path, capsys):
    store = tmp_path / "cache"
    base = compile_json(capsys, SAMPLE, tmp_path / "a.lpu", store)["cache"]["key"]
    copy = tmp_path / "elsewhere" / "renamed.onnx"
    copy.parent.mkdir()
    shutil.copy(SAMPLE, copy)
    found = compile_json(capsys, copy, tmp_path / "b.lpu", store)["cache"]
    assert (found["status"], found["key"]) == ("hit", base)
    # the solver's threads change no byte: the same entry
    assert compile_json(capsys, SAMPLE, tmp_path / "c.lpu", store, "--workers", "3")["cache"]["key"] == base
    # each of these does
    machine = tmp_path / "tsp-v1-slow-links.toml"
    machine.write_text((SHIPPED / "tsp-v1.toml").read_text().replace("hop_latency_cycles = 540",
                                                                      "hop_latency_cycles = 1080"))
    model = onnx.load(str(SAMPLE))
    model.doc_string = "another model"
    changed = tmp_path / "changed.onnx"
    onnx.save(model, str(changed))
    others = [compile_json(capsys, SAMPLE, tmp_path / "d.lpu", store, "--precision", "int8"),
              compile_json(capsys, SAMPLE, tmp_path / "e.lpu", store, "--chips", "2"),
              compile_json(capsys, SAMPLE, tmp_path / "f.lpu", store, "--machine", machine),
              compile_json(capsys, SAMPLE, tmp_path / "g.lpu", store, "--no-weights"),
              compile_json(capsys, changed, tmp_path / "h.lpu", store)]
    keys = [r["cache"]["key"] for r in others]
    assert all(r["cache"]["status"] == "miss" for r in others) and len(set(keys) | {base}) == len(keys) + 1


def _external_model(directory, weight: np.ndarray):
    directory.mkdir(exist_ok=True)
    w = numpy_helper.from_array(weight, "w")
    w.data_location = TensorProto.EXTERNAL
    (directory / "w.bin").write_bytes(weight.tobytes())
    for key, value in (("location", "w.bin"), ("offset", "0"), ("length", str(weight.nbytes))):
        w.external_data.add(key=key, value=value)
    w.ClearField("raw_data")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 333])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 341])], [w])
    path = directory / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_with_weights_the_external_datas_bytes_count_without_them_only_its_reference(tmp_path, capsys):
    store = tmp_path / "cache"
    rng = np.random.default_rng(0)
    model = _external_model(tmp_path / "m", rng.standard_normal((333, 341)).astype(np.float32))
    first = compile_json(capsys, model, tmp_path / "a.lpu", store)
    shapes_only = compile_json(capsys, model, tmp_path / "b.lpu", store, "--no-weights")
    (tmp_path / "m" / "w.bin").write_bytes(rng.standard_normal((333, 341)).astype(np.float32).tobytes())
    new_weights = compile_json(capsys, model, tmp_path / "c.lpu", store)
    assert new_weights["cache"]["status"] == "miss" and new_weights["cache"]["key"] != first["cache"]["key"]
    assert (tmp_path / "a.lpu").read_bytes() != (tmp_path / "c.lpu").read_bytes()
    found = compile_json(capsys, model, tmp_path / "d.lpu", store, "--no-weights")["cache"]
    assert (found["status"], found["key"]) == ("hit", shapes_only["cache"]["key"])


def test_a_torn_entry_is_a_miss_and_is_rewritten(tmp_path, capsys):
    store = tmp_path / "cache"
    key = compile_json(capsys, SAMPLE, tmp_path / "a.lpu", store)["cache"]["key"]
    (store / f"{key}.json").write_text("{ torn")
    again = compile_json(capsys, SAMPLE, tmp_path / "b.lpu", store)
    assert again["cache"]["status"] == "miss"
    assert cache.lookup(store, key) is not None
    (store / f"{key}.lpu").unlink()  # a report without its program: a miss
    assert cache.lookup(store, key) is None


def test_cache_ls_and_clear(tmp_path, capsys):
    store = tmp_path / "cache"
    compile_json(capsys, SAMPLE, tmp_path / "a.lpu", store)
    compile_json(capsys, SAMPLE, tmp_path / "b.lpu", store, "--chips", "2")
    code, out, _ = run_cli(capsys, "cache", "ls", "--cache-dir", store)
    assert code == 0 and "2 entries" in out and len(out.splitlines()) == 3 and "2 chips" in out
    code, out, _ = run_cli(capsys, "cache", "ls", "--cache-dir", store, "--json")
    listed = json.loads(out)
    assert code == 0 and sorted(e["chips"] for e in listed["entries"]) == [1, 2]
    code, out, _ = run_cli(capsys, "cache", "clear", "--cache-dir", store)
    assert code == 0 and "removed 2 entries" in out
    assert list(store.iterdir()) == []
    code, out, _ = run_cli(capsys, "cache", "ls", "--cache-dir", store)
    assert code == 0 and "0 entries" in out
    code, _, err = run_cli(capsys, "cache", "sweep")
    assert code == 2 and "invalid choice" in err


def test_where_the_cache_lives(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.ENV, str(tmp_path / "env"))
    assert cache.cache_dir() == tmp_path / "env"
    assert cache.cache_dir(tmp_path / "option") == tmp_path / "option"
    monkeypatch.delenv(cache.ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "lpuc"


def test_a_bad_model_is_still_the_compiles_one_line_error(tmp_path, capsys):
    code, _, err = run_cli(capsys, "compile", tmp_path / "missing.onnx", "-o", tmp_path / "a.lpu",
                           "--cache-dir", tmp_path / "cache")
    assert_one_line_error(code, err, "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    code, _, err = run_cli(capsys, "compile", bad, "-o", tmp_path / "a.lpu", "--cache-dir", tmp_path / "cache")
    assert_one_line_error(code, err, "bad.onnx")
    assert not (tmp_path / "a.lpu").exists()


def test_lpuc_no_cache_turns_it_off_unless_a_directory_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(cache.ENV, str(tmp_path / "env"))
    monkeypatch.setenv(cache.OFF, "1")  # as the suite sets it
    code, stdout, err = run_cli(capsys, "compile", SAMPLE, "-o", tmp_path / "a.lpu", "--scheduler", "list", "--json")
    assert code == 0 and "cache" not in json.loads(stdout) and not (tmp_path / "env").exists()
    assert compile_json(capsys, SAMPLE, tmp_path / "b.lpu", tmp_path / "named")["cache"]["status"] == "miss"
    monkeypatch.delenv(cache.OFF)
    assert compile_json(capsys, SAMPLE, tmp_path / "c.lpu", tmp_path / "env")["cache"]["status"] == "miss"
    code, stdout, err = run_cli(capsys, "compile", SAMPLE, "-o", tmp_path / "d.lpu", "--scheduler", "list", "--json")
    assert code == 0 and json.loads(stdout)["cache"]["status"] == "hit"  # $LPUC_CACHE_DIR's entry


def test_a_cache_that_cannot_be_written_costs_a_warning_not_the_compile(tmp_path, capsys):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    code, stdout, err = run_cli(capsys, "compile", SAMPLE, "-o", tmp_path / "a.lpu", "--cache-dir", blocked,
                                "--scheduler", "list", "--json")
    assert code == 0 and (tmp_path / "a.lpu").exists() and "cache" not in json.loads(stdout)
    assert err.count("lpuc: warning: the build cache keeps nothing") == 1
