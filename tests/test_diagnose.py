"""bayeslat.model.diagnose: a diagnostic that cannot be computed fails with its reason, and a
deployment spread sampled with NUTS (group ``deployment_spread``, attached with
``attach_deployment_spread``) is diagnosed like the coefficient fit; the grid-estimated one is
checked in test_spread.py.

The fits here are built from seeded arrays (no sampling): well-mixed chains, or chains moved
apart where a test needs R-hat > 1."""

import json

import arviz as az
import numpy as np
import pytest
import xarray as xr

from bayeslat import cli
from bayeslat import features as F
from bayeslat import model as M
from bayeslat.cli.diagnose import format_table
from bayeslat.model import diagnose as D

DEPS = ["H100 SXM|aaaaaaaaaa", "H100 SXM|bbbbbbbbbb", "H100 SXM|cccccccccc"]
GOOD_RECORD = {"min_bfmi": 0.9, "tree_depth_saturation": 0.0}  # what attach_deployment_spread does not record


def _fit(chains=4, draws=500, seed=0, loglik=True, stats=True, deps=DEPS, priors=None):
    """A coefficient fit as ``model.fit`` stores it (posterior, sample_stats, log_likelihood,
    constant_data with deployments, attrs), without a spread group."""
    rng = np.random.default_rng(seed)
    sh = (chains, draws)
    n = 60
    post = {
        "beta_pop": np.exp(np.log(0.5) + 0.05 * rng.standard_normal(sh + (F.N_BETA,))),
        "sigma_cls": np.abs(0.2 + 0.02 * rng.standard_normal(sh)),
        "nu": 8.0 + rng.standard_normal(sh),
    }
    kw = {}
    if stats:
        kw["sample_stats"] = {
            "energy": rng.standard_normal(sh),
            "diverging": np.zeros(sh, bool),
            "maxdepth_reached": np.zeros(sh, bool),
        }
    if loglik:
        kw["log_likelihood"] = {"y": -1.0 + 0.01 * rng.standard_normal(sh + (n,))}
    idata = az.from_dict(posterior=post, dims={"beta_pop": ["feature"]}, coords={"feature": list(F.BETA_NAMES)}, **kw)
    dep = np.array([deps[i % len(deps)] for i in range(n)])
    idata.add_groups(
        constant_data=xr.Dataset(
            {"deployment": ("obs_id", dep), "hw": ("obs_id", np.zeros(n, int)), "cls": ("obs_id", np.zeros(n, int))},
            coords={"obs_id": np.arange(n)},
        )
    )
    idata.attrs.update(
        {
            "format": M.FORMAT,
            "spec_version": F.SPEC_VERSION,
            "priors": json.dumps(M._merge_priors(priors)),
            "feature_present": json.dumps(list(F.BETA_NAMES)),
        }
    )
    return idata


def _spread(chains=4, draws=500, seed=1, shift=0.0, diverging=0):
    """What a spread fit ("fit" deployment level) hands to ``model.attach_deployment_spread``:
    chain 0 of ``dev_alpha_dep`` moved by ``shift``."""
    rng = np.random.default_rng(seed)
    sh = (chains, draws)
    dev_a = 0.05 * rng.standard_normal(sh + (len(DEPS),))
    dev_a[0] += shift
    div = np.zeros(sh, bool)
    div[0, :diverging] = True
    return az.from_dict(
        posterior={
            "sigma_dep": np.abs(0.06 + 0.01 * rng.standard_normal(sh)),
            "sigma_alpha_dep": np.abs(0.14 + 0.02 * rng.standard_normal(sh)),
            "dev_dep": 0.02 * rng.standard_normal(sh + (len(DEPS),)),
            "dev_alpha_dep": dev_a,
        },
        dims={"dev_dep": ["deployment"], "dev_alpha_dep": ["deployment"]},
        coords={"deployment": DEPS},
        sample_stats={"diverging": div},
    )


def _with_spread(idata, record=GOOD_RECORD, **kw):
    M.attach_deployment_spread(idata, _spread(**kw))
    if record is not None:
        idata.attrs["deployment_spread"] = json.dumps(json.loads(idata.attrs["deployment_spread"]) | record)
    return idata


def test_complete_fit_passes_both_stages():
    d = D.diagnose(_with_spread(_fit()))
    assert all(d["checks"].values()) and d["reasons"] == {}
    sp = d["deployment_spread"]
    assert sp["status"] == "diagnosed" and set(sp["checks"]) == set(D.SPREAD_CHECKS) and all(sp["checks"].values())
    assert {"sigma_dep", "sigma_alpha_dep", "dev_dep", "dev_alpha_dep"} <= set(sp["variables"])
    assert d["passed"] is True


@pytest.mark.parametrize(
    "make, failed, reason",
    [
        (lambda: _fit(loglik=False), ["max_pareto_k"], "log_likelihood"),
        (lambda: _fit(chains=1, draws=800), ["max_rhat"], "2 chains"),
        (lambda: _fit(stats=False), ["divergences", "min_bfmi", "tree_depth_saturation"], "sample_stats"),
    ],
)
def test_missing_diagnostic_fails_with_its_reason(make, failed, reason):
    """Before: a diagnostic that could not be computed was None in ``checks`` and counted as a pass."""
    d = D.diagnose(_with_spread(make()))
    for key in failed:
        assert d["checks"][key] is False, key
        assert reason in d["reasons"][key], d["reasons"]
    assert all(v for k, v in d["checks"].items() if k not in failed)
    assert d["passed"] is False
    table = format_table(d)
    for key in failed:
        row = next(ln for ln in table.splitlines() if ln.startswith(key))
        assert " NO " in row and reason in row
    assert table.splitlines()[-1] == "FAILED"


def test_unconverged_spread_fit_fails():
    """The coefficient stage converged, the spread fit's chains disagree: the fit fails."""
    d = D.diagnose(_with_spread(_fit(), shift=0.5, diverging=3))
    assert all(d["checks"].values())
    sp = d["deployment_spread"]
    assert sp["checks"]["max_rhat"] is False and sp["max_rhat"] > 1.05
    assert "dev_alpha_dep" in sp["reasons"]["max_rhat"]
    assert sp["divergences"] == 3 and sp["checks"]["divergences"] is False
    assert d["passed"] is False
    assert "deployment spread" in format_table(d)


def test_spread_fit_without_sampler_record_fails():
    """``attach_deployment_spread`` as ``fit`` calls it keeps draws and the divergence count, not
    the spread fit's energy or tree depths: BFMI and tree-depth saturation are failures with
    their reason, not passes."""
    d = D.diagnose(_with_spread(_fit(), record=None))
    sp = d["deployment_spread"]
    assert sp["checks"]["divergences"] is True
    for key in ("min_bfmi", "tree_depth_saturation"):
        assert sp["checks"][key] is False and "records no" in sp["reasons"][key]
    assert d["passed"] is False


def test_spread_fit_due_but_absent_fails_and_not_due_is_not_run():
    # "spread" priors: fit() would have attached a deployment spread
    d = D.diagnose(_fit())
    sp = d["deployment_spread"]
    assert sp["status"] == "missing" and "no deployment_spread group" in sp["reason"]
    assert not any(sp["checks"].values()) and d["passed"] is False
    assert "MISSING" in format_table(d)
    # also with one deployment (the spread is then its prior, but attached all the same)
    assert D.diagnose(_fit(deps=DEPS[:1]))["deployment_spread"]["status"] == "missing"
    # not due: the deployment level is off
    for idata in (_fit(priors={"deployment_level": "off"}),):
        d = D.diagnose(idata)
        assert d["deployment_spread"]["status"] == "not run" and d["deployment_spread"]["reason"]
        assert d["passed"] is True
        assert "not run (" in format_table(d)


def test_cli_diagnose_exit_code_and_reasons(tmp_path, capsys):
    p = M.save(_with_spread(_fit(loglik=False)), tmp_path / "fit.nc")
    assert cli.main(["diagnose", str(p)]) == 1
    out = capsys.readouterr().out
    assert "no log_likelihood group" in out and out.strip().endswith("FAILED")
    assert cli.main(["diagnose", str(p), "--json"]) == 1
    d = json.loads(capsys.readouterr().out)
    assert d["checks"]["max_pareto_k"] is False and "log_likelihood" in d["reasons"]["max_pareto_k"]
    assert d["deployment_spread"]["status"] == "diagnosed" and d["passed"] is False
    p = M.save(_with_spread(_fit()), tmp_path / "good.nc")
    assert cli.main(["diagnose", str(p)]) == 0
    assert capsys.readouterr().out.strip().endswith("PASSED")


def test_shipped_default_spread_is_diagnosed():
    """The shipped default's deployment spread is the grid posterior from its held-out models'
    deployment factors (bayeslat calibrate): checked, and passing."""
    sp = D.diagnose_spread(M.load_default())
    assert sp["status"] == "exact" and sp["passed"]
    assert sp["fit"]["source"] == "held-out deployments" and sp["fit"]["step_dof"] >= 4
