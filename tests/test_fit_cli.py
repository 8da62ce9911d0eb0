"""The fit command's data path: the rows a fit sees depend on the data seed alone, and the shipped
default fit is the fit of the current bundled design."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import FitCalled
from synthrun import _run
from test_obs_from_tables import write_experiment, write_replay

from bayeslat import cli
from bayeslat import features as F
from bayeslat import model as M
from bayeslat.cli import fit as cli_fit
from bayeslat.data.ingest import ingest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def replay_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fitcli")
    req, _ = _run(n=200)
    rp, gp = write_replay(d, "synth-replay", req)
    ingest([rp, gp], experiment=write_experiment(d / "exp.yaml", "synth-replay"), out=d / "tables")
    return d / "tables"


def _obs(argv):
    return cli_fit._load_obs(cli.build_parser().parse_args(["fit", *argv]))


def test_sampler_seed_does_not_change_the_rows(replay_dir):
    base = ["--data", str(replay_dir), "--rows-per-run-kind", "15"]
    h0 = M.data_hash(_obs(base + ["--seed", "0"]))
    assert M.data_hash(_obs(base + ["--seed", "7"])) == h0
    # the subsample is drawn by --data-seed: another data seed sees other rows
    assert M.data_hash(_obs(base + ["--seed", "0", "--data-seed", "7"])) != h0


def test_fit_sees_every_row_in_bins_by_default(replay_dir):
    binned = _obs(["--data", str(replay_dir)])
    raw = _obs(["--data", str(replay_dir), "--bins", "none"])  # (capped at 300 per run and kind)
    sub = _obs(["--data", str(replay_dir), "--rows-per-run-kind", "15"])
    assert np.all(raw.n_rows == 1) and np.all(sub.n_rows == 1) and binned.n_rows.max() > 1
    assert binned.n_rows.sum() >= len(raw) > len(binned)
    assert set(binned.kind.tolist()) == set(raw.kind.tolist())
    # every row: a bin row per (run, kind, time slice, design bin) at most
    per = {(r, k): (binned.run == r) & (binned.kind == k) for r, k in set(zip(binned.run, binned.kind))}
    assert max(int(m.sum()) for m in per.values()) <= 4 * 8
    two = _obs(["--data", str(replay_dir), "--bins", "2x3"])
    assert two.n_rows.sum() == binned.n_rows.sum() and len(two) < len(binned)


def test_cli_fit_records_both_seeds(replay_dir, tmp_path, fit_calls):
    seen = fit_calls
    with pytest.raises(FitCalled):
        cli.main(
            [
                "fit",
                "--data",
                str(replay_dir),
                "--out",
                str(tmp_path / "f.nc"),
                "--seed",
                "3",
                "--data-seed",
                "5",
                "--rows-per-run-kind",
                "15",
            ]
        )
    assert seen["seed"] == 3
    assert seen["attrs"]["data_seed"] == 5
    assert seen["attrs"]["rows_per_run_kind"] == 15


def test_shipped_default_feature_spec_is_current():
    a = M.load_default().attrs
    assert a["spec_version"] == F.SPEC_VERSION
    assert json.loads(a["feature_names"]) == list(F.BETA_NAMES)
    assert json.loads(a["feature_units"]) == list(F.BETA_UNITS)
    np.testing.assert_allclose(json.loads(a["feature_scales"]), F.BETA_SCALE)
    assert json.loads(a["alpha_feature_names"]) == list(F.ALPHA_NAMES)
    np.testing.assert_allclose(json.loads(a["alpha_feature_scales"]), F.ALPHA_SCALE)


@pytest.mark.slow
def test_shipped_default_is_the_fit_of_the_current_bundled_design():
    """The rows `bayeslat fit` builds today (with the default's own data arguments) are the rows
    the shipped default was fit on. A change to the data path (reconstruction, design, features,
    bundled tables) fails here until the default is refit (~1 min: the design of all 16 runs)."""
    idata = M.load_default()
    a = idata.attrs
    assert a["data_source"] == "bundled"
    argv = ["--rows-per-run-kind", str(a["rows_per_run_kind"]), "--data-seed", str(a.get("data_seed", 0))]
    bins = json.loads(a.get("bins") or "null")
    argv += ["--bins", "x".join(map(str, bins)) if bins else "none"]
    for key, flag in (("runs", "--runs"), ("exclude", "--exclude")):
        v = json.loads(a.get(key) or "null")
        if v:
            argv += [flag, *v]
    from bayeslat.data import datasets

    assert a["bundled_data_hash"] == datasets.data_hash(), "the bundled tables changed since the default was fit"
    obs = _obs(argv)
    if M.data_hash(obs) == a["data_hash"]:
        return
    # a different hash is tolerated only for floating-point noise of another machine, never for
    # other rows or values
    cd = idata.constant_data
    assert obs.run.tolist() == cd["run"].values.astype(str).tolist(), "other rows: refit the default (bayeslat fit)"
    np.testing.assert_array_equal(obs.kind, cd["kind"].values)
    np.testing.assert_array_equal(obs.request, cd["request"].values)
    np.testing.assert_allclose(
        obs.y, idata.observed_data["y"].values, rtol=1e-9, err_msg="observed y changed: refit the default (bayeslat fit)"
    )
    np.testing.assert_allclose(obs.X, cd["X"].values, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(obs.A, cd["A"].values, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(obs.n_steps, cd["n_steps"].values, rtol=1e-9)
    np.testing.assert_array_equal(obs.n_rows, cd["n_rows"].values)
    np.testing.assert_allclose(obs.n_eff, cd["n_eff"].values, rtol=1e-9)
