import json

import numpy as np
import pytest
from fakefit import fake_idata

from bayeslat import features as F
from bayeslat import model as M
from bayeslat.data import design
from bayeslat.errors import SpecError
from bayeslat.model.diagnose import diagnose, diagnostic_vars

ZERO = [f for f, v in M.TRUE_BETA_POP.items() if v == 0.0]


# ------------------------------------------------------------------ no sampling
def test_check_obs_rejects_bad_input():
    obs, _ = M.simulate_obs(seed=1, rows={("H100 SXM", "dense"): 20})
    from dataclasses import replace

    good = obs.subset(np.arange(20))
    with pytest.raises(SpecError, match="X"):
        M.check_obs(replace(good, X=good.X[:, :2]))
    with pytest.raises(SpecError, match="hw"):
        M.check_obs(replace(good, hw=good.hw + 5))
    y = good.y.copy()
    y[0] = np.nan
    with pytest.raises(SpecError, match="y"):
        M.check_obs(replace(good, y=y))
    with pytest.raises(SpecError, match="priors"):
        M.build_model(obs, priors={"nonsense": 1})
    with pytest.raises(SpecError, match="exclude_features"):
        M.build_model(obs, priors={"exclude_features": ["no_such_feature"]})
    with pytest.raises(SpecError, match="no_class_deviation"):
        M.build_model(obs, priors={"no_class_deviation": ["no_such_feature"]})
    # a scale vector of the wrong length (e.g. a 3-entry alpha_scale from before multiproc) is named
    with pytest.raises(SpecError, match=r"alpha_scale must be one number or 4 \(const, prompt_tokens"):
        M.build_model(obs, priors={"alpha_scale": [2.0, 0.5, 0.5]})
    with pytest.raises(SpecError, match="beta_scale"):
        M.build_model(obs, priors={"beta_scale": [[1.0]]})
    with pytest.raises(SpecError, match=r"ard_prior must be one of \('betaprime', 'horseshoe'\), got 'cauchy'"):
        M.build_model(obs, priors={"ard_prior": "cauchy"})
    with pytest.raises(SpecError, match="hs_tau0 must be > 0"):
        M.build_model(obs, priors={"ard_prior": "horseshoe", "hs_tau0": 0})


@pytest.mark.parametrize("prior", ["betaprime", "horseshoe"])
def test_sparsity_prior_of_the_population_coefficients(prior):
    """Both sparsity priors put most of their mass near zero (pruning) and leave a tail up to
    about twice the feature's scale; the horseshoe's variables are the coefficients (log scale), the
    global scale and the slab, its local scales integrated out."""
    import pymc as pm

    obs, _ = M.simulate_obs(seed=0)
    m = M.build_model(obs, priors={"ard_prior": prior})
    names = {v.name for v in m.free_RVs}
    hs = {"beta_pop_hs", "beta_pop_hs_tau", "beta_pop_hs_c2"}
    assert (hs <= names) == (prior == "horseshoe") and ("beta_pop_w" in names) == (prior == "betaprime")
    with m:
        pr = pm.sample_prior_predictive(3000, var_names=["beta_pop"], random_seed=1)
    f = F.B["prefill_compute"]  # an ARD feature of scale 1
    q05, q50, q95 = np.quantile(pr.prior["beta_pop"].values[..., f].ravel(), [0.05, 0.5, 0.95])
    assert q05 < 0.01 and 0.05 < q50 < 0.4 and 1.5 < q95 < 3.5


@pytest.mark.parametrize("tau,c2", [(0.5, 4.0), (0.05, 4.0), (1.0, 0.5)])
def test_horseshoe_local_scales_integrated_out(tau, c2):
    """The horseshoe's marginal density on its grid matches the integral over lambda by adaptive
    quadrature, from the spike at zero (1e-6) to the slab (2): one density, in numpy and in the
    model's pytensor graph."""
    import pytensor.tensor as pt
    from scipy import integrate, stats

    from bayeslat.model.build import horseshoe_logp

    xs = np.array([1e-6, 1e-3, 0.05, 0.5, 2.0])

    def exact(x):
        def f(lam):
            s = tau * np.sqrt(c2 * lam**2 / (c2 + tau**2 * lam**2))
            return stats.halfnorm.pdf(x, scale=s) * 2 / np.pi / (1 + lam**2)

        cuts = [0, x / tau / 100, x / tau * 100, np.inf]
        return np.log(sum(integrate.quad(f, a, b, limit=500)[0] for a, b in zip(cuts[:-1], cuts[1:])))

    ref = np.array([exact(x) for x in xs])
    np.testing.assert_allclose(horseshoe_logp(np, xs, tau, c2), ref, atol=1e-5)
    np.testing.assert_allclose(horseshoe_logp(pt, pt.as_tensor(xs), tau, c2).eval(), ref, atol=1e-5)
    assert np.all(np.diff(ref) < 0)  # the spike: the density falls from zero


def test_no_class_deviation_cells():
    """Features named in no_class_deviation get no class-deviation cell; the others keep theirs."""
    obs, _ = M.simulate_obs(seed=1, rows={("H100 SXM", "dense"): 200, ("H100 SXM", "moe"): 200})
    d = M.check_obs(obs)
    free = M._centred_cells(d, no_class=())["cls"]
    cut = M._centred_cells(d, no_class=["context_overhead", "decode_kv"])["cls"]
    for f in ("context_overhead", "decode_kv"):
        assert free[0, F.B[f]] and not cut[0, F.B[f]]
    others = np.setdiff1d(np.arange(F.N_BETA), [F.B["context_overhead"], F.B["decode_kv"]])
    assert (free[:, others] == cut[:, others]).all()


def test_excluded_features_get_no_class_cell():
    """A feature held at 0 (exclude_features) gets no class-deviation parameter: it would multiply
    a zero coefficient, a dimension informed by its prior alone."""
    obs, _ = M.simulate_obs(seed=1, rows={("H100 SXM", "dense"): 200, ("H100 SXM", "moe"): 200})
    free = M._centred_cells(M.check_obs(obs))["cls"]
    held = [f for f in ("step_overhead", "prefill_overhead") if free[0, F.B[f]]]
    assert held, "the simulated data should give these features class cells when they are fitted"

    def n_cls_cells(m):
        return sum(int(np.prod(m[v].type.shape)) for v in ("u_dev_cls", "z_dev_cls") if v in m.named_vars)

    base = {"no_class_deviation": [], "exclude_features": []}
    m_all = M.build_model(obs, priors=base)
    m_cut = M.build_model(obs, priors=base | {"exclude_features": held})
    assert n_cls_cells(m_all) - n_cls_cells(m_cut) == len(held)


def test_alpha_intercept_prior_and_names():
    """The alpha intercept and prompt-token cost have their own LogNormal prior (not the sparsity prior); bad entries are
    named; no data container shares a name with a NUTS sample stat (numpyro's conversion to
    InferenceData mixed a data "n_steps" with the sampler's "n_steps" and failed)."""
    obs, _ = M.simulate_obs(seed=1, rows={("H100 SXM", "dense"): 30})
    m = M.build_model(obs)
    n_ln = len(M.DEFAULT_PRIORS["alpha_lognormal"])  # the intercept and the prompt tokens
    assert n_ln == 2 and m["alpha_pop_lognormal"].type.shape == (n_ln,) and m["alpha_pop_w"].type.shape == (F.N_ALPHA - n_ln,)
    m2 = M.build_model(obs, priors={"alpha_lognormal": {}})
    assert "alpha_pop_lognormal" not in m2.named_vars and m2["alpha_pop_w"].type.shape == (F.N_ALPHA,)
    with pytest.raises(SpecError, match="alpha_lognormal.*no_such"):
        M.build_model(obs, priors={"alpha_lognormal": {"no_such": [1.0, 1.0]}})
    with pytest.raises(SpecError, match="median > 0"):
        M.build_model(obs, priors={"alpha_lognormal": {"const": [0.0, 1.0]}})
    with pytest.raises(SpecError, match="beta_lognormal.*no_such"):
        M.build_model(obs, priors={"beta_lognormal": {"no_such": [1.0, 0.5]}})
    # a present beta term with a physics prior leaves the sparsity prior
    bln = M.DEFAULT_PRIORS["beta_lognormal"]
    m3 = M.build_model(obs, priors={"beta_lognormal": bln | {"weight_load": [1.0, 0.3]}})
    assert m3["beta_pop_lognormal"].type.shape == (len(bln) + 1,)
    assert m3["beta_pop_w"].type.shape[0] == m.named_vars["beta_pop_w"].type.shape[0] - 1
    stats = {
        "n_steps",
        "tree_depth",
        "depth",
        "diverging",
        "energy",
        "step_size",
        "acceptance_rate",
        "lp",
        "logp",
        "mean_tree_accept",
        "maxdepth_reached",
        "energy_error",
        "index_in_trajectory",
    }
    assert not stats & set(m.named_vars)


def test_data_hash_is_content_hash():
    a, _ = M.simulate_obs(seed=1, rows={("H100 SXM", "dense"): 30})
    b, _ = M.simulate_obs(seed=1, rows={("H100 SXM", "dense"): 30})
    c, _ = M.simulate_obs(seed=2, rows={("H100 SXM", "dense"): 30})
    assert M.data_hash(a) == M.data_hash(b) != M.data_hash(c)


def test_model_structure_named_dims():
    obs, _ = M.simulate_obs(seed=1, rows={("H100 SXM", "dense"): 50, ("H100 SXM", "moe"): 50})
    m = M.build_model(obs)
    assert list(m.coords["hardware"]) == ["H100 SXM"] and list(m.coords["model_class"]) == ["dense", "moe"]
    assert m.named_vars_to_dims["beta"] == ("hardware", "model_class", "regime", "feature")
    names = set(m.named_vars)
    assert "dev_hw" not in names  # a single hardware level: deviation absorbed into the population
    assert "dev_cls" in names and "dev_regime" in names
    assert np.isfinite(m.compile_logp()(m.initial_point()))


@pytest.mark.parametrize(
    "rows",
    [
        {("H100 SXM", "dense"): 40},
        {("H100 SXM", "dense"): 60, ("H100 SXM", "moe"): 40},
        {("H100 SXM", "dense"): 80, ("H100 SXM", "moe"): 60, ("A100 SXM", "dense"): 20},
    ],
    ids=["one-group", "two-classes", "two-gpus-one-cell-empty"],
)
def test_fake_posterior_has_the_real_models_variables(rows):
    """The fake posterior the export / latency / coefficient-draw tests use (tests/fakefit.py) is
    shaped as a real fit of the same rows: every variable it has, build_model makes with the same
    dims; every deterministic build_model makes, it has (only NUTS's free coordinates are left
    out); and where the structure matches the shipped fit's (one GPU, two classes), the shipped
    posterior has the same variables and dims. Values: the observed groups' coefficients are the
    truth, and the class deviations sum to zero over the classes as in the model."""
    from fakefit import FAKE_PRIORS

    obs, truth = M.simulate_obs(seed=3, rows=rows)
    fake = fake_idata(obs, truth, seed=1)
    m = M.build_model(obs, priors=FAKE_PRIORS)
    post = fake.posterior
    for v in post.data_vars:
        assert v in m.named_vars, v
        assert tuple(m.named_vars_to_dims.get(v) or ()) == post[v].dims[2:], v
        for dim in post[v].dims[2:]:
            assert list(post.coords[dim].values) == list(m.coords[dim]), (v, dim)
    assert {d.name for d in m.deterministics} <= set(post.data_vars)
    if obs.hardware_levels == ("H100 SXM",) and len(obs.class_levels) == 2:
        shipped = M.load_default().posterior
        for v in post.data_vars:
            assert shipped[v].dims == post[v].dims, v
        assert {v for v in shipped.data_vars if v.startswith("dev_")} == {v for v in post.data_vars if v.startswith("dev_")}
    for (h, c), tb in truth["beta"].items():
        cd = M.coefficient_draws(fake, h, c, new_run=False)
        on = tb > 0
        np.testing.assert_allclose(cd.beta.mean(0)[on], tb[on], rtol=0.02)
        assert (cd.beta.mean(0)[~on] < 1e-3).all()  # pruned: ZERO_COEF times the regime factor
        np.testing.assert_allclose(cd.alpha.mean(0), truth["alpha"][(h, c)], rtol=0.02)
    if "dev_cls" in post:
        np.testing.assert_allclose(post["dev_cls"].sum("model_class"), 0.0, atol=1e-9)


def test_deployment_level_is_zero_sum_within_group():
    """Three deployments of one group: two free coordinates, the factors sum to zero; a group with
    one deployment has no factor but keeps sigma_dep (a new deployment is drawn with it)."""
    from dataclasses import replace

    obs, _ = M.simulate_obs(seed=1, rows={("H100 SXM", "dense"): 60, ("H100 SXM", "moe"): 30})
    run = np.where(obs.cls == 1, "moe-run", np.array(["a", "b", "c", "d"])[np.arange(len(obs.y)) % 4])
    deps = {"a": "dep-a", "b": "dep-b", "c": "dep-c", "d": "dep-a", "moe-run": "dep-moe"}
    obs = replace(obs, run=run, meta={"deployments": deps})
    assert M.check_obs(obs)["deployment"].tolist() == [deps[r] for r in run]
    assert "u_dev_dep" not in M.build_model(obs).named_vars  # default "spread": not in the likelihood
    fit_level = {"deployment_level": "fit"}
    m = M.build_model(obs, priors=fit_level)
    assert list(m.coords["deployment"]) == ["dep-a", "dep-b", "dep-c", "dep-moe"]
    assert m["u_dev_dep"].type.shape == (2,) and "sigma_dep" in m.named_vars
    draw = m.compile_fn(m["dev_dep"], inputs=m.value_vars, on_unused_input="ignore")
    pt = m.initial_point()
    pt = {k: (v + np.random.default_rng(0).normal(size=np.shape(v))) for k, v in pt.items()}
    dev = draw(pt)
    assert abs(dev[:3].sum()) < 1e-9 and dev[3] == 0.0 and np.abs(dev[:3]).max() > 0
    single = M.build_model(replace(obs, meta={}), priors=fit_level)  # every run its own deployment: 4 dense + 1 moe
    assert single["u_dev_dep"].type.shape == (3,)
    one = M.build_model(
        replace(obs, meta={"deployments": {r: "dense" if len(r) == 1 else "moe" for r in deps}}), priors=fit_level
    )
    assert "u_dev_dep" not in one.named_vars and "sigma_dep" in one.named_vars


@pytest.mark.slow
def test_deployment_spread_is_attached_and_used(tmp_path):
    """Default "spread" mode: the coefficients are fit without deployment factors, the cut stage
    supplies sigma_dep (three deployments and no constant feature to absorb them: two degrees of
    freedom); a new deployment draws its factor with it, a trained one not."""
    from dataclasses import replace

    obs, _ = M.simulate_obs(seed=1, rows={("H100 SXM", "dense"): 120})
    run = np.array(["a", "b", "c"])[np.arange(len(obs.y)) % 3]
    obs = replace(obs, run=run, meta={"deployments": {"a": "A", "b": "B", "c": "C"}})
    idata = M.fit(obs, draws=60, tune=60, chains=1, progressbar=False)
    assert "sigma_dep" not in idata.posterior and "deployment_spread" in idata.groups()
    meta = json.loads(idata.attrs["deployment_spread"])
    assert meta["method"] == "grid" and meta["source"].startswith("fit residuals") and meta["step_dof"] >= 1
    back = M.load(M.save(idata, tmp_path / "spread.nc"))
    assert "deployment_spread" in back.groups()
    # new_run=False: a new run's factors (the run spread) are drawn after the deployment factor,
    # from another point of the RNG stream in the two calls, and would add their own variance
    seen = M.coefficient_draws(back, "H100 SXM", "dense", n=400, seed=2, deployment="A", new_run=False)
    new = M.coefficient_draws(back, "H100 SXM", "dense", n=400, seed=2, deployment="Z", new_run=False)
    assert not seen.new_deployment and new.new_deployment
    f = F.B["weight_load"]
    # same seed, same posterior draws: the log ratio is exactly the new deployment's factor
    # (a difference of the two variances instead mixed in the parameter uncertainty of 400 draws)
    assert np.array_equal(new.draw_index, seen.draw_index)
    spread = np.var(np.log(new.beta[:, 0, f]) - np.log(seen.beta[:, 0, f]))
    sig = back["deployment_spread"]["sigma_dep"].values.ravel()
    assert spread == pytest.approx(np.mean(sig**2), rel=0.5)
    # the "off" mode: test_fit_is_reproducible_with_a_seed


def test_diagnose_flags_bad_rhat_and_divergences():
    obs, truth = M.simulate_obs(seed=1, rows={("H100 SXM", "dense"): 40})
    good = fake_idata(obs, truth, chains=4, draws=500, seed=0)
    d = diagnose(good)
    assert d["max_rhat"] < 1.01 and d["divergences"] == 0 and d["checks"]["max_rhat"]
    assert not any(v.startswith("z_") for v in diagnostic_vars(good))
    assert "weight_load" in d["features_kept"] and "decode_compute" in d["features_pruned"]
    div = np.zeros((4, 500), bool)
    div[1, :7] = True
    bad = fake_idata(obs, truth, chains=4, draws=500, seed=0, diverging=div, shift_chain=0.5)
    d = diagnose(bad)
    assert d["divergences"] == 7 and d["checks"]["divergences"] is False
    assert d["max_rhat"] > 1.05 and d["checks"]["max_rhat"] is False
    assert d["passed"] is False


def test_unseen_group_wider_on_fake():
    obs, truth = M.simulate_obs(seed=1, rows={("H100 SXM", "dense"): 40})
    idata = fake_idata(obs, truth, seed=0)
    seen = M.coefficient_draws(idata, "H100 SXM", "dense")
    new = M.coefficient_draws(idata, "L40S", "dense", n=300, seed=1)
    assert seen.new_levels == [] and new.new_levels == ["hardware"] and new.class_from == ["H100 SXM"]
    assert new.beta.shape == (300, len(F.REGIMES), F.N_BETA) and new.alpha.shape == (300, F.N_ALPHA)
    f = F.B["weight_load"]
    assert np.std(np.log(new.beta[:, 0, f])) > 2 * np.std(np.log(seen.beta[:, 0, f]))


def test_new_hardware_keeps_the_class_deviation():
    """A class the fit saw on other hardware transfers its deviation to a new GPU: the draws are
    centred on the fitted group's coefficients (the class deviation is not drawn afresh from
    sigma_cls), spread by the hardware level and a hardware x class interaction, both N(0, sigma_hw)."""
    obs, truth = M.simulate_obs(seed=1, rows={("H100 SXM", "dense"): 40, ("H100 SXM", "moe"): 40})
    idata = fake_idata(obs, truth, seed=0)
    # a class deviation far from the population: drawing it afresh would lose it
    idata.posterior["dev_cls"][:, :, 0, 0, :] = 1.0
    idata.posterior["sigma_cls"][:] = 0.8
    seen = M.coefficient_draws(idata, "H100 SXM", "dense", new_run=False)  # all 400 draws
    new = M.coefficient_draws(idata, "A100 SXM", "dense", new_run=False)
    assert new.new_levels == ["hardware"] and new.class_from == ["H100 SXM"]
    d = np.log(new.beta[:, 0, :]) - np.median(np.log(seen.beta[:, 0, :]), axis=0)
    np.testing.assert_allclose(np.median(d, axis=0), 0.0, atol=0.08)  # 4.5 SE of a median of 400
    # hardware deviation + interaction: sqrt(2) x sigma_hw (fake ~0.2), not sigma_cls (0.8)
    assert np.all(np.abs(d.std(axis=0) - np.sqrt(2) * 0.2) < 0.05)
    ad = np.log(new.alpha) - np.median(np.log(seen.alpha), axis=0)
    np.testing.assert_allclose(np.median(ad, axis=0), 0.0, atol=0.05)
    # a class no hardware has seen is still drawn from sigma_cls
    rows_dense_only = idata.copy()
    rows_dense_only.attrs["group_rows"] = json.dumps([[40, 0]])
    moe = M.coefficient_draws(rows_dense_only, "A100 SXM", "moe", new_run=False)
    assert moe.new_levels == ["hardware", "model_class"] and moe.class_from == []
    assert np.log(moe.beta[:, 0, F.B["weight_load"]]).std() > 0.6


@pytest.mark.slow
def test_fit_is_reproducible_with_a_seed():
    """The same data and seed give the same posterior, draw for draw (on one machine)."""
    # one (hardware, class) group: the smallest graph, since compiling it is most of the cost
    obs, _ = M.simulate_obs(seed=0, rows={("H100 SXM", "dense"): 60})
    # (the deployment level off: these fits also show that "off" attaches no deployment spread)
    kw = dict(draws=20, tune=20, chains=2, progressbar=False, attrs={"bundled_data_hash": "none"})
    a, b = (M.fit(obs, seed=3, priors={"deployment_level": "off"}, **kw) for _ in range(2))
    assert "deployment_spread" not in a.groups()
    assert not M.coefficient_draws(a, "H100 SXM", "dense", n=50, deployment="Z").new_deployment
    np.testing.assert_array_equal(a.posterior["beta_pop"].values, b.posterior["beta_pop"].values)
    np.testing.assert_array_equal(a.posterior["alpha_pop"].values, b.posterior["alpha_pop"].values)
    assert a.attrs["seed"] == b.attrs["seed"] and a.attrs["data_hash"] == b.attrs["data_hash"]


# ------------------------------------------------------------------ one real fit
@pytest.fixture(scope="module")
def fitted():
    # the default fit's rows: every row of a run in bin means (design.collapse; independent rows,
    # so n_eff = n_rows). One run per model size, as a real run serves one model: the sizes are
    # what separates per-layer from per-step constants, and a bin must not average them away.
    raw, truth = M.simulate_obs(
        seed=0, rows={("H100 SXM", "dense"): 1000, ("H100 SXM", "moe"): 800, ("A100 SXM", "dense"): 240}, run_per_variant=True
    )
    obs = design.collapse(raw, None, 2, 8)
    assert obs.n_rows.sum() == len(raw) and len(obs) < 0.25 * len(raw)
    # every feature fitted (the default holds step_overhead at 0, not identified on the 4 real
    # deployments; the synthetic design varies the deployment constants, so it is identified here),
    # and every present beta term under the sparsity prior (the truth has tp_sync_overhead = 0,
    # which the default physics prior of that term would not let ARD prune)
    idata = M.fit(
        obs,
        draws=300,
        tune=300,
        chains=2,
        seed=0,
        progressbar=False,
        attrs={"bundled_data_hash": "none"},
        priors={"exclude_features": [], "beta_lognormal": {}},
    )
    return obs, truth, idata


@pytest.mark.slow
def test_fit_recovers_known_coefficients(fitted):
    obs, truth, idata = fitted
    hits = []
    for (h, c), tb in truth["beta"].items():
        cd = M.coefficient_draws(idata, h, c)
        assert cd.new_levels == []
        m = (obs.hw == obs.hardware_levels.index(h)) & (obs.cls == obs.class_levels.index(c))
        informed = (obs.X[m] != 0).sum(0) >= 5
        lo, hi = np.quantile(cd.beta, [0.05, 0.95], axis=0)
        hits.append(((lo <= tb) & (tb <= hi))[(tb > 0) & informed])
        alo, ahi = np.quantile(cd.alpha, [0.05, 0.95], axis=0)
        hits.append((alo <= truth["alpha"][(h, c)]) & (truth["alpha"][(h, c)] <= ahi))
    hits = np.concatenate(hits)
    assert hits.size > 40
    # about 90% (0.92 of 98 here): too narrow intervals fall below the band, intervals too wide to
    # say anything (prior-dominated) above it (<= 2 misses of ~100, where ~10 are expected)
    assert 0.75 <= hits.mean() <= 0.98, f"90% intervals cover {hits.mean():.2f}"


@pytest.mark.slow
def test_zero_coefficients_shrink(fitted):
    obs, truth, idata = fitted
    mu = M.predict_mean(idata, obs).mean(0)
    post = idata.posterior
    for f in ZERO:
        if not (obs.X[..., F.B[f]] > 0).any():
            continue  # absent feature: posterior = prior, nothing to prune
        beta = post["beta"].sel(feature=f).mean(("chain", "draw")).values  # (H, C, R)
        contrib = np.einsum("nr,nr->n", obs.X[..., F.B[f]], beta[obs.hw, obs.cls])
        share = contrib.sum() / mu.sum()
        assert share < 0.05, f"{f} explains {share:.1%} of predicted time"
        # and its population coefficient small: below a quarter of the prior scale (e.g. 0.5 ms per
        # 100 collectives). Under BetaPrime(1/2, 2) the prior median is 0.14 x scale, so this bounds
        # the posterior against being pulled up, e.g. by a collinear feature
        scale = M.DEFAULT_PRIORS["beta_scale"][F.B[f]]
        med = float(post["beta_pop"].sel(feature=f).median())
        assert med < 0.25 * scale, f"{f}: posterior median {med:.3f} vs prior scale {scale}"


@pytest.mark.slow
def test_fit_groups_attrs_and_roundtrip(fitted, tmp_path):
    obs, truth, idata = fitted
    for g in ("posterior", "sample_stats", "log_likelihood", "observed_data", "constant_data"):
        assert g in idata.groups()
    for dim in ("hardware", "model_class", "regime", "feature", "alpha_feature"):
        assert dim in idata.posterior.dims
    a = idata.attrs
    assert a["format"] == M.FORMAT and a["spec_version"] == F.SPEC_VERSION
    assert json.loads(a["feature_names"]) == list(F.BETA_NAMES)
    assert a["data_hash"] == M.data_hash(obs) and a["bundled_data_hash"] == "none"
    assert a["backend"] == M.DEFAULT_BACKEND and a["seed"] == 0
    from importlib import metadata

    libs = json.loads(a["library_versions"])
    assert libs["pymc"] == metadata.version("pymc") and libs[M.DEFAULT_BACKEND] == metadata.version(M.DEFAULT_BACKEND)
    p = M.save(idata, tmp_path / "fit.nc")
    back = M.load(p)
    assert back.attrs["data_hash"] == a["data_hash"]
    np.testing.assert_allclose(back.posterior["beta"].values, idata.posterior["beta"].values)
    # a loaded fit saved back over its own file (new attrs): the file is replaced, not truncated
    back.attrs["sim_discrepancy"] = json.dumps({"sigma": {"e2e": 0.02}})
    M.save(back, p)
    again = M.load(p)
    assert json.loads(again.attrs["sim_discrepancy"])["sigma"]["e2e"] == 0.02
    np.testing.assert_allclose(again.posterior["beta"].values, idata.posterior["beta"].values)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["fit.nc"]  # no temporary file left
    # the simulator discrepancy rides along with draws for a new run only
    assert M.coefficient_draws(again, "H100 SXM", "dense", n=5).sim_sd == {"e2e": 0.02}
    assert M.coefficient_draws(again, "H100 SXM", "dense", n=5, new_run=False).sim_sd is None
    p.with_name("bad.nc").write_bytes(b"")
    with pytest.raises(SpecError, match="bad.nc: not a netCDF file of a bayeslat fit"):
        M.load(p.with_name("bad.nc"))
    # a fit of another feature layout is refused, naming the field
    old = idata.copy()
    old.attrs["spec_version"] = "bayeslat-features/1"
    old.to_netcdf(str(tmp_path / "old.nc"))
    with pytest.raises(SpecError, match="spec_version|bayeslat-features/1"):
        M.load(tmp_path / "old.nc")


@pytest.mark.slow
def test_predictions_and_unseen_group(fitted):
    obs, truth, idata = fitted
    mu = M.predict_mean(idata, obs, n=200)
    assert mu.shape == (200, len(obs.y))
    assert np.median(np.abs(mu.mean(0) - obs.y) / obs.y) < 0.1
    pp = M.posterior_predictive(idata, obs, n=200, seed=1)
    lo, hi = np.quantile(pp, [0.05, 0.95], axis=0)
    cover = ((lo <= obs.y) & (obs.y <= hi)).mean()
    assert 0.8 <= cover <= 0.98
    seen = M.coefficient_draws(idata, "H100 SXM", "dense")
    new = M.coefficient_draws(idata, "H200 SXM", "dense", seed=3)
    assert new.new_levels == ["hardware"]
    f = F.B["weight_load"]
    assert np.std(np.log(new.beta[:, 0, f])) > 1.5 * np.std(np.log(seen.beta[:, 0, f]))


def test_new_class_keeps_shared_features():
    """A new model class draws a class deviation for every feature except those the fit shares
    between classes (no_class_deviation, read from the fit's stored priors)."""
    obs, truth = M.simulate_obs(seed=3, rows={("H100 SXM", "dense"): 80, ("H100 SXM", "moe"): 60, ("A100 SXM", "dense"): 20})
    idata = fake_idata(obs, truth, seed=1)
    shared, free = idata.copy(), idata.copy()
    shared.attrs["priors"] = json.dumps({"no_class_deviation": ["context_overhead"]})
    free.attrs["priors"] = json.dumps({"no_class_deviation": []})
    for fit in (shared, free):  # no hardware has MoE rows: the class is new (not transferred from the H100)
        fit.attrs["group_rows"] = json.dumps([[80, 0], [20, 0]])
    a = M.coefficient_draws(shared, "A100 SXM", "moe", n=400, seed=5)
    b = M.coefficient_draws(free, "A100 SXM", "moe", n=400, seed=5)
    assert "model_class" in a.new_levels
    ctx = F.B["context_overhead"]
    others = np.setdiff1d(np.arange(F.N_BETA), [ctx])
    np.testing.assert_allclose(a.beta[:, :, others], b.beta[:, :, others], rtol=1e-12)
    # the free draw carries sigma_cls * N(0, 1) more on the log scale (fake sigma_cls ~ 0.2)
    extra = np.log(b.beta[:, 0, ctx] / a.beta[:, 0, ctx])
    assert 0.15 < extra.std() < 0.25
    # a seen class is unaffected by the setting
    np.testing.assert_allclose(
        M.coefficient_draws(shared, "A100 SXM", "dense", n=50, seed=5).beta,
        M.coefficient_draws(free, "A100 SXM", "dense", n=50, seed=5).beta,
        rtol=1e-12,
    )


def _fake_fit_with_runs(runs_per_group, run_sd, seed=4, n=1200):
    """A fake fit (posterior at the truth, no sampling) of simulated rows dealt to runs with known
    run factors, with what attach_run_spread reads: beta / alpha at the truth exactly, observed y,
    run and deployment."""
    obs, truth = M.simulate_obs(
        seed=seed,
        rows={("H100 SXM", "dense"): n},
        runs_per_group=runs_per_group,
        run_sd=run_sd,
        kind_mix=(0.4, 0.2, 0.3, 0.1),
        noise=(0.02, 0.03),
    )
    idata = fake_idata(obs, truth, seed=0, draws=100)
    sh = (idata.posterior.sizes["chain"], idata.posterior.sizes["draw"])
    b = np.broadcast_to(truth["beta"][("H100 SXM", "dense")], sh + (1, 1, len(F.REGIMES), F.N_BETA))
    a = np.broadcast_to(truth["alpha"][("H100 SXM", "dense")], sh + (1, 1, F.N_ALPHA))
    idata.posterior["beta"] = (("chain", "draw", "hardware", "model_class", "regime", "feature"), b.copy())
    idata.posterior["alpha"] = (("chain", "draw", "hardware", "model_class", "alpha_feature"), a.copy())
    return obs, truth, idata


def test_run_spread_recovers_known_run_factors():
    """The cut run-spread stage estimates the spread of simulated per-run factors (step 0.04, CPU
    0.25 on the log scale) and a new run draws its factors with it; a trained one does not."""
    obs, truth, idata = _fake_fit_with_runs(12, (0.04, 0.25))
    M.attach_run_spread(idata, seed=0)
    info = json.loads(idata.attrs["run_spread"])
    assert info["step"]["runs_informing"] == 12 and info["alpha"]["runs_informing"] == 12
    for part, true in (("step", 0.04), ("alpha", 0.25)):
        sig = idata["run_spread"][f"sigma_run_{part}"].values.ravel()
        lo, hi = np.quantile(sig, [0.05, 0.95])
        assert lo <= true <= hi, (part, lo, hi)
        assert 0.5 * true < np.median(sig) < 2.0 * true
    # the per-run step factors are recovered up to the deployment's common offset
    res = M.run_residuals(idata)
    true_log = np.log([truth["run_factors"][r][0] for r in res.run])
    est = res.step.to_numpy()
    assert np.corrcoef(true_log, est)[0, 1] > 0.9
    old = M.coefficient_draws(idata, "H100 SXM", "dense", n=2000, seed=3, new_run=False)
    new = M.coefficient_draws(idata, "H100 SXM", "dense", n=2000, seed=3)
    assert np.array_equal(old.draw_index, new.draw_index)
    f = F.B["weight_load"]
    sig = idata["run_spread"]["sigma_run_step"].values.ravel()
    assert np.var(np.log(new.beta[:, 0, f] / old.beta[:, 0, f])) == pytest.approx(np.mean(sig**2), rel=0.25)
    siga = idata["run_spread"]["sigma_run_alpha"].values.ravel()
    assert np.var(np.log(new.alpha[:, 0] / old.alpha[:, 0])) == pytest.approx(np.mean(siga**2), rel=0.25)
    # the export is of the population coefficients: no run factor
    from bayeslat import export

    assert export.coefficients(idata, ("H100 SXM", "dense"))["beta"]["decode"]["weight_load"]["mean"] == pytest.approx(
        float(old.beta[:, 0, f].mean()), rel=0.05
    )


def test_run_spread_without_repeat_runs_is_the_prior():
    """One run per deployment says nothing about how runs of a deployment differ: sigma keeps its
    HalfNormal prior (median 0.674 x scale)."""
    obs, truth, idata = _fake_fit_with_runs(1, (0.0, 0.0), n=300)
    M.attach_run_spread(idata, seed=0)
    info = json.loads(idata.attrs["run_spread"])
    assert info["step"]["runs_informing"] == 0
    for part in ("step", "alpha"):
        sig = idata["run_spread"][f"sigma_run_{part}"].values.ravel()
        assert np.median(sig) == pytest.approx(0.674 * M.RUN_SPREAD[f"prior_{part}"], rel=0.1)


def test_regimes_nested_under_class_build_and_draw():
    """priors regime_by_class: build_model adds a zero-sum class x regime deviation (none for the
    reference regime) and beta multiplies it in; coefficient_draws gives each class its own regime
    factors and a new class a draw of N(0, sigma_regime_cls) with the reference regime at 1."""
    from fakefit import FAKE_PRIORS

    obs, truth = M.simulate_obs(seed=3, rows={("H100 SXM", "dense"): 40, ("H100 SXM", "moe"): 40})
    m = M.build_model(obs, priors={**FAKE_PRIORS, "regime_by_class": True})
    assert "sigma_regime_cls" in m.named_vars and tuple(m.named_vars_to_dims["dev_regime_cls"]) == ("model_class", "regime")
    plain = M.build_model(obs, priors=FAKE_PRIORS)
    assert "dev_regime_cls" not in plain.named_vars
    # a posterior with known class x regime deviations on top of the fake fit
    fake = fake_idata(obs, truth, seed=1)
    post = fake.posterior
    ch, dr = post.sizes["chain"], post.sizes["draw"]
    R = len(F.REGIMES)
    ref = int(np.flatnonzero(np.all(post["dev_regime"].values == 0.0, axis=(0, 1)))[0])
    dev = np.zeros((2, R))
    dev[0] = np.where(np.arange(R) == ref, 0.0, 0.2)
    dev[1] = -dev[0]
    post["dev_regime_cls"] = (("chain", "draw", "model_class", "regime"), np.broadcast_to(dev, (ch, dr, 2, R)).copy())
    post["sigma_regime_cls"] = (("chain", "draw"), np.full((ch, dr), 0.1))
    nested = fake.copy()
    del fake.posterior["dev_regime_cls"], fake.posterior["sigma_regime_cls"]
    classes = [str(c) for c in post.coords["model_class"].values]
    for c in classes:
        a = M.coefficient_draws(nested, "H100 SXM", c, new_run=False)
        b = M.coefficient_draws(fake, "H100 SXM", c, new_run=False)
        want = np.exp(dev[classes.index(c)])[None, :, None]
        assert np.allclose(a.beta, b.beta * want)
    new = M.coefficient_draws(nested, "H100 SXM", "mla", new_run=False)
    base = M.coefficient_draws(fake, "H100 SXM", "mla", new_run=False)
    ratio = np.log(new.beta / np.where(base.beta > 0, base.beta, 1.0))[..., F.B["weight_load"]]
    assert np.allclose(ratio[:, ref], 0.0) and not np.allclose(ratio, 0.0)
    assert 0.05 < np.std(ratio[:, [r for r in range(R) if r != ref]]) < 0.2
