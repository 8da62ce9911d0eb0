"""A posterior with the real model's variables, dims and structure, at chosen values (no sampling).

``fake_idata(obs, truth)`` returns what ``model.fit(obs, priors=FAKE_PRIORS)`` would return if NUTS
had landed on ``truth`` (``model.simulate_obs``'s known coefficients) with a small posterior spread:

- the variables the package reads, named and shaped as ``model.build_model`` makes them for ``obs``
  (checked against ``build_model`` and the shipped ``models/default.nc`` by
  ``test_model.py::test_fake_posterior_has_the_real_models_variables``): ``beta_pop`` (feature),
  ``alpha_pop``, ``dev_regime`` (regime; 0 for the reference regime, decode where it has the
  rows), ``dev_hw`` / ``dev_alpha_hw`` (hardware, feature) only with >= 2 hardware levels,
  ``dev_cls`` / ``dev_alpha_cls`` (hardware, model_class, feature) only with >= 2 classes, both
  zero-sum over their level axis, the ``beta`` / ``alpha`` deterministics, the level scales,
  ``s_abs`` / ``s_rel`` / ``nu`` / ``nu_m2`` (kind), ``s_sys`` (sys_kind). The free coordinates
  NUTS samples (``u_*``, ``z_*``, ``beta_pop_w`` ...) are left out: nothing downstream of a fit
  reads them.
- values: ``simulate_obs`` draws ``beta[h, c, r, f] = beta_pop[f] exp(dh[h, f] + dc[h, c, f] +
  dr[r])``, the model's own form, so the truth is written exactly in the model's
  parametrisation (regime factors relative to the reference regime, zero-sum deviations, the rest in
  ``beta_pop``); the posterior mean of every observed group's ``beta`` / ``alpha`` is the truth up
  to the draw noise (log-scale ``rel_sd`` on the population, 0.01 on the deviations). Truly zero
  coefficients get ``beta_pop = ZERO_COEF`` (what ARD pruning leaves) and no deviation.
- ``group_rows``, ``feature_present``, ``constant_data`` (with run, deployment, request) and
  ``observed_data`` as ``fit`` stores them. No ``run_spread`` group (``model.attach_run_spread``
  adds it where a test needs new-run factors).
"""

from __future__ import annotations

import json

import arviz as az
import numpy as np

from bayeslat import features as F
from bayeslat import model as M

# every feature fitted and free to deviate by class: the truth of simulate_obs has a class
# deviation on every feature, which the default priors would hold at 0 for some
FAKE_PRIORS = {"exclude_features": [], "no_class_deviation": []}
ZERO_COEF = 1e-4  # ms per scaled unit: a pruned coefficient (below diagnose.KEEP_MS)


def _decompose(logb: dict, H: int, C: int, use_hw: bool, use_cls: bool, nf: int):
    """Log coefficients of the observed groups {(h, c): (nf,)} -> (log pop (nf,), dev_hw (H, nf),
    dev_cls (H, C, nf)) with the model's zero-sum constraints; the minimum-norm solution where the
    unobserved cells leave freedom. Exact (asserted): the model's form can write any set of groups."""
    groups = sorted(logb)
    n_hw = H - 1 if use_hw else 0
    n_cls = H * (C - 1) if use_cls else 0
    Qh, Qc = M._zerosum_basis(H) if H > 1 else np.zeros((1, 0)), M._zerosum_basis(C) if C > 1 else np.zeros((1, 0))
    D = np.zeros((len(groups), 1 + n_hw + n_cls))
    for i, (h, c) in enumerate(groups):
        D[i, 0] = 1.0
        if use_hw:
            D[i, 1 : 1 + n_hw] = Qh[h]
        if use_cls:
            D[i, 1 + n_hw + h * (C - 1) : 1 + n_hw + (h + 1) * (C - 1)] = Qc[c]
    Y = np.array([logb[g] for g in groups])
    sol = np.linalg.lstsq(D, Y, rcond=None)[0]
    assert np.allclose(D @ sol, Y, atol=1e-9), "truth not representable in the model's form"
    pop = sol[0]
    dh = Qh @ sol[1 : 1 + n_hw] if use_hw else np.zeros((H, nf))
    dc = np.zeros((H, C, nf))
    if use_cls:
        for h in range(H):
            dc[h] = Qc @ sol[1 + n_hw + h * (C - 1) : 1 + n_hw + (h + 1) * (C - 1)]
    return pop, dh, dc


def _zerosum_noise(rng, sh, shape, axis, sd):
    """Draw noise of ``shape`` (after the sample dims ``sh``) that sums to zero along ``axis``."""
    z = sd * rng.standard_normal(sh + shape)
    ax = len(sh) + axis
    return z - z.mean(axis=ax, keepdims=True) if shape[axis] > 1 else np.zeros_like(z)


def fake_idata(obs, truth, chains=2, draws=200, seed=0, rel_sd=0.05, diverging=None, shift_chain=0.0):
    """See the module docstring. ``diverging`` (chains, draws) bool marks divergent draws;
    ``shift_chain`` adds to chain 0's ``beta_pop`` (a chain in another mode: R-hat > 1)."""
    rng = np.random.default_rng(seed)
    d = M.check_obs(obs)
    st = M._structure(d)
    use_hw, use_cls = bool(st["use_hw"]), bool(st["use_cls"])
    hwl, clsl = list(obs.hardware_levels), list(obs.class_levels)
    H, C, R = len(hwl), len(clsl), len(F.REGIMES)
    groups = {
        (hwl.index(h), clsl.index(c)): (np.asarray(b, float), np.asarray(truth["alpha"][(h, c)], float))
        for (h, c), b in truth["beta"].items()
        if st["group_rows"][hwl.index(h)][clsl.index(c)] > 0
    }
    # regime factors relative to the model's reference regime (decode where it has the rows):
    # the same for every group and feature in the truth
    ref = M._centred_cells(d)["regime_ref"]
    B = np.stack([b for b, _ in groups.values()])  # (G, R, F)
    pos = (B > 0).all(axis=1)  # (G, F): coefficients present in every regime
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.log(B / B[:, ref : ref + 1]).transpose(0, 2, 1)[pos]  # (n, R)
    dr = np.median(rel, axis=0)
    np.testing.assert_allclose(
        rel,
        np.broadcast_to(dr, rel.shape),
        atol=1e-9,
        err_msg="truth has per-group or per-feature regime factors: not the model's form",
    )
    zero = ~(B[:, ref] > 0).any(axis=0)  # (F,) truly zero in every group: a pruned coefficient
    logb = {g: np.where(zero, 0.0, np.log(np.where(b[ref] > 0, b[ref], 1.0))) for g, (b, _) in groups.items()}
    lpop, dh, dc = _decompose(logb, H, C, use_hw, use_cls, F.N_BETA)
    lpop = np.where(zero, np.log(ZERO_COEF), lpop)
    loga = {g: np.log(a) for g, (_, a) in groups.items()}
    lapop, adh, adc = _decompose(loga, H, C, use_hw, use_cls, F.N_ALPHA)

    sh = (chains, draws)
    post = {
        "beta_pop": np.exp(lpop + rel_sd * rng.standard_normal(sh + (F.N_BETA,))),
        "alpha_pop": np.exp(lapop + rel_sd * rng.standard_normal(sh + (F.N_ALPHA,))),
    }
    post["beta_pop"][0] += shift_chain
    rdev = dr + 0.01 * rng.standard_normal(sh + (R,))
    rdev[..., ref] = 0.0
    post["dev_regime"] = rdev
    dev_b = rdev[..., None, None, :, None]
    dev_a = np.zeros(sh + (H, C, F.N_ALPHA))
    if use_hw:
        post["dev_hw"] = dh + _zerosum_noise(rng, sh, (H, F.N_BETA), 0, 0.01)
        post["dev_alpha_hw"] = adh + _zerosum_noise(rng, sh, (H, F.N_ALPHA), 0, 0.01)
        dev_b = dev_b + post["dev_hw"][..., :, None, None, :]
        dev_a = dev_a + post["dev_alpha_hw"][..., :, None, :]
    if use_cls:
        post["dev_cls"] = dc + _zerosum_noise(rng, sh, (H, C, F.N_BETA), 1, 0.01)
        post["dev_alpha_cls"] = adc + _zerosum_noise(rng, sh, (H, C, F.N_ALPHA), 1, 0.01)
        dev_b = dev_b + post["dev_cls"][..., :, :, None, :]
        dev_a = dev_a + post["dev_alpha_cls"]
    post["beta"] = post["beta_pop"][..., None, None, None, :] * np.exp(dev_b)
    post["alpha"] = post["alpha_pop"][..., None, None, :] * np.exp(dev_a)

    def scale(m, s):
        return np.abs(m + s * rng.standard_normal(sh))

    post |= {
        "sigma_hw": scale(0.2, 0.02),
        "sigma_cls": scale(0.2, 0.02),
        "sigma_regime": scale(0.1, 0.02),
        "sigma_alpha_hw": scale(0.2, 0.02),
        "sigma_alpha_cls": scale(0.2, 0.02),
    }
    K = len(M.KINDS)
    post["s_abs"] = np.abs(0.1 + 0.01 * rng.standard_normal(sh + (K,)))
    post["s_rel"] = np.abs(0.05 + 0.005 * rng.standard_normal(sh + (K,)))
    post["s_sys"] = np.abs(0.01 + 0.002 * rng.standard_normal(sh + (len(M.SYS_KINDS),)))
    post["nu_m2"] = np.abs(6.0 + rng.standard_normal(sh + (K,)))
    post["nu"] = 2.0 + post["nu_m2"]

    bdims = ["hardware", "model_class", "regime", "feature"]
    dims = {
        "beta_pop": ["feature"],
        "alpha_pop": ["alpha_feature"],
        "dev_regime": ["regime"],
        "dev_hw": ["hardware", "feature"],
        "dev_alpha_hw": ["hardware", "alpha_feature"],
        "dev_cls": ["hardware", "model_class", "feature"],
        "dev_alpha_cls": ["hardware", "model_class", "alpha_feature"],
        "beta": bdims,
        "alpha": ["hardware", "model_class", "alpha_feature"],
        "s_abs": ["kind"],
        "s_rel": ["kind"],
        "nu_m2": ["kind"],
        "nu": ["kind"],
        "s_sys": ["sys_kind"],
    }
    coords = {
        "hardware": hwl,
        "model_class": clsl,
        "regime": list(F.REGIMES),
        "feature": list(F.BETA_NAMES),
        "alpha_feature": list(F.ALPHA_NAMES),
        "kind": list(M.KINDS),
        "sys_kind": list(M.SYS_KINDS),
    }
    div = np.zeros(sh, dtype=bool) if diverging is None else diverging
    idata = az.from_dict(
        posterior=post,
        dims={k: v for k, v in dims.items() if k in post},
        coords=coords,
        sample_stats={"energy": rng.standard_normal(sh), "diverging": div, "maxdepth_reached": np.zeros(sh, bool)},
    )
    idata.add_groups(**M.data_groups(d))
    present = np.abs(d["X"]).sum(axis=(0, 1)) > 0
    idata.attrs.update(
        {
            "format": M.FORMAT,
            "spec_version": F.SPEC_VERSION,
            "group_rows": json.dumps(st["group_rows"]),
            "use_hw": st["use_hw"],
            "use_cls": st["use_cls"],
            "priors": json.dumps(M._merge_priors(FAKE_PRIORS)),
            "feature_present": json.dumps([F.BETA_NAMES[i] for i in np.flatnonzero(present)]),
            "hardware_levels": json.dumps(hwl),
            "class_levels": json.dumps(clsl),
            "deployments": json.dumps(sorted(set(d["deployment"].tolist()))),
            "backend": "fake",
            "seed": seed,
        }
    )
    return idata
