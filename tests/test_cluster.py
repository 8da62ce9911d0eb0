"""Dask paths (bayeslat.cluster): many run directories ingested, many SPECs predicted and checked,
one task each, on a local cluster. The results are the same on 1 and 2 workers, and the same as
the single-run / single-spec calls in this process."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from synthrun import _run, write_trace
from test_obs_from_tables import write_experiment

from bayeslat import cluster, pipeline
from bayeslat.cli import main
from bayeslat.data.ingest import ingest
from bayeslat.data.ingest.many import ingest_many, run_jobs
from bayeslat.errors import IngestError

distributed = pytest.importorskip("distributed")
SPECS = ["specs/examples/llama-2-7b-h100-codegen.yaml", "specs/examples/llama-2-7b-a100-codegen.yaml"]


@pytest.fixture(scope="module")
def clients():
    """Local clusters of 1 and 2 single-threaded worker processes, shared by this module's tests."""
    out = {}
    with (
        distributed.LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as c1,
        distributed.Client(c1) as k1,
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as c2,
        distributed.Client(c2) as k2,
    ):
        out[1], out[2] = k1, k2
        yield out


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    """Three run directories of the synthetic server (different seeds and loads), each with its
    experiment YAML and its OTLP trace."""
    root = tmp_path_factory.mktemp("runs")
    dirs = []
    for i, (seed, rate) in enumerate(((3, 20.0), (5, 12.0), (7, 30.0))):
        d = root / f"run{i}"
        d.mkdir()
        req, steps = _run(n=80, rate=rate, seed=seed)
        write_trace(d / "trace.jsonl", req, steps, seed=seed)
        write_experiment(d / "exp.yaml", f"synth-{i}")
        dirs.append(d)
    return dirs


def test_map_tasks_keeps_order_and_results_on_any_worker_count(clients):
    items = list(range(12, 0, -1))
    want = [math.factorial(i) for i in items]
    seen = []
    assert cluster.map_tasks(math.factorial, items, workers=0, progress=lambda d, t: seen.append((d, t))) == want
    assert seen[-1] == (12, 12)
    for n, client in clients.items():
        assert len(client.scheduler_info()["workers"]) == n
        assert cluster.map_tasks(math.factorial, items, scheduler=client) == want
    with pytest.raises(ValueError) as e:
        cluster.map_tasks(math.factorial, [3, -1], scheduler=clients[2])
    assert any("task 1" in n for n in getattr(e.value, "__notes__", []))


def _tables(out_dir) -> dict:
    return {p.stem: pd.read_parquet(p) for p in sorted(out_dir.glob("*.parquet"))}


def test_ingest_many_equals_one_ingest_per_run_on_1_and_2_workers(clients, run_dirs, tmp_path):
    results = {}
    for n, client in clients.items():
        out = tmp_path / f"w{n}"
        done = ingest_many(run_dirs, out, scheduler=client)
        assert [j["run_dir"] for j in done] == [str(d) for d in run_dirs]
        results[n] = (done, {j["out"].rsplit("/", 1)[-1]: _tables(out / j["out"].rsplit("/", 1)[-1]) for j in done})
    (done1, t1), (done2, t2) = results[1], results[2]
    assert set(t1) == {"synth-0", "synth-1", "synth-2"} == set(t2)
    for name in t1:
        assert set(t1[name]) == set(t2[name]) and "steps" in t1[name]
        for tab in t1[name]:
            pd.testing.assert_frame_equal(t1[name][tab], t2[name][tab])
    for a, b in zip(done1, done2, strict=True):
        assert a["report"].to_json().replace(str(tmp_path / "w1"), "") == b["report"].to_json().replace(str(tmp_path / "w2"), "")
    # the same tables as ingesting the run alone in this process
    alone = tmp_path / "alone"
    ingest([run_dirs[1] / "trace.jsonl"], experiment=run_dirs[1] / "exp.yaml", out=alone)
    for tab, df in _tables(alone).items():
        pd.testing.assert_frame_equal(df, t2["synth-1"][tab])
    # and fit reads the directory of run directories
    assert {"synth-0", "synth-1", "synth-2"} <= set(pipeline.training_obs(str(tmp_path / "w2")).run)


def test_run_dirs_are_checked_before_any_task(run_dirs, tmp_path):
    bad = tmp_path / "noexp"
    bad.mkdir()
    (bad / "trace.jsonl").write_bytes((run_dirs[0] / "trace.jsonl").read_bytes())
    with pytest.raises(IngestError, match="exactly one experiment YAML, found none") as e:
        run_jobs([run_dirs[0], bad], tmp_path / "out")
    assert str(bad) in str(e.value)
    twin = tmp_path / "twin"
    twin.mkdir()
    write_experiment(twin / "exp.yaml", "synth-0")
    (twin / "t.jsonl").write_bytes(b"")
    with pytest.raises(IngestError, match="'synth-0' is also the name in"):
        run_jobs([run_dirs[0], twin], tmp_path / "out")


def test_cli_ingest_run_directories(run_dirs, tmp_path, capsys):
    assert main(["ingest", *map(str, run_dirs[:2]), "--out", str(tmp_path / "t"), "--workers", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.count("== ") == 2 and "records kept" in out
    assert (tmp_path / "t" / "synth-1" / "steps.parquet").exists()
    assert main(["ingest", str(run_dirs[0] / "trace.jsonl"), "--out", str(tmp_path / "u")]) == 2
    assert "trace files need --experiment" in capsys.readouterr().err


def test_cli_predict_sweep(capsys):
    assert main(["predict", *SPECS, "--draws", "3", "--workers", "0", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [o["spec"] for o in lines] == SPECS
    assert all(o["e2e_ms"]["mean_interval90"][0] < o["e2e_ms"]["mean"] < o["e2e_ms"]["mean_interval90"][1] for o in lines)


def test_predict_and_check_sweeps_equal_the_single_calls(clients):
    one = [pipeline.predict(s, draws=2, seed=1) for s in SPECS]
    for client in clients.values():
        many = pipeline.predict_many(SPECS, draws=2, seed=1, scheduler=client)
        for a, b in zip(one, many, strict=True):
            for m in ("ttft_ms", "itl_ms", "e2e_ms"):
                assert a[m] == b[m]
            assert a["new_levels"] == b["new_levels"] and b["spec"].endswith(".yaml")
    c1 = pipeline.check_many(SPECS, draws=2, workers=0)
    c2 = pipeline.check_many(SPECS, draws=2, scheduler=clients[2])
    assert [r["verdict"] for r in c1] == [r["verdict"] for r in c2]
    assert c1[1]["intervals"]["workload"]["e2e_ms"] == c2[1]["intervals"]["workload"]["e2e_ms"]


def test_stderr_progress_shows_the_time_left(monkeypatch, capsys):
    import sys

    assert cluster.stderr_progress("x") is None  # not a terminal: nothing printed, ever
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    show = cluster.stderr_progress("validate lomo: runs")
    show(1, 4)
    show(4, 4)
    err = capsys.readouterr().err
    assert "validate lomo: runs 1/4" in err and "s left" in err.split("4/4")[0]
    assert err.rstrip().endswith(")") and "4/4" in err and err.endswith("\n")
