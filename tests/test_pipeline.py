"""The fit pipeline: ``bayeslat fit``, ``bayeslat.fit`` and ``bayeslat calibrate`` run the same stages."""

from __future__ import annotations

import json

import numpy as np
import pytest

import bayeslat
from bayeslat import model as M
from bayeslat import pipeline, simulate
from bayeslat import probe as P
from bayeslat.cli import main
from bayeslat.data import datasets
from bayeslat.errors import SpecError

RUN = "20260217-155451-llama-2-7b-tp1-codegen"


@pytest.fixture
def stages(monkeypatch):
    """Record the stages a fit goes through: model.fit returns the shipped default (no sampling)
    and the simulator-discrepancy stage records its call."""
    seen = {"fit": [], "discrepancy": 0}

    def fake_fit(obs, **kw):
        seen["fit"].append((M.data_hash(M.check_obs(obs)), kw))
        return M.load_default()

    def fake_discrepancy(idata, seed=0, **kw):
        seen["discrepancy"] += 1
        return idata

    monkeypatch.setattr(M, "fit", fake_fit)
    monkeypatch.setattr(simulate, "attach_sim_discrepancy", fake_discrepancy)
    return seen


def test_cli_fit_and_python_fit_are_one_pipeline(stages, tmp_path, capsys):
    assert bayeslat.fit is pipeline.fit
    args = ["--runs", RUN, "--data-seed", "3", "--rows-per-run-kind", "5", "--seed", "7", "--no-progress"]
    assert main(["fit", *args, "--out", str(tmp_path / "a.nc")]) == 0
    obs = pipeline.training_obs(runs=[RUN], data_seed=3, rows_per_run_kind=5)
    bayeslat.fit(obs, seed=7, progressbar=False, attrs=pipeline.fit_attrs(runs=[RUN], data_seed=3, rows_per_run_kind=5))
    (cli_hash, cli_kw), (py_hash, py_kw) = stages["fit"]
    assert cli_hash == py_hash  # the same rows
    assert cli_kw["seed"] == py_kw["seed"] == 7
    assert cli_kw["attrs"] == py_kw["attrs"]
    assert json.loads(cli_kw["attrs"]["runs"]) == [RUN] and cli_kw["attrs"]["data_seed"] == 3
    assert cli_kw["attrs"]["bundled_data_hash"] == datasets.data_hash()
    assert stages["discrepancy"] == 2  # both replayed the bundled training runs
    assert "wrote" in capsys.readouterr().out


def test_discrepancy_stage_runs_only_where_the_training_runs_can_be_replayed(stages):
    obs = pipeline.training_obs(runs=[RUN], rows_per_run_kind=3)
    pipeline.fit(obs)
    assert stages["discrepancy"] == 1
    obs.run[:] = "my-own-run"  # an ingested run: no bundled requests to replay
    pipeline.fit(obs)
    assert stages["discrepancy"] == 1
    pipeline.fit(obs, discrepancy=False)
    assert stages["discrepancy"] == 1


def _fit_of(runs):
    """The shipped default with its training rows cut to ``runs`` (what calibrate reads of a fit)."""
    idata = M.load_default()
    cd = idata.constant_data
    keep = np.isin(cd["run"].values.astype(str), runs)
    idata.constant_data = cd.isel(obs_id=np.flatnonzero(keep))
    idata.attrs.pop("probe_oos_errors", None)
    return idata


@pytest.mark.slow
def test_calibrate_stores_out_of_sample_probe_errors_of_each_held_out_model(monkeypatch, tmp_path):
    runs = [r for r in datasets.runs().index if "llama-2-7b-tp1" in r][:2]
    assert len(runs) == 2
    folds = []

    def fake_cv_fit(full, exclude, **kw):
        folds.append(set(exclude))
        return M.load_default()  # the fold's fit (here not without the model: the mechanics are tested)

    monkeypatch.setattr(pipeline.V, "cv_fit", fake_cv_fit)
    idata = _fit_of(runs)
    out = pipeline.calibrate(idata, probe_n=60, seed=1)
    assert out is idata
    model_runs = {r for r in datasets.runs().index if "llama-2-7b-tp1" in r}
    assert len(model_runs) == 4
    # one fold per held-out model, without any of its runs; then one per workload of the fit's runs
    assert folds[0] == model_runs
    assert sorted(map(sorted, folds[1:])) == sorted([[r] for r in runs])
    rec = json.loads(idata.attrs["probe_oos_errors"])
    assert rec["n_requests"] == 60 and rec["design"] == "first" and "bayeslat calibrate" in rec["source"]
    per_run = [e for e in rec["errors"] if "run" in e]
    assert sorted(e["run"] for e in per_run) == sorted(model_runs)  # its runs outside the rows too
    # an overloaded run's probe gives no slice error (the shipped default's reasoning run too)
    measured = [e for e in per_run if "ttft" in e]
    assert len(measured) >= 3 and all(np.isfinite([e["ttft"], e["window"]]).all() for e in measured)
    factors = [e for e in rec["errors"] if "factor_step" in e]
    assert len(factors) == 1 and set(factors[0]["factor_runs"]) <= model_runs
    # what `bayeslat update` reads: a calibration with the out-of-sample errors
    cal = P.oos_calibration(rec["errors"], None, min_runs=2)
    assert cal["kinds"]["ttft"]["tau"] > 0
    # the workload discrepancy: one error record per run of the fit's models, each under the fit
    # without its workload (a refit for the two workloads in the rows, the fit itself for the others)
    wd = json.loads(idata.attrs["workload_discrepancy"])
    assert sorted(e["run"] for e in wd["errors"]) == sorted(model_runs) and 2 <= wd["runs"] <= 4
    assert "leave-one-workload-out" in wd["source"] and len(wd["tau0"]) == len(wd["tau1"]) > 0
    assert all(np.isfinite(m["r"]) and m["v"] >= 0 for e in wd["errors"] for m in e["metrics"].values())


def test_calibrate_refuses_a_fit_whose_runs_are_not_bundled():
    idata = _fit_of([RUN])
    cd = idata.constant_data
    idata.constant_data = cd.assign(run=("obs_id", np.full(cd.sizes["obs_id"], "my-own-run")))
    with pytest.raises(SpecError, match="calibrate needs a fit of the bundled runs.*my-own-run"):
        pipeline.calibrate(idata)


def test_cli_calibrate_errors_name_the_file(tmp_path, capsys):
    assert main(["calibrate", str(tmp_path / "missing.nc")]) == 2
    err = capsys.readouterr().err
    assert "bayeslat calibrate: error:" in err and "missing.nc" in err
    assert len(err.strip().splitlines()) == 1


def test_fit_reports_each_stage_as_it_starts(stages):
    obs = pipeline.training_obs(runs=[RUN], rows_per_run_kind=3)
    lines = []
    pipeline.fit(obs, hardware=None, log=lines.append)
    assert [ln[:5] for ln in lines] == ["[1/3]", "[2/3]", "[3/3]"]
    assert f"{len(obs.y):,} rows ({int(obs.n_rows.sum()):,} raw rows) of 1 runs" in lines[0]
    assert "replaying 1 training runs" in lines[2]
    lines.clear()
    pipeline.fit(obs, hardware=None, discrepancy=False, log=lines.append)
    assert lines[2].endswith("not run") and stages["discrepancy"] == 1
