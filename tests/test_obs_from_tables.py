"""Ingested tables -> ObsTable (design.obs_from_tables) and `bayeslat fit --data DIR`.

A tiny exact scheduler (decode first, FCFS, chunked prefill, known step times and alpha delays)
writes a run in the instrumented vLLM's OTLP format (journey api + core spans, sampled
BATCH_SUMMARY steps with REQUEST_SNAPSHOTs) and as inference-perf replay files; both are ingested
with `bayeslat ingest` to Parquet and turned into observation rows whose values are checked
against the generating truth.
"""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from synthrun import BUDGET, MAX_SEQS, STREAM_NS, T0_NS, _run, write_trace

from bayeslat import cli
from bayeslat import features as F
from bayeslat.data import design as D
from bayeslat.data import reconstruct as R
from bayeslat.data.ingest import ingest
from bayeslat.errors import IngestError, SpecError


def write_replay(d: Path, name: str, req):
    """inference-perf replay + ground-truth files (client clock: us from the first arrival)."""
    n = len(req["arrival"])
    rq = [
        {
            "index": i,
            "arrival_time_us": int(req["arrival"][i] // 1000),
            "input_tokens": int(req["prompt"][i]),
            "output_tokens": int(req["nout"][i]),
            "has_error": False,
        }
        for i in range(n)
    ]
    gt = [
        {
            "index": i,
            "ttft_s": (req["first_response"][i] - req["arrival"][i]) / 1e9,
            "e2e_s": (req["departed"][i] - req["arrival"][i]) / 1e9,
            "has_error": False,
        }
        for i in range(n)
    ]
    p = d / f"{name}.json.gz"
    p.write_bytes(gzip.compress(json.dumps({"experiment": name, "config": {}, "requests": rq}).encode()))
    g = d / f"{name}_ground_truth.json.gz"
    g.write_bytes(gzip.compress(json.dumps(gt).encode()))
    return p, g


def write_experiment(path: Path, name: str, hardware="H100 SXM"):
    hw = f"hardware: {hardware}\n" if hardware else ""
    path.write_text(
        f"name: {name}\nmodel: llama-2-7b-hf\n{hw}server:\n  tensor_parallel: 1\n  max_num_batched_tokens: {BUDGET}\n"
        f"  max_num_seqs: {MAX_SEQS}\n  block_size: 16\n  prefix_caching: false\n  kv_block_bytes: 524288\n"
    )
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("ingested")
    req, steps = _run()
    sampled = write_trace(d / "trace.jsonl", req, steps)
    ingest([d / "trace.jsonl"], experiment=write_experiment(d / "exp_trace.yaml", "synth-trace"), out=d / "trace_tables")
    rp, gp = write_replay(d, "synth-replay", req)
    ingest([rp, gp], experiment=write_experiment(d / "exp_replay.yaml", "synth-replay"), out=d / "replay_tables")
    return {"dir": d, "req": req, "steps": steps, "sampled": sampled}


def _ctx():
    spec = D.experiment_context(
        {
            "run": "x",
            "model": "llama-2-7b-hf",
            "hardware": "H100 SXM",
            "server_json": json.dumps({"max_num_batched_tokens": BUDGET, "max_num_seqs": MAX_SEQS, "kv_block_bytes": 1}),
        }
    )
    return spec["ctx"]


def test_trace_tables_to_obs(world):
    req, steps = world["req"], world["steps"]
    obs = D.obs_from_tables(world["dir"] / "trace_tables", n_per_run_kind=None)
    assert obs.hardware_levels == ("H100 SXM",) and obs.class_levels == ("dense",)
    assert set(obs.run) == {"synth-trace"} and set(np.unique(obs.kind)) == {0, 1, 2, 3}
    assert np.isfinite(obs.X).all() and (obs.X >= 0).all() and np.isfinite(obs.A).all()
    info = obs.meta["info"]["synth-trace"]
    assert info["lifecycle"]["source"] == "journey" and obs.meta["skipped"] == []
    # the step records share the journey clock: the offset is exact (first arrival)
    assert info["clock_offset"]["offset_us"] == pytest.approx(T0_NS / 1e3)
    # request numbering = position among the run's journey rows = generation order here
    ttft = (req["first_response"] - req["arrival"]) / 1e6
    dec = (req["departed"] - req["first_response"]) / 1e6
    w, tt = obs.kind == R.KIND_WINDOW, obs.kind == R.KIND_TTFT
    np.testing.assert_allclose(obs.y[w], dec[obs.request[w]], rtol=1e-9)
    np.testing.assert_allclose(obs.y[tt], ttft[obs.request[tt]], rtol=1e-9)
    assert (obs.n_steps[w] == req["nout"][obs.request[w]] - 1).all()  # n - 1 decode steps, exact
    # alpha-only rows: queued - arrival + streaming delay, alpha features of the prompt
    al = obs.kind == R.KIND_ALPHA
    assert al.sum() == len(req["arrival"])
    truth = (req["queued"] - req["arrival"] + STREAM_NS) / 1e6
    np.testing.assert_allclose(obs.y[al], truth[obs.request[al]], rtol=1e-9)
    np.testing.assert_allclose(obs.A[al, 1], req["prompt"][obs.request[al]] / 1000.0)
    assert (obs.A[al, 0] == 1).all() and (obs.X[al] == 0).all() and (obs.n_steps[al] == 0).all()
    # exact one-step rows: y and features of the true step
    st = obs.kind == R.KIND_STEP
    one = st & (obs.n_steps == 1)
    ids = {s["id"] for s in world["sampled"]}
    # (not a step whose successor waited for an arrival: the journey says the server was empty)
    idle = {s["id"] for s in steps[:-1] if steps[s["id"] + 1]["t"] > s["t"] + s["dt"]}
    exact_ids = [s["id"] for s in world["sampled"] if s["id"] + 1 in ids and s["id"] not in idle]
    assert info["rows"]["step_exact"] == len(exact_ids) == one.sum()
    true_y = np.array([steps[i]["dt"] / 1e6 for i in exact_ids])
    np.testing.assert_allclose(np.sort(obs.y[one]), np.sort(true_y), rtol=1e-9)
    feat, _ = F.step_features(np.array([steps[i]["stats"] for i in exact_ids]), _ctx())
    key = lambda y, X: sorted((round(a, 6),) + tuple(np.round(b, 9)) for a, b in zip(y, X))  # noqa: E731
    assert key(obs.y[one], obs.X[one].sum(axis=1)) == key(true_y, feat)
    # multi-step pairs of sampled steps: y = the sum of the true step times they span
    multi = st & (obs.n_steps > 1)
    assert multi.sum() == info["rows"]["step_trace"] > 0
    # ... their busy time: pairs spanning a time the server held no request (journey) are dropped
    cs = np.concatenate([[0], np.cumsum([s["dt"] for s in steps])])
    sums = {round((cs[b] - cs[a]) / 1e6, 9) for a in ids for b in ids if 1 < b - a <= 32}
    assert all(round(y, 9) in sums for y in obs.y[multi])
    # this run never idles (every step starts where the last ended), so no pair may be dropped as
    # idle and every consecutive sampled pair (id gap 2..32; gap-1 pairs are the exact rows) is a row
    assert not idle
    srt = sorted(ids)
    pairs = [(a, b) for a, b in itertools.pairwise(srt) if 1 < b - a <= 32]
    assert info["rows"]["step_trace_idle_dropped"] == 0 and info["rows"]["step_trace"] == len(pairs)


def test_replay_tables_to_obs_and_subsample(world):
    req = world["req"]
    obs = D.obs_from_tables(world["dir"] / "replay_tables", n_per_run_kind=None)
    assert set(np.unique(obs.kind)) == {1, 2} and set(obs.run) == {"synth-replay"}
    info = obs.meta["info"]["synth-replay"]
    assert info["lifecycle"]["source"] == "inference_perf" and "clock_offset" in info and info["clock_offset"] is None
    w, tt = obs.kind == R.KIND_WINDOW, obs.kind == R.KIND_TTFT
    ttft = (req["first_response"] - req["arrival"]) / 1e6
    dec = (req["departed"] - req["first_response"]) / 1e6
    np.testing.assert_allclose(obs.y[w], dec[obs.request[w]], rtol=1e-6)
    np.testing.assert_allclose(obs.y[tt], ttft[obs.request[tt]], rtol=1e-6)
    # a directory of ingest directories; run filters; the per-(run, kind) subsample
    both = D.obs_from_tables(world["dir"], n_per_run_kind=20, seed=1)
    assert set(both.run) == {"synth-trace", "synth-replay"}
    for r in ("synth-trace", "synth-replay"):
        for k in np.unique(both.kind[both.run == r]):
            assert ((both.run == r) & (both.kind == k)).sum() <= 20
    only = D.obs_from_tables(world["dir"], runs=["replay"])
    assert set(only.run) == {"synth-replay"}
    # the in-memory tables of ingest(...) without out= give the same rows
    mem = ingest(
        [world["dir"] / "synth-replay.json.gz", world["dir"] / "synth-replay_ground_truth.json.gz"],
        experiment=world["dir"] / "exp_replay.yaml",
    )
    m = D.obs_from_tables(mem.tables, n_per_run_kind=None)
    np.testing.assert_array_equal(m.y, obs.y)
    np.testing.assert_array_equal(m.X, obs.X)


def test_bad_table_dirs_name_the_file(world, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(world["dir"] / "replay_tables", bad)
    (bad / "steps.parquet").unlink()
    with pytest.raises(IngestError, match=r"steps\.parquet"):
        D.obs_from_tables(bad)
    with pytest.raises(SpecError, match="not a directory"):
        D.obs_from_tables(tmp_path / "nowhere")
    # no hardware in the experiment: a clear error, or the override
    d = world["dir"]
    ingest(
        [d / "synth-replay.json.gz", d / "synth-replay_ground_truth.json.gz"],
        experiment=write_experiment(tmp_path / "nohw.yaml", "nohw", hardware=None),
        out=tmp_path / "nohw",
    )
    with pytest.raises(SpecError, match="hardware"):
        D.obs_from_tables(tmp_path / "nohw")
    assert D.obs_from_tables(tmp_path / "nohw", hardware="h100-sxm").hardware_levels == ("H100 SXM",)


@pytest.mark.slow
def test_cli_fit_data_dir(world, tmp_path, capsys):
    """`bayeslat fit --data DIR` on a directory written by `bayeslat ingest` (~50 s: the model's
    compilation dominates), and a clear error for a directory lacking a table."""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "experiments.parquet").write_bytes((world["dir"] / "replay_tables" / "experiments.parquet").read_bytes())
    assert cli.main(["fit", "--data", str(bad), "--out", str(tmp_path / "x.nc"), "--draws", "5", "--tune", "5"]) == 2
    err = capsys.readouterr().err
    assert "requests.parquet" in err and "missing table" in err
    out = tmp_path / "fit.nc"
    rc = cli.main(
        [
            "fit",
            "--data",
            str(world["dir"] / "trace_tables"),
            "--out",
            str(out),
            "--draws",
            "20",
            "--tune",
            "20",
            "--chains",
            "1",
            "--no-progress",
        ]
    )
    assert rc == 0 and out.exists(), capsys.readouterr().err
    assert "rows" in capsys.readouterr().out
    import arviz as az

    idata = az.from_netcdf(out)
    assert idata.attrs["data_source"] == str(world["dir"] / "trace_tables")
    assert sorted(set(np.asarray(idata.constant_data["kind"]).tolist())) == [0, 1, 2, 3]


SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RUN = "20260218-150304-codellama-34b-tp2-general"  # one of the 3 runs with sampled step records


@pytest.mark.skipif(not (SHARED / "replay" / f"{RUN}.json.gz").exists(), reason="shared data not present")
def test_ingested_real_run_matches_bundled_obs():
    """`bayeslat ingest` of a real run's replay files (+ its real step records, as a ``steps``
    table) -> obs_from_tables gives exactly bundled_obs of that run: the same reconstruction,
    estimated clock offset, step windows, subsample."""
    from bayeslat.data import datasets
    from bayeslat.data.ingest import tables as T

    res = ingest(
        [SHARED / "replay" / f"{RUN}.json.gz", SHARED / "replay" / f"{RUN}_ground_truth.json.gz"],
        experiment=SHARED / "experiments" / RUN / "exp-config.yaml",
    )
    tb = dict(res.tables)
    st = datasets.steps()
    st = st[st["experiment_id"] == RUN].rename(columns={"experiment_id": "run"})
    tb["steps"] = T.conform(st.assign(successor_sampled=st["cycle_time_us"].notna()), "steps")
    a = D.obs_from_tables(tb, hardware="H100 SXM", seed=0)
    b = D.bundled_obs(runs=[RUN], seed=0)
    assert a.meta["info"][RUN]["clock_offset"]["method"].startswith("estimated")
    assert set(np.unique(a.kind)) == {0, 1, 2}
    for k in ("kind", "y", "X", "A", "n_steps", "request", "t_frac"):
        np.testing.assert_allclose(getattr(a, k), getattr(b, k), rtol=1e-9, atol=1e-12, err_msg=k)
    assert a.hardware_levels == b.hardware_levels and a.class_levels == b.class_levels


def test_overloaded_run_is_skipped_with_its_cause():
    """The Llama-2-7B reasoning run exhausted its KV cache: the reconstruction says so, and the
    run is skipped with that reason (bayeslat.data.reconstruct, "Where it fails")."""
    from bayeslat.data import datasets

    run = next(r for r in datasets.runs()["run"] if "llama-2-7b-tp1-reasoning" in r)
    rec = D.reconstruct_run(run)
    assert rec.info["resid_steps_mad"] > 100 and rec.info["kv_demand_ratio_p95"] > 1.5 and rec.info["failed_frac"] > 0.8
    why = D.skip_reason(rec)
    assert "KV cache" in why and "preempted" in why and "failed" in why
    assert D.skip_reason(rec, max_resid_steps=1e9) is None
