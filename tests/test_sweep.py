"""`lpuc sweep` (compiler/sweep.py): the same rows whatever runs the points (one process, two, Ray
tasks), a repeated sweep compiles nothing, a failed point is a row, and the page renders offline."""

import json
import re

import pytest

import lpuc
from lpuc.compiler import driver, sweep as sweep_module

from helpers import SAMPLES, assert_one_line_error, run_cli
from test_report import chromium, needs_chromium

DECODE = SAMPLES / "llama_decode.onnx"
CHIPS, PRECISIONS = (1, 2, 4, 8), ("fp16", "int8")


def without_wall(rows):
    return [{k: v for k, v in r.items() if k != "wall"} for r in rows]


@pytest.fixture(scope="module")
def one_job(tmp_path_factory):
    store = tmp_path_factory.mktemp("cache-1")
    return store, lpuc.sweep(DECODE, CHIPS, precisions=PRECISIONS, jobs=1, cache=store)


def test_rows_are_the_combinations_in_order(one_job):
    _, rows = one_job
    assert [(r["precision"], r["chips"]) for r in rows] == [(p, c) for p in PRECISIONS for c in CHIPS]
    for r in rows:
        assert "error" not in r, r
        assert r["cycles"] == r["run_cycles"] > 0  # the run takes the compile's cycles
        assert r["tokens_per_s"] > 0 and r["physical_bound_cycles"] <= r["cycles"]
        assert len(r["mxm_utilization"]) == r["chips"] and r["layout"] == "default"
        assert r["wall"]["cached"] is False


def test_two_jobs_give_the_same_rows(one_job, tmp_path):
    _, rows = one_job
    assert without_wall(lpuc.sweep(DECODE, CHIPS, precisions=PRECISIONS, jobs=2, cache=tmp_path)) == \
        without_wall(rows)


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield ray
    ray.shutdown()


def test_ray_tasks_give_the_same_rows_and_fill_the_drivers_cache(one_job, ray_cluster, tmp_path, monkeypatch):
    _, rows = one_job
    on_ray = lpuc.sweep(DECODE, CHIPS, precisions=PRECISIONS, ray="auto", cache=tmp_path)
    assert without_wall(on_ray) == without_wall(rows)
    monkeypatch.setattr(driver, "compile_model", _no_compile)
    again = lpuc.sweep(DECODE, CHIPS, precisions=PRECISIONS, ray="auto", cache=tmp_path)
    assert all(r["wall"]["cached"] for r in again) and without_wall(again) == without_wall(rows)


def _no_compile(*args, **kwargs):
    raise AssertionError("a repeated sweep compiled a point")


def test_a_repeated_sweep_compiles_nothing(one_job, capsys, monkeypatch):
    store, rows = one_job
    monkeypatch.setattr(driver, "compile_model", _no_compile)
    code, out, err = run_cli(capsys, "sweep", DECODE, "--chips", ",".join(map(str, CHIPS)), "--precision",
                             ",".join(PRECISIONS), "--cache-dir", store, "--jobs", "1", "--json")
    assert code == 0, err
    again = [json.loads(line) for line in out.splitlines()]
    assert without_wall(again) == without_wall(rows) and all(r["wall"]["cached"] for r in again)
    assert err.count("(cache hit)") == len(rows)


def test_the_table_csv_and_page(one_job, capsys, tmp_path):
    store, rows = one_job
    csv, html = tmp_path / "points.csv", tmp_path / "points.html"
    code, out, err = run_cli(capsys, "sweep", DECODE, "--chips", ",".join(map(str, CHIPS)), "--precision",
                             ",".join(PRECISIONS), "--cache-dir", store, "--csv", csv, "--html", html,
                             "--tokens", "100")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["chips", "layout", "precision", "machine"]
    assert len(lines) == 1 + len(rows) + 1 and lines[-1] == f"{len(rows)} points: {len(rows)} from the cache, " \
        "0 computed, 0 failed"
    assert f"{rows[0]['cycles']:,}" in lines[1]
    assert csv.read_text().splitlines()[0].startswith("chips,layout,partition,precision")
    assert len(csv.read_text().splitlines()) == 1 + len(rows)
    assert f"wrote {csv}" in err and f"wrote {html}" in err
    page = html.read_text()
    assert page.count("<svg") == 3 and "<script" not in page and "http" not in page.replace(
        "http-equiv", "").replace("http://www.w3.org/2000/svg", "")


@needs_chromium
def test_the_page_renders_in_chromium(one_job, tmp_path):
    _, rows = one_job
    page = tmp_path / "sweep.html"
    page.write_text(sweep_module.html_page(rows, str(DECODE)))
    done = chromium(["--virtual-time-budget=3000", "--dump-dom", page.as_uri()], tmp_path / "profile")
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if re.search(r"CONSOLE[:(]|Uncaught", line)]
    assert not console, "\n".join(console)
    plots = re.findall(r'<svg class="plot"[^>]*aria-label="([^"]+)"', done.stdout)
    assert plots == ["Latency of one run", "Tokens/s at batch 1 (one decode step a token)",
                     "MXM utilization of each chip"]
    # every plot holds a line for each series it plots
    assert done.stdout.count("<polyline") == len(PRECISIONS) * 2 + len(rows)


def test_a_failed_point_is_a_row_and_the_sweep_goes_on(tmp_path, capsys):
    code, out, err = run_cli(capsys, "sweep", SAMPLES / "llama_prefill.onnx", "--chips", "1,2", "--layout",
                             "tp=2,pp=1", "--cache-dir", tmp_path, "--jobs", "1", "--json")
    assert code == 0, err
    failed, done = (json.loads(line) for line in out.splitlines())
    assert failed["error"] == "--layout tp=2,pp=1 takes 2 chips, not --chips 1" and "cycles" not in failed
    assert done["partition"] == "tp=2,pp=1" and done["cycles"] > 0
    assert "tokens_per_s" not in done  # a prefill graph: latency only


def test_ctrl_c_keeps_the_finished_points(tmp_path, monkeypatch):
    computed = []
    real = sweep_module._local_point

    def interrupted(model, point, cache, settings):
        if len(computed) == 2:
            raise KeyboardInterrupt
        computed.append(point)
        return real(model, point, cache, settings)

    monkeypatch.setattr(sweep_module, "_local_point", interrupted)
    with pytest.raises(KeyboardInterrupt):
        lpuc.sweep(DECODE, CHIPS, jobs=1, cache=tmp_path)
    kept = lpuc.sweep(DECODE, CHIPS[:2], jobs=1, cache=tmp_path)  # the two finished: from the cache
    assert [r["wall"]["cached"] for r in kept] == [True, True]


@pytest.mark.parametrize("argv, words", [
    (["--chips", "1,x"], ["argument --chips", "'1,x'"]),
    (["--chips", "0"], ["at least 1"]),
    (["--chips", "1", "--precision", "fp16,int4"], ["--precision int4", "unknown"]),
    (["--chips", "1", "--machine", "tsp-v9"], ["tsp-v9"]),
    (["--chips", "1", "--html", "out.svg"], ["--html", "'.svg'"]),
    (["--chips", "1", "--csv", "no/such/dir/out.csv"], ["no such directory"]),
    (["--chips", "1", "--jobs", "0"], ["--jobs 0"]),
])
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, monkeypatch, argv, words):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "sweep", DECODE, *argv, "--cache-dir", tmp_path / "cache")
    if err.startswith("lpuc sweep: error:"):  # argparse's own, also one line
        assert code == 2 and len(err.splitlines()) == 1 and all(w in err for w in words), err
    else:
        assert_one_line_error(code, err, *words)
    assert out == "" and not (tmp_path / "out.svg").exists()


def test_a_missing_model_and_a_missing_ray(tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(capsys, "sweep", tmp_path / "none.onnx", "--chips", "1")
    assert_one_line_error(code, err, "none.onnx")
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # as if Ray were not installed
    code, _, err = run_cli(capsys, "sweep", DECODE, "--chips", "1", "--ray", "auto", "--no-cache")
    assert_one_line_error(code, err, "pip install 'lpuc[cluster]'")


def test_the_prefill_gives_generations_time_to_first_token(ray_cluster, tmp_path, monkeypatch):
    import numpy as np

    prefill = SAMPLES / "llama_prefill.onnx"
    rows = lpuc.sweep(DECODE, (1, 2), precisions=("int8",), prefill=prefill, jobs=1, cache=tmp_path / "local")
    on_ray = lpuc.sweep(DECODE, (1, 2), precisions=("int8",), prefill=prefill, ray="auto", cache=tmp_path / "ray")
    assert without_wall(on_ray) == without_wall(rows)
    for r in rows:
        step, first = lpuc.compile_generation(DECODE, prefill, chips=r["chips"], precision="int8", weights=False)
        length = next(v for v in first.module.inputs if v.name == "input_ids").type.shape[1]
        made = lpuc.generate(step, np.ones((1, length), np.int64), 1, first, timing_only=True)
        assert r["ttft_us"] == pytest.approx(made.ttft_us, abs=1e-3) and r["prefill_cycles"] == first.cycles
    monkeypatch.setattr(driver, "compile_model", _no_compile)  # both caches hold the prefills too
    for store in ("local", "ray"):
        again = lpuc.sweep(DECODE, (1, 2), precisions=("int8",), prefill=prefill, jobs=1, cache=tmp_path / store)
        assert all(r["wall"]["cached"] for r in again) and without_wall(again) == without_wall(rows)


def test_a_prefill_needs_a_decode_step(tmp_path, capsys):
    code, _, err = run_cli(capsys, "sweep", SAMPLES / "llama_prefill.onnx", "--prefill", SAMPLES / "llama_prefill.onnx",
                           "--chips", "1", "--cache-dir", tmp_path)
    assert_one_line_error(code, err, "is not a decode step")
