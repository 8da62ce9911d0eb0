"""Posterior draws of a fit: the coefficients of any (hardware, model class, deployment) group,
seen or not (:func:`coefficient_draws`), and the mean and predictive durations of ObsTable rows
(:func:`predict_mean`, :func:`posterior_predictive`)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace

import numpy as np

from bayeslat import features as F
from bayeslat.model.build import check_obs
from bayeslat.model.hardware_steps import HW_GROUP, step_hardware_deviation
from bayeslat.model.io import attr_json
from bayeslat.model.priors import KINDS
from bayeslat.model.spread import (
    _deployment_factors,
    _flat,
    deployment_spread_draws,
    run_spread_draws,
    run_update_factors,
    trained_deployment,
    update_weights,
)


# ---------------------------------------------------------------------------------------------
# Posterior coefficient draws (seen and unseen groups)
# ---------------------------------------------------------------------------------------------
@dataclass
class CoefDraws:
    beta: np.ndarray  # (D, N_REGIMES, N_BETA) ms per scaled unit
    alpha: np.ndarray  # (D, N_ALPHA) ms per scaled unit
    sigma_rel: np.ndarray  # (D,) relative per-step noise (s_rel of step rows)
    new_levels: list  # "hardware" / "model_class" drawn from the population distribution; "hardware_cpu": a GPU
    #                   of the kernel-fitted hardware level, whose CPU-side terms alone are drawn
    class_from: list = field(default_factory=list)  # hardware whose class deviation a new hardware x class cell took
    s_abs: np.ndarray | None = None  # (D, n_kinds)
    s_rel: np.ndarray | None = None  # (D, n_kinds)
    s_sys: np.ndarray | None = None  # (D, n_kinds) relative error common to the steps of a row
    nu: np.ndarray | None = None  # (D, n_kinds) Student-t degrees of freedom per kind
    draw_index: np.ndarray | None = None  # (D,) which flattened posterior draws were used
    new_deployment: bool = False  # the deployment factors were drawn from N(0, sigma_dep)
    sim_sd: dict | None = None  # {"ttft"|"itl"|"e2e"[_p90|_p99]: log-scale SD} of the simulator's run-level
    #                                  discrepancy (simulate.attach_sim_discrepancy), for new runs


def _pad_kinds(v, n):
    """(D, k) per-kind values of the first k kinds -> (D, n), zeros for the others."""
    return v if v.shape[1] >= n else np.concatenate([v, np.zeros((v.shape[0], n - v.shape[1]))], axis=1)


def coefficient_draws(
    idata,
    hardware: str,
    model_class: str,
    n: int | None = None,
    seed: int = 0,
    new_run: bool = True,
    deployment: str | None = None,
    tensor_parallel: int | None = None,
) -> CoefDraws:
    """Posterior draws of the coefficients of group (hardware, model_class).

    A hardware not in the fit gets its deviation drawn from the fitted population distribution,
    ``N(0, sigma_hw)`` on the log scale per draw and feature, so its intervals are wider; a model
    class no hardware of the fit has seen gets ``N(0, sigma_cls)``. Those levels are listed in
    ``new_levels``. A class the fit saw on *other* hardware (dense on an A100 when the fit has
    dense on the H100) keeps that class deviation (the row-weighted mean over the hardware it was
    fit on; ``class_from`` names them) plus an unmeasured hardware x class interaction drawn from
    ``N(0, sigma_hw)``: what makes a class differ from the population (MoE grouped GEMMs, the
    per-layer work of dense models) is architecture, not the GPU. Drawing the whole class
    deviation afresh instead mixes up "how different the classes are" (``sigma_cls``, 0.66 in the
    default fit, from dense vs MoE) with "how a class differs between GPUs": with 15 independent
    ``exp(N(0, 0.66))`` factors the draws' median step time is far above the physics (default
    fit, Llama-2-7B codegen on an A100: median ITL 18 ms, against 11 ms with the H100 dense
    coefficients; on an L40S 109 ms against 35 ms).

    ``deployment`` (:func:`bayeslat.features.deployment_key` of the configuration): a deployment
    of the fit gets its fitted factors; any other key is a new deployment whose factors are drawn
    from ``N(0, sigma_dep)`` / ``N(0, sigma_alpha_dep)`` (``new_deployment``), which is what a
    prediction for a configuration never run must carry. None: the group's coefficients (the
    geometric mean over its deployments; what ``export`` writes, with ``new_run=False``).

    ``tensor_parallel`` (the configuration's TP degree): on a GPU of the hardware level other than
    the reference, the all-reduce terms take that GPU's change with the GPUs a ring spans
    (:func:`bayeslat.model.hardware_steps.step_hardware_deviation`); None: the 2-GPU level.

    A new level's deviation is one fixed standard-normal vector per posterior draw, seeded by the
    level's name: the same in every call for that draw, whatever ``n`` and ``seed`` select. After
    a probe update of ``deployment`` (:func:`bayeslat.probe.update_deployment`), the draws are
    resampled by the update's weights (``deployment_update.draw_weight``, :func:`update_weights`).

    ``new_run`` (default True): the draws are for a new run, so each also carries a between-run
    factor, ``exp(sigma_run_step z)`` on beta and ``exp(sigma_run_alpha z')`` on alpha (group
    ``run_spread``, :func:`attach_run_spread`): what every prediction of a workload needs. False:
    the coefficients themselves (exports, point summaries, the fit's own rows); their means are
    not inflated by the ``exp(sigma^2 / 2)`` of the run factors. After a probe update of a trained
    ``deployment`` read as a run (:func:`run_update_factors`), its draws carry the probed run's
    factors instead of a new run's: the prediction is of the probed run. With ``new_run``, ``sim_sd`` also
    carries the fit's simulator discrepancy (attrs ``sim_discrepancy``), which widens the workload
    intervals of :func:`bayeslat.simulate.posterior_predictive`.
    """
    post = idata.posterior
    hw_levels = [str(v) for v in post.coords["hardware"].values]
    cls_levels = [str(v) for v in post.coords["model_class"].values]
    rows = np.asarray(attr_json(idata, "group_rows", np.ones((len(hw_levels), len(cls_levels)))))
    use_hw = "dev_hw" in post
    use_cls = "dev_cls" in post
    beta_pop = _flat(post, "beta_pop")
    D = beta_pop.shape[0]
    rng = np.random.default_rng(seed)
    w = update_weights(idata, deployment) if deployment is not None else None
    if w is not None:  # a probe update reweighted the draws (probe.update_deployment): resample
        sel = np.sort(rng.choice(D, size=D if n is None else int(n), replace=True, p=w))
    else:
        sel = np.arange(D) if n is None else rng.choice(D, size=int(n), replace=int(n) > D)
    beta_pop = beta_pop[sel]
    alpha_pop = _flat(post, "alpha_pop")[sel]
    Dn = len(sel)
    Fb, Fa = F.N_BETA, F.N_ALPHA
    g = {k: _flat(post, k)[sel] for k in ("sigma_hw", "sigma_cls", "sigma_regime", "sigma_alpha_hw", "sigma_alpha_cls")}

    def _z(tag: str, shape: tuple) -> np.ndarray:
        # standard normals of a new level: one fixed vector per posterior draw, seeded by the
        # level's name (not by ``seed``), so that a probe update (probe.update_deployment,
        # which conditions each draw's deployment factors on that draw's coefficients) and every
        # later prediction see the same deviation of an unseen GPU / class in the same draw
        return np.random.default_rng(zlib.crc32(tag.encode())).standard_normal((D,) + shape)[sel]

    new = []
    kernel_delta = None  # (D, N_BETA) added to the decode terms of a GPU of the hardware level
    h = hw_levels.index(hardware) if hardware in hw_levels and rows[hw_levels.index(hardware)].sum() > 0 else None
    c = cls_levels.index(model_class) if model_class in cls_levels else None
    if h is None:
        new.append("hardware")
    combo_seen = h is not None and c is not None and rows[h][c] > 0
    # the class fit on other hardware: its deviation transfers (row-weighted over those hardware)
    seen_h = [] if combo_seen or c is None else [i for i in range(len(hw_levels)) if rows[i][c] > 0]
    w_h = np.asarray([rows[i][c] for i in seen_h], dtype=np.float64)
    w_h = w_h / w_h.sum() if len(seen_h) else w_h
    if not combo_seen and not seen_h:
        new.append("model_class")

    def _transfer(name, sigma):
        # (D, ..., F): the class's row-weighted deviation on the hardware it was fit on, plus a
        # hardware x class interaction N(0, sigma) per draw and feature
        v = _flat(post, name)[sel][:, seen_h, c]
        v = np.einsum("dh...,h->d...", v, w_h)
        return v + sigma.reshape((-1,) + (1,) * (v.ndim - 1)) * _z(f"{name}|{hardware}|{model_class}", v.shape[1:])

    # hardware deviation
    if h is not None:
        dh = _flat(post, "dev_hw")[sel][:, h] if use_hw else np.zeros((Dn, Fb))
        ah = _flat(post, "dev_alpha_hw")[sel][:, h] if use_hw else np.zeros((Dn, Fa))
    else:
        dh = g["sigma_hw"][:, None] * _z(f"dev_hw|{hardware}", (Fb,))
        ah = g["sigma_alpha_hw"][:, None] * _z(f"dev_alpha_hw|{hardware}", (Fa,))
        # the hardware level fitted to kernel timings (model.hardware): the GPU-bound features
        # take the reference hardware's deviation times the ratio of the kernel efficiencies;
        # CPU-side features (no kernel) keep the draw above
        kd = step_hardware_deviation(idata, hardware, sel, tensor_parallel)
        if kd is not None:
            log_ratio, ratio_mask, kernel_delta, delta_mask, kernel_fitted = kd
            ref = hw_levels.index(attr_json(idata, HW_GROUP, {})["reference"])
            ref_dh = _flat(post, "dev_hw")[sel][:, ref] if use_hw else np.zeros((Dn, Fb))
            dh = np.where(ratio_mask[None], ref_dh + log_ratio, np.where(delta_mask[None], ref_dh, dh))
            if kernel_fitted:
                new.remove("hardware")
                new.append("hardware_cpu")
    # class and regime deviations
    if combo_seen:
        dc = _flat(post, "dev_cls")[sel][:, h, c] if use_cls else np.zeros((Dn, Fb))
        ac = _flat(post, "dev_alpha_cls")[sel][:, h, c] if use_cls else np.zeros((Dn, Fa))
    elif seen_h:
        dc = (
            _transfer("dev_cls", g["sigma_hw"])
            if use_cls
            else g["sigma_hw"][:, None] * _z(f"dev_cls|{hardware}|{model_class}", (Fb,))
        )
        ac = (
            _transfer("dev_alpha_cls", g["sigma_alpha_hw"])
            if use_cls
            else g["sigma_alpha_hw"][:, None] * _z(f"dev_alpha_cls|{hardware}|{model_class}", (Fa,))
        )
    else:
        dc = g["sigma_cls"][:, None] * _z(f"dev_cls|{hardware}|{model_class}", (Fb,))
        ac = g["sigma_alpha_cls"][:, None] * _z(f"dev_alpha_cls|{hardware}|{model_class}", (Fa,))
        # features the fit shares between classes (no_class_deviation) stay shared for a new class
        shared = attr_json(idata, "priors", {}).get("no_class_deviation", [])
        dc[:, np.isin(np.asarray(F.BETA_NAMES), shared)] = 0.0
    # (D, R): one factor per regime, shared by features and groups (build_model's only layout;
    # load() refuses fits of an older feature spec)
    dr = _flat(post, "dev_regime")[sel]
    if "dev_regime_cls" in post:
        # regimes nested under class (priors "regime_by_class"): a fitted class's own deviation,
        # a new class's drawn from N(0, sigma_regime_cls) (the reference regime stays at 1)
        if c is not None:
            dr = dr + _flat(post, "dev_regime_cls")[sel][:, c]
        else:
            moving = np.any(_flat(post, "dev_regime") != 0.0, axis=0)
            dr = dr + _flat(post, "sigma_regime_cls")[sel][:, None] * _z(f"dev_regime_cls|{model_class}", (dr.shape[1],)) * moving
    beta = beta_pop[:, None, :] * np.exp(dh[:, None, :] + dc[:, None, :] + dr[:, :, None])
    if kernel_delta is not None:
        # the kernels' change of the decode coefficients from the reference GPU (model.hardware_steps)
        beta = np.maximum(beta + kernel_delta[:, None, :] * np.exp(dr)[:, :, None], 0.0)
    alpha = alpha_pop * np.exp(ah + ac)
    new_dep = False
    if deployment is not None:
        # fitted factors: conditioned on a probe of this deployment (probe.update_deployment),
        # else the fit's own ("fit" mode)
        upd = idata["deployment_update"] if "deployment_update" in idata.groups() else None
        f = _deployment_factors(upd, "probe_deployment", deployment, sel) or _deployment_factors(
            post, "deployment", deployment, sel
        )
        if f is None and not trained_deployment(idata, deployment):
            sig = deployment_spread_draws(idata, Dn, rng)
            if sig is not None:
                new_dep = True
                f = ((sig[0] * rng.standard_normal(Dn))[:, None], sig[1] * rng.standard_normal(Dn))
        if f is not None:
            beta = beta * np.exp(f[0])[:, None, :]  # (D, 1) or (D, N_BETA): over regimes
            alpha = alpha * np.exp(f[1])[:, None]
    rs_b = rs_a = None  # log run factors of a new run
    if new_run and "sigma_run" in post:
        # a new run of the group: its run-level factor is drawn from N(0, sigma_run) per draw
        # (new_run=False: the population-average coefficients)
        rs_b = rs_a = _flat(post, "sigma_run")[sel] * rng.standard_normal(Dn)
    elif new_run and "run_spread" in idata.groups():
        # a new run: step-time and CPU factors from the fit's between-run spread (attach_run_spread)
        s_step, s_alpha = run_spread_draws(idata, Dn, rng)
        rs_b = s_step * rng.standard_normal(Dn)
        rs_a = s_alpha * rng.standard_normal(Dn)
    ru = run_update_factors(idata, deployment, sel) if new_run and deployment is not None else None
    if ru is not None:
        # a probe of this (trained) deployment read as a run of it: the probed run's factors,
        # conditioned on the probe, instead of a new run's (probe.update_deployment, level)
        rs_b, rs_a = ru
    if rs_b is not None:
        beta = beta * np.exp(rs_b)[:, None, None]
        alpha = alpha * np.exp(rs_a)[:, None]
    s_rel = _flat(post, "s_rel")[sel]
    nu = _flat(post, "nu")[sel]
    return CoefDraws(
        beta=beta,
        alpha=alpha,
        sigma_rel=s_rel[:, 0],
        new_levels=new,
        class_from=[hw_levels[i] for i in seen_h],
        s_abs=_flat(post, "s_abs")[sel],
        s_rel=s_rel,
        nu=nu,
        draw_index=sel,
        s_sys=_pad_kinds(_flat(post, "s_sys")[sel], s_rel.shape[1]) if "s_sys" in post else np.zeros_like(s_rel),
        new_deployment=new_dep,
        sim_sd=(attr_json(idata, "sim_discrepancy", {}) or {}).get("sigma") if new_run else None,
    )


def _group_draws(idata, obs, n, seed):
    """{(hw, cls, deployment): CoefDraws} for the groups of an ObsTable's rows (fitted deployments
    get their factors; others a new draw). A deployment with a run-level probe update
    (:func:`run_update_factors`) carries the probed run's factors: the rows are the probed run's."""
    d = check_obs(obs)
    groups = {}
    for hw_i, cls_i, dep in sorted(set(zip(d["hw"].tolist(), d["cls"].tolist(), d["deployment"].tolist()))):
        cd = coefficient_draws(
            idata, d["hardware_levels"][hw_i], d["class_levels"][cls_i], n=n, seed=seed, new_run=False, deployment=dep
        )
        ru = run_update_factors(idata, dep, cd.draw_index)
        if ru is not None:
            cd = replace(cd, beta=cd.beta * np.exp(ru[0])[:, None, None], alpha=cd.alpha * np.exp(ru[1])[:, None])
        groups[(hw_i, cls_i, dep)] = cd
    return d, groups


def _group_mask(d, key):
    h, c, dep = key
    return (d["hw"] == h) & (d["cls"] == c) & (d["deployment"] == dep)


def _run_factors(idata, d, cd, seed, deployment=None):
    """(D, n_rows) run-level factors: the fitted one for runs in the fit, a new draw otherwise; 1
    for a deployment whose probed run's factors ``cd`` already carries (:func:`run_update_factors`)."""
    post = idata.posterior
    rows = np.asarray(d["run"]).astype(str)
    D = len(cd.draw_index)
    if "run_factor" not in post or (deployment is not None and run_update_factors(idata, deployment, cd.draw_index) is not None):
        return np.ones((D, len(rows)))
    fitted = [str(r) for r in post.coords["run"].values]
    rf = _flat(post, "run_factor")[cd.draw_index]
    rng = np.random.default_rng(seed + 7)
    out = np.empty((D, len(rows)))
    for r in np.unique(rows):
        m = rows == r
        if r in fitted:
            out[:, m] = rf[:, fitted.index(r)][:, None]
        else:
            out[:, m] = np.exp(_flat(post, "sigma_run")[cd.draw_index] * rng.standard_normal(D))[:, None]
    return out


def predict_mean(idata, obs, n: int | None = None, seed: int = 0) -> np.ndarray:
    """Posterior draws (D, n_rows) of the mean duration ``mu`` (ms) of every row of an ObsTable."""
    d, groups = _group_draws(idata, obs, n, seed)
    D = next(iter(groups.values())).beta.shape[0]
    mu = np.empty((D, len(d["y"])))
    for key, cd in groups.items():
        m = _group_mask(d, key)
        mu[:, m] = (np.einsum("nrf,drf->dn", d["X"][m], cd.beta) + cd.alpha @ d["A"][m].T) * _run_factors(
            idata, {"run": np.asarray(d["run"])[m]}, cd, seed, deployment=key[2]
        )
    return mu


def noise_terms(cd: CoefDraws, kind, n_steps, n_eff=None) -> tuple[np.ndarray, np.ndarray]:
    """(s_abs, c_rel), each (D, n rows), of the likelihood's scale ``s_abs + c_rel * mu`` for rows of
    ``kind`` spanning ``n_steps`` steps, worth ``n_eff`` independent rows (bin means; None: raw rows)
    (build_model: ``s_abs / sqrt(n_eff)`` and ``c_rel = s_rel / sqrt(n n_eff) + s_sys``)."""
    ne = np.ones(np.shape(kind)) if n_eff is None else np.asarray(n_eff, dtype=np.float64)
    r = 1.0 / np.sqrt(ne)
    return cd.s_abs[:, kind] * r, cd.s_rel[:, kind] / np.sqrt(np.maximum(n_steps, 1.0)) * r + cd.s_sys[:, kind]


def posterior_predictive(idata, obs, n: int | None = None, seed: int = 0, level_error: dict | None = None) -> np.ndarray:
    """Posterior predictive draws (D, n_rows) of observed durations (ms), Student-t noise included.

    ``level_error`` ({kind name: (mu, tau)}, log scale; default None): the rows are a slice of a
    run the fit has not seen, so the rows of one kind in one run share a level error
    ``e ~ N(mu, tau)`` per draw on top of their own noise (the between-run spread and the slice's
    offset from its run: :func:`bayeslat.probe.probe_level_error`). None: the rows are scored
    as the fit's own (in-sample) rows. Kinds missing from the dict get no level error."""
    d, groups = _group_draws(idata, obs, n, seed)
    rng = np.random.default_rng(seed + 1)
    D = next(iter(groups.values())).beta.shape[0]
    out = np.empty((D, len(d["y"])))
    for key, cd in groups.items():
        m = _group_mask(d, key)
        mu = (np.einsum("nrf,drf->dn", d["X"][m], cd.beta) + cd.alpha @ d["A"][m].T) * _run_factors(
            idata, {"run": np.asarray(d["run"])[m]}, cd, seed, deployment=key[2]
        )
        k = d["kind"][m]
        if level_error:
            mu = mu * _level_factors(level_error, k, np.asarray(d["run"])[m], D, rng)
        s_abs, c_rel = noise_terms(cd, k, d["n_steps"][m], d["n_eff"][m])
        out[:, m] = mu + (s_abs + c_rel * mu) * rng.standard_t(cd.nu[:, k], size=mu.shape)
    return out


def _level_factors(level_error: dict, kind, run, D: int, rng) -> np.ndarray:
    """(D, n) factors exp(e), one e ~ N(mu, tau) per draw shared by the rows of a (run, kind)."""
    f = np.ones((D, len(kind)))
    for r in np.unique(run):
        for k in np.unique(kind):
            name = KINDS[int(k)]
            if name not in level_error:
                continue
            mu_k, tau_k = level_error[name]
            sel = (run == r) & (kind == k)
            f[:, sel] = np.exp(mu_k + tau_k * rng.standard_normal(D))[:, None]
    return f
