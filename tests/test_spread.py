"""The between-deployment spread, a cut stage exact on a grid (``model.estimate_deployment_spread``):
sigma is recovered from held-out deployment factors drawn with a known spread, from a fit's own
residuals where deployments outnumber what the coefficients can absorb, and stays at its prior
where they do not."""

import json
from dataclasses import replace

import numpy as np
import pytest
from fakefit import FAKE_PRIORS, fake_idata

from bayeslat import model as M
from bayeslat.model import spread as S


def _meta(idata):
    return json.loads(idata.attrs["deployment_spread"])


def _fake(n_deps: int, sigma: float, seed: int = 0):
    """A fake fit at the true coefficients of ``n_deps`` dense deployments whose rows run
    ``exp(N(0, sigma))`` slower or faster than the coefficients say (one factor per deployment,
    on the whole row)."""
    obs, truth = M.simulate_obs(seed=seed, rows={("H100 SXM", "dense"): 40 * n_deps})
    rng = np.random.default_rng(seed + 1)
    keys = np.array([f"d{i:02d}" for i in range(n_deps)])
    run = keys[np.arange(len(obs.y)) % n_deps]
    factor = np.exp(sigma * rng.standard_normal(n_deps))
    obs = replace(obs, y=obs.y * factor[np.arange(len(obs.y)) % n_deps], run=run, meta={"deployments": {k: k for k in keys}})
    return fake_idata(obs, truth, seed=seed), factor


def test_heldout_factors_recover_sigma():
    idata, _ = _fake(3, 0.0)
    rng = np.random.default_rng(3)
    held = [
        {"model": f"m{i}", "factor_step": 0.12 * z, "factor_cpu": 0.3 * w}
        for i, (z, w) in enumerate(rng.standard_normal((400, 2)))
    ]
    M.estimate_deployment_spread(idata, heldout=held, seed=0)
    meta = _meta(idata)
    assert meta["source"] == "held-out deployments" and meta["step_dof"] == 400 and meta["alpha_dof"] == 400
    assert meta["step"]["median"] == pytest.approx(0.12, rel=0.1)
    assert meta["alpha"]["median"] == pytest.approx(0.3, rel=0.1)
    sd = idata["deployment_spread"]
    assert sd["sigma_dep"].shape == (1, S.DEPLOYMENT_SPREAD["draws"])
    assert np.median(sd["sigma_dep"].values) == pytest.approx(meta["step"]["median"])
    # a few held-out deployments: the LogNormal prior (median 0.07) still counts
    M.estimate_deployment_spread(idata, heldout=held[:2], seed=0)
    assert 0.03 < _meta(idata)["step"]["median"] < 0.2 and _meta(idata)["step_dof"] == 2


@pytest.mark.parametrize("sigma", [0.15, 0.0])
def test_fit_residuals_inform_sigma_with_their_degrees_of_freedom(sigma):
    """24 deployments: the residual factors, projected off what the coefficients can absorb, carry
    the spread of the factors the rows were drawn with (and none where there is none, against a
    prior median of 0.07)."""
    idata, factor = _fake(24, sigma)
    M.estimate_deployment_spread(idata, seed=0)
    meta = _meta(idata)
    assert meta["source"].startswith("fit residuals") and 15 <= meta["step_dof"] <= 23
    if sigma:
        assert meta["step"]["median"] == pytest.approx(np.std(np.log(factor)), rel=0.25)
        assert meta["step"]["q05"] < np.std(np.log(factor)) < meta["step"]["q95"]
    else:
        assert meta["step"]["median"] < 0.025  # the rows' own noise (about 1%)
    assert meta["step"]["grid_edge_mass"] < 1e-3


def test_absorbed_deployments_keep_the_prior():
    """The shipped default: 3 dense deployments and the features constant per deployment absorb
    every direction of their residual factors (all within 1%); with no degree of freedom left the
    prior comes back (median 0.07, 5% quantile 0.031) instead of reading absorbed residuals as no
    spread at all."""
    idata = M.load_default()
    res = S.deployment_residuals(idata)
    assert len(res) == 4 and res["step"].abs().max() < 0.05
    M.estimate_deployment_spread(idata, seed=0)
    meta = _meta(idata)
    assert meta["step_dof"] == 0 and meta["alpha_dof"] == 0
    assert meta["step"]["median"] == pytest.approx(0.07, rel=0.1)
    assert meta["step"]["q05"] == pytest.approx(0.07 * np.exp(-1.645 * 0.5), rel=0.15)
    # the projection: residuals inside the span of the absorbing columns leave nothing
    Z = np.column_stack([np.ones(3), [0.2, 0.5, 0.9], [0.1, 0.1, 0.3]])
    assert S._complement(Z).shape == (3, 0)
    Q = S._complement(Z[:, :2])
    assert Q.shape == (3, 1) and np.allclose(Q.T @ Z[:, :2], 0.0)
    draws, edge = S._sigma_grid_draws([], 0.07, 0.5, 800, 4000, np.random.default_rng(0))
    assert np.median(draws) == pytest.approx(0.07, rel=0.05) and edge < 1e-3


def test_fit_attaches_the_grid_spread_and_diagnose_checks_it():
    from bayeslat.cli.diagnose import format_table
    from bayeslat.model import diagnose as D

    idata, _ = _fake(24, 0.15)
    M.estimate_deployment_spread(idata, seed=0)
    sp = D.diagnose(idata)["deployment_spread"]
    assert sp["status"] == "exact" and sp["passed"] and set(sp["checks"]) == {"grid_edge_mass_step", "grid_edge_mass_alpha"}
    assert "sigma_dep" in format_table(D.diagnose(idata))
    # a posterior pushed off the grid fails, with its reason
    meta = _meta(idata)
    meta["step"]["grid_edge_mass"] = 0.2
    idata.attrs["deployment_spread"] = json.dumps(meta)
    sp = D.diagnose(idata)["deployment_spread"]
    assert not sp["passed"] and "edge of the grid" in sp["reasons"]["grid_edge_mass_step"]


def test_new_deployment_draws_its_factor_with_the_spread():
    idata, _ = _fake(24, 0.15)
    idata.attrs["priors"] = json.dumps(M._merge_priors(FAKE_PRIORS))
    M.estimate_deployment_spread(idata, seed=0)
    seen = M.coefficient_draws(idata, "H100 SXM", "dense", n=400, seed=2, deployment="d00", new_run=False)
    new = M.coefficient_draws(idata, "H100 SXM", "dense", n=400, seed=2, deployment="Z", new_run=False)
    assert not seen.new_deployment and new.new_deployment
    assert np.array_equal(new.draw_index, seen.draw_index)
    spread = np.var(np.log(new.beta[:, 0, 2]) - np.log(seen.beta[:, 0, 2]))
    sig = idata["deployment_spread"]["sigma_dep"].values.ravel()
    assert spread == pytest.approx(np.mean(sig**2), rel=0.35)
