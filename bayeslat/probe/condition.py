"""The deployment update: a probe deployment's factors conditioned on the probe's rows, the
rest of the hierarchy held at its posterior (:func:`update_deployment`), with the calibration of
the probe's slice errors it uses (:func:`probe_calibration`, :func:`auto_calibration`), which
itself runs the update on the fit's own training runs.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace

import numpy as np
import xarray as xr

from bayeslat import evaluate as V
from bayeslat import features as F
from bayeslat import model as M
from bayeslat.data import datasets, design
from bayeslat.errors import SpecError
from bayeslat.model.training import obs_from_idata
from bayeslat.probe.laplace import PSIS_K_MAX, RUN_LEVEL_PRIOR, _laplace, _ProbePosterior, probe_level_weights
from bayeslat.probe.read import bundled_probe, probe_obs
from bayeslat.probe.slices import OOS_SIZE_TOLERANCE, SLICE_SD_DEFAULT, factor_sd_from, oos_attr, oos_calibration, slice_spread
from bayeslat.simulate.spec import spec_for_run

# Row kinds whose probe rows enter the update as one summed row (their level, not their shape).
# TTFT rows: their row-to-row pattern (prefill-dominated vs CPU-dominated rows) is where the model's
# structure misfits most, and 150-180 rows pinned the CPU factor to that pattern: on held-out
# Llama-2-70B and CodeLlama-34B probes (leave-one-model-out) CPU x1.5-2.3 and the whole-run TTFT
# went from within 9% to +17% ... +86%, although the probe's TTFT level was off by only ~10%.
POOLED_PROBE_KINDS = ("ttft",)
# The level a pooled kind's row carries: "sum", log(sum observed / sum predicted) (the default), or
# "median", the rows' median log(observed / predicted under the posterior mean), less swayed by a
# few requests that waited in a queue burst. Exploratory (chosen after measuring on the
# bundled runs, benchmarks/probe_ceiling.py): the median's slice error has SD 0.032 over the 12
# non-saturated held-out runs against 0.094 for the sum; with it and a TTFT slice floor of 0.03 the
# leave-one-model-out TTFT point went 9.2% -> 5.7% (p 0.07). Not the default until validated on
# runs that did not choose it.
PROBE_TTFT_LEVEL = "sum"
# Step-time factors of a probe update: 1 = one factor on the whole step time, 2 = separate factors
# on its fixed and load parts (features.STEP_PARTS). 1, because on the leave-one-model-out
# folds of the context_overhead model the two-factor update put the load factor at x1.5-2.5 and the
# fixed one at x0.8 for the TP2/TP4 models, 5-15 prior SDs (sigma_dep ~0.05) from 1: the first 200
# requests do not carry the load mix that separates the parts (see docs/method.md, section 6).
STEP_FACTORS = 1


def pool_rows(obs, kinds, level_mu=None):
    """``obs`` with the rows of each kind in ``kinds`` replaced by one row per (run, kind): y, X, A
    and n_steps summed (the mean's sufficient information about a common factor, without the
    rows' pattern). ``level_mu`` (the rows' predicted means, (n,)): the pooled row's y is instead
    ``exp(median log(y / mu)) * sum mu``, the rows' median level (:data:`PROBE_TTFT_LEVEL`)."""
    idx = [M.KINDS.index(k) for k in kinds]
    pool = np.isin(obs.kind, idx)
    if not pool.any():
        return obs
    keep = obs.subset(~pool)
    rows = []
    for run in np.unique(obs.run[pool]):
        for k in idx:
            m = pool & (obs.run == run) & (obs.kind == k)
            if not m.any():
                continue
            one = obs.subset(np.flatnonzero(m)[:1])
            ysum = obs.y[m].sum(keepdims=True)
            if level_mu is not None:
                mu = np.asarray(level_mu, dtype=float)
                ok = m & (obs.y > 0) & (mu > 0)
                if ok.sum():
                    ysum = np.array([float(np.exp(np.median(np.log(obs.y[ok] / mu[ok]))) * mu[m].sum())])
            rows.append(
                replace(
                    one,
                    y=ysum,
                    X=obs.X[m].sum(axis=0, keepdims=True),
                    A=obs.A[m].sum(axis=0, keepdims=True),
                    n_steps=obs.n_steps[m].sum(keepdims=True),
                    request=np.array([-1]),
                    t_frac=obs.t_frac[m].mean(keepdims=True),
                )
            )
    out = design.concat(([keep] if len(keep) else []) + rows)
    out.meta.update({k: v for k, v in obs.meta.items() if k not in out.meta or not out.meta[k]})
    return out


def _one_deployment(d: dict) -> list:
    """The deployment key of checked probe rows (``model.check_obs``), as a one-element list;
    SpecError unless they come from one deployment (one key, one hardware and class level):
    what a deployment update conditions."""
    keys = sorted(set(d["deployment"].tolist()))
    if len(keys) != 1 or len(set(zip(d["hw"].tolist(), d["cls"].tolist()))) != 1:
        raise SpecError(f"a probe must come from one deployment (got {keys})", field="probe")
    return keys


def probe_statistics(obs, mu, *, min_rows: int = 10) -> dict:
    """Per row kind with >= ``min_rows`` usable rows, the statistic a probe update sees of
    observed against ``mu``: log(sum y / sum mu) for ``POOLED_PROBE_KINDS`` (their summed row;
    with :data:`PROBE_TTFT_LEVEL` "median", the rows' median instead), else the rows' median
    log(y / mu). ``mu``: (n,) or per draw (D, n), giving one value or (D,).
    Rows with y <= 0 or a non-positive mu are left out."""
    mu = np.asarray(mu, dtype=float)
    y, kinds = np.asarray(obs.y, dtype=float), np.asarray(obs.kind)
    ok = (y > 0) & np.all(mu > 0, axis=tuple(range(mu.ndim - 1)))
    out = {}
    for k, kind in enumerate(M.KINDS):
        m = ok & (kinds == k)
        if m.sum() >= min_rows:
            ym, mm = y[m], mu[..., m]
            pooled_sum = kind in POOLED_PROBE_KINDS and PROBE_TTFT_LEVEL == "sum"
            out[kind] = np.log(ym.sum() / mm.sum(axis=-1)) if pooled_sum else np.median(np.log(ym / mm), axis=-1)
    return out


def probe_calibration(
    idata, n_requests: int, *, draws: int = 100, seed: int = 0, min_runs: int = 3, spread: bool = True, design: str = "first"
) -> dict | None:
    """How a probe's rows misfit, measured by taking the same probe from the fit's own training runs.

    A probe is the first ``n_requests`` requests of a run (after ``PROBE_WARMUP``; ``design``:
    :func:`bundled_probe`, "stages" splits them over the run's load stages), reconstructed
    on their own: the requests that arrive after the probe are missing from its batches, and the
    start of a run is not its average. So a probe's rows do not scatter around the deployment's
    whole-run factors: on the bundled runs under their own fit, probe TTFT rows run +9% long on
    average (SD 11% across runs; rows ending after the cut dropped) and decode windows +1% (SD 3%). Per row kind, the mean and SD
    across training runs of the probe's median log(observed / predicted) are the prior of the
    probe's slice error ``e_k ~ N(mu_k, tau_k)`` in :func:`update_deployment` (tau_k floored at
    ``SLICE_SD_DEFAULT``). Needs per-request
    data of the training runs (the bundled runs); returns None when fewer than ``min_runs`` of the
    fit's runs have it. Kinds measured on fewer runs are left out (``slice_spread`` covers them).
    Kinds in ``POOLED_PROBE_KINDS`` are measured as the update sees them: log(sum y / sum mu).

    ``spread`` (default): also run the update on each training run's probe and measure how far its
    step and CPU factors land from the run's fitted ones (1 where the fit has none): the SD over
    runs of the log difference, ``res["spread"] = {"step": sd, "cpu": sd}``. The update adds that
    error to its draws, one draw shared by the fixed and load parts (their errors are
    anti-correlated; independent noise on each made saturating draws). Without it the updated
    intervals hold only the Laplace width, and 90% coverage of the whole-run means fell to 50-69%."""
    train_runs = set(np.asarray(obs_from_idata(idata).run).astype(str).tolist())
    runs = sorted(train_runs & set(datasets.runs()["run"].astype(str)))
    if len(runs) < min_runs:
        return None
    cases = V.replay_cases(runs)
    med = {kind: [] for kind in M.KINDS}
    probes = []
    for c in cases:
        spec = spec_for_run(c["run"], workload=c["workload_obj"])
        pobs, _ = probe_obs(spec, bundled_probe(c["run"], n_requests, design))
        probes.append(pobs)
        mu = M.predict_mean(idata, pobs, n=draws, seed=seed).mean(axis=0)
        for kind, r in probe_statistics(pobs, mu).items():
            med[kind].append(float(r))
    # tau: the SD across the training runs, floored at SLICE_SD_DEFAULT. A fold's runs come from 2-3
    # models, and the offset differs between models (bundled runs under the default fit: TTFT
    # -0.13 to +0.23, SD 0.11 over 15 runs; within a fold without 7B, SD 0.04), so the runs of a
    # few models understate the spread a new model draws from.
    out = {
        kind: {
            "mu": float(np.mean(v)),
            "tau": float(max(np.std(v, ddof=1), SLICE_SD_DEFAULT[kind])),
            "runs": len(v),
            "sd_runs": float(np.std(v, ddof=1)),
        }
        for kind, v in med.items()
        if len(v) >= min_runs
    }
    if not out:
        return None
    res = {"n_requests": int(n_requests), "design": design, "kinds": out}
    if spread:
        err = []
        for pobs in probes:
            # level="deployment": the error of the update a new deployment gets (the training
            # runs' deployments are trained, so "auto" would read their probes as runs)
            _, info = update_deployment(idata, pobs, seed=seed, calibration=res, copy_idata=False, level="deployment")
            dep = next(iter(pobs.meta["deployments"].values()))
            tr = M._deployment_factors(idata.posterior, "deployment", dep, slice(None))
            base = (0.0, 0.0) if tr is None else (float(np.mean(tr[0])), float(np.mean(tr[1])))
            err.append((np.log(info["step_factor"]["mean"]) - base[0], np.log(info["cpu_factor"]["mean"]) - base[1]))
        err = np.array(err)
        res["spread"] = {
            "step": float(err[:, 0].std(ddof=1)),
            "cpu": float(err[:, 1].std(ddof=1)),
            "runs": len(err),
            "step_bias": float(err[:, 0].mean()),
            "cpu_bias": float(err[:, 1].mean()),
        }
    return res


def auto_calibration(idata, n_requests: int, *, seed: int = 0, design: str = "first", spread: bool = True) -> dict | None:
    """The calibration ``update_deployment(calibration="auto")`` and :func:`update` use for a probe
    of ``n_requests`` requests of ``design`` (:func:`bundled_probe`; the probe table's
    ``meta["probe_design"]``, "first" for a probe file): :func:`probe_calibration` (in-sample; None without >= 3 training
    runs with per-request data), with its slice errors replaced by the fit's out-of-sample ones
    (attrs ``probe_oos_errors``, :func:`attach_probe_oos`) when the fit carries them for probes of a
    similar size (within ``OOS_SIZE_TOLERANCE``): how far the start of a run is from the whole run
    depends on the probe's length. The out-of-sample deployment factors it carries set
    ``factor_sd`` (the factor prior of a new deployment) for a probe of any size. ``spread=False``
    skips :func:`probe_calibration`'s update spread (an update per training run, about a minute on
    the default fit): what scoring a probe needs."""
    # a probe without requests (a step trace alone) has no request slices to calibrate
    cal = probe_calibration(idata, int(n_requests), seed=seed, design=design, spread=spread) if n_requests else None
    oos = M.attr_json(idata, oos_attr(design), None) or {}
    if (
        n_requests
        and oos
        and oos.get("errors")
        and oos.get("n_requests")
        and abs(math.log(n_requests / float(oos["n_requests"]))) <= math.log(OOS_SIZE_TOLERANCE)
    ):
        cal = oos_calibration(oos["errors"], cal)
    # the deployment factors come from whole runs: they serve a probe of any size and design
    errs = (oos or M.attr_json(idata, oos_attr("first"), None) or {}).get("errors")
    fs = factor_sd_from(errs) if errs else None
    if fs:
        cal = dict(cal or {}) | {"factor_sd": fs}
    return cal


def update_deployment(
    idata,
    probe_obs_table,
    *,
    seed: int = 0,
    newton_steps: int = 30,
    calibration="auto",
    copy_idata: bool = True,
    step_factors: int | None = None,
    factor_sd: dict | None = None,
    reweight: bool | str = "auto",
    level: str = "auto",
    run_prior: float | None = None,
):
    """Condition the deployment level on a probe ("cut" update, seconds instead of a refit).

    The probe's rows belong to one deployment (``meta["deployments"]``). Every other level stays
    at its posterior. For each posterior draw d, the probe deployment gets three log factors:
    on the fixed part of its step time, on the load part (``features.STEP_PARTS``) and on its
    CPU (alpha) time, with posterior ``N(b_fixed; 0, sigma_dep_d) N(b_load; 0, sigma_dep_d)
    N(a; 0, sigma_alpha_dep_d) x prod_i StudentT(y_i | e^b_fixed fixed_i(d) + e^b_load load_i(d)
    + e^a cpu_i(d), scale_i(d))``, the rows of each kind k scaled by one shared slice error
    ``e_k ~ N(mu_k, tau_k)`` (a probe is one slice of the deployment's traffic, so its rows of a
    kind are not independent evidence). ``calibration``: :func:`probe_calibration`'s result
    (mu_k, tau_k measured by probing the fit's own training runs the same way), "auto"
    (:func:`auto_calibration` for a probe of as many requests as the probe table has: the fit's
    out-of-sample slice errors where it carries them; default), or None; kinds it does
    not cover get ``mu_k = 0`` and ``tau_k`` from :func:`slice_spread` (:func:`score_rows` scores
    such kinds with the wider :data:`PROBE_LEVEL_DEFAULT`). The mode is found by damped
    Newton steps (all draws at once, analytic gradient and Hessian) and one factor triple is drawn
    from the Laplace (Gaussian) approximation there, the slice errors marginalised out: hundreds
    of probe rows against 3 + K parameters. Conditioning of the level the probe is new to, given
    the rest of the hierarchy; the rest learns from the probe's levels only, through importance
    weights of the posterior draws (:func:`probe_level_weights`; stored as ``draw_weight``, used by
    :func:`bayeslat.model.coefficient_draws` to resample): what pins down an unseen GPU's or
    class's deviation. ``info["draw_weights"]``: their effective sample size and whether they were
    applied. ``reweight="auto"`` (default) applies them only when the probed configuration has a
    level the fit has not seen (``CoefDraws.new_levels``: an unseen GPU or class) and their Pareto
    k is at most :data:`PSIS_K_MAX` (the weights are Pareto-smoothed, ``arviz.psislw``; above it a
    few draws would carry the probe, ``info["draw_weights"]["pareto_k"]``). Where every
    level is trained, its posterior rests on thousands of rows; a refit with 200 more would
    hardly move it, while weights from one probe slice would (the probe then chases its own
    slice error: ``benchmarks/results/probe_update.json``). True / False: always / never.

    The factors' prior SDs are the fit's between-deployment spread (``sigma_dep``,
    ``sigma_alpha_dep``), measured on deployments of the models the fit has seen; a new model's
    deployment sits further out (leave-one-model-out, the held-out deployments call for log CPU
    factors -0.26 to +0.12). For a deployment the fit has not seen, the calibration's
    ``factor_sd`` ({"step": sd, "cpu": sd} of the log factors: the out-of-sample spread of the
    deployment factors of held-out models, :func:`run_factor_error` / :func:`factor_sd_from`)
    floors them. An explicit ``factor_sd`` floors them for any deployment (:func:`run_factor_error`
    uses it for a flat prior). ``info["factor_prior_sd"]`` has the medians used, the fit's own
    (``"fit"``) and the floor.

    ``step_factors`` (default :data:`STEP_FACTORS`, 1): with 2, the fixed and load parts get
    separate factors. That helped a model whose fixed and load parts were off in opposite
    directions (an earlier feature set, 7B held out: 1.5x and 0.65x); with the context_overhead feature
    the held-out parts are not off that way, and the probe's narrow load mix sends the load factor to
    x1.5-2.5 (5-15 prior SDs), so one factor is the default. With 1, both entries of ``dev_dep``
    carry the same draw.

    ``level``: what the probe's factors are. "deployment": the deployment's (above). "run": the
    probed run's own log factors ``t`` (one on the step time, one on the CPU time), prior
    ``N(0, sigma_run_step)`` / ``N(0, sigma_run_alpha)`` (the fit's between-run spread,
    :func:`bayeslat.model.run_spread_draws`), no update spread; a prediction uses them in place
    of a new run's factors (variables ``dev_run_step``, ``dev_run_alpha``; no ``dev_dep``: the
    deployment keeps what the fit has). "auto"
    (default): "deployment" for a deployment the fit has not seen; for a trained one, ``t`` under
    two hypotheses, each conditioned on the probe (Laplace) and mixed per posterior draw by its
    Laplace evidence (prior probability of the first ``run_prior``, default
    :data:`RUN_LEVEL_PRIOR`): the deployment is the one the fit
    knows (``t`` a run deviation, prior above), or it changed in what the deployment key does not
    see (a vLLM version, chunk size, driver: ``t`` = change + run deviation, the change with a new
    deployment's spread, the larger of ``sigma_dep`` and the calibration's ``factor_sd``). A probe within
    the run spread is then read as a run, a probe far outside it as a changed deployment whose
    factor follows the probe. ``info["level"]``: the hypotheses, ``p_run`` (mean over draws), the
    priors. With the deployment level alone, probes of held-out workloads of trained deployments
    doubled the E2E intervals and improved 2 of 16 runs.

    Returns (copy of ``idata`` with group ``deployment_update``, dims chain, draw,
    probe_deployment and, for ``dev_dep``, step_part; info). :func:`bayeslat.model.coefficient_draws`
    uses it for that deployment key."""
    if level not in ("auto", "deployment", "run"):
        raise SpecError(f"level must be 'auto', 'deployment' or 'run', got {level!r}", field="level")
    pr = RUN_LEVEL_PRIOR if run_prior is None else float(run_prior)
    if not 0.0 < pr < 1.0:
        raise SpecError(f"run_prior must be a probability in (0, 1), got {run_prior!r}", field="run_prior")
    if reweight not in (True, False, "auto"):
        raise SpecError(f"reweight must be True, False or 'auto', got {reweight!r}", field="reweight")
    if PROBE_TTFT_LEVEL not in ("sum", "median"):
        raise SpecError(f"PROBE_TTFT_LEVEL must be 'sum' or 'median', got {PROBE_TTFT_LEVEL!r}", field="PROBE_TTFT_LEVEL")
    level_mu = M.predict_mean(idata, probe_obs_table, n=100, seed=seed).mean(axis=0) if PROBE_TTFT_LEVEL == "median" else None
    obs = pool_rows(probe_obs_table, POOLED_PROBE_KINDS, level_mu=level_mu)
    d = M.check_obs(obs)
    keys = _one_deployment(d)
    hw, cls = d["hardware_levels"][int(d["hw"][0])], d["class_levels"][int(d["cls"][0])]
    new_dep = not M.trained_deployment(idata, keys[0])
    if level == "run" and new_dep:
        raise SpecError(
            f"level='run' needs a deployment of the fit; {keys[0]} is not one (a new deployment's "
            "factors need the between-deployment spread: level='auto' or 'deployment')",
            field="level",
        )
    hyps = (["deployment"] if new_dep else ["run", "deployment"]) if level == "auto" else [level]
    nf = STEP_FACTORS if step_factors is None else step_factors
    if nf not in (1, 2):
        raise SpecError(f"step_factors must be 1 or 2, got {nf!r}", field="step_factors")
    if nf == 2 and "run" in hyps:
        raise SpecError(
            "step_factors=2 is for the deployment level; a probe of a deployment of the fit is read as "
            "a run (one step factor) unless level='deployment'",
            field="step_factors",
        )
    cd = M.coefficient_draws(idata, hw, cls, n=None, seed=seed, new_run=False, deployment=None)
    D = cd.beta.shape[0]
    fitted = M._deployment_factors(idata.posterior, "deployment", keys[0], cd.draw_index) if "run" in hyps else None
    if fitted is not None:  # a fit with the deployment level ("fit"): the run is relative to its fitted factors
        cd = replace(cd, beta=cd.beta * np.exp(fitted[0])[:, None, :], alpha=cd.alpha * np.exp(fitted[1])[:, None])
    fix = F.FIXED_STEP_MASK
    parts = np.stack(
        [
            np.einsum("nrf,drf->dn", d["X"][..., fix], cd.beta[..., fix]),
            np.einsum("nrf,drf->dn", d["X"][..., ~fix], cd.beta[..., ~fix]),
            cd.alpha @ d["A"].T,
        ],
        axis=1,
    )  # (D, 3, n)
    rng = np.random.default_rng(seed)
    sig = M.deployment_spread_draws(idata, D, rng)
    if sig is None:
        pri = M._merge_priors(None)
        sig = (np.full(D, pri["sigma_dep"]), np.full(D, pri["sigma_alpha_dep"]))
    y, k = d["y"], d["kind"]
    kinds = sorted(set(k.tolist()))
    if isinstance(calibration, str) and calibration == "auto":
        n_req = int(obs.meta.get("probe_requests") or np.unique(np.asarray(obs.request)[np.asarray(obs.request) >= 0]).size)
        calibration = auto_calibration(idata, n_req, seed=seed, design=obs.meta.get("probe_design", "first"))
    cal = (calibration or {}).get("kinds", {})
    fsd = factor_sd if factor_sd is not None else ((calibration or {}).get("factor_sd") if new_dep else None)
    sig_fit = (float(np.median(sig[0])), float(np.median(sig[1])))
    if fsd:
        sig = (np.maximum(sig[0], float(fsd.get("step", 0.0))), np.maximum(sig[1], float(fsd.get("cpu", 0.0))))
    ss = slice_spread(idata, seed=seed)
    # kinds without a calibration: no offset and the between-run spread. Scoring uses the wider
    # PROBE_LEVEL_DEFAULT there (probe_level_error); conditioning on it here moved a uniformly 1.6x slow
    # probe's step factor from 1.35-1.9 to 1.31 on a two-run fit (the TTFT offset absorbs the slowdown)
    tau = np.array([cal[M.KINDS[kk]]["tau"] if M.KINDS[kk] in cal else ss[M.KINDS[kk]] for kk in kinds])
    off = np.array([cal[M.KINDS[kk]]["mu"] if M.KINDS[kk] in cal else 0.0 for kk in kinds])
    psd = np.concatenate([np.stack([sig[0], sig[0], sig[1]], axis=1), np.broadcast_to(tau, (D, len(kinds)))], axis=1)
    pmean = np.concatenate([np.zeros((D, 3)), np.broadcast_to(off, (D, len(kinds)))], axis=1)
    sab, crel = M.noise_terms(cd, k, d["n_steps"])
    fit_parts = parts if nf == 2 else np.stack([parts[:, 0] + parts[:, 1], np.zeros_like(parts[:, 1]), parts[:, 2]], axis=1)
    run_draw = p_run = is_run = chg = None
    if hyps == ["deployment"]:
        post_fn = _ProbePosterior(fit_parts, y, k, kinds, sab, crel, cd.nu[:, k], psd, pmean)
        theta, L, g, _ = _laplace(post_fn, pmean, psd, newton_steps)
        P = psd.shape[1]
        draw = (theta + np.einsum("dij,dj->di", L, rng.standard_normal((D, P))))[:, :3]  # slice errors marginalised out
        if nf == 1:
            draw[:, 1] = draw[:, 0]  # one factor on the whole step time
        spr = (calibration or {}).get("spread")
        if spr:
            # the update's own error on the training runs' probes (probe_calibration): one draw
            # shared by the fixed and load parts, one for the CPU factor
            e = rng.standard_normal((D, 2))
            draw[:, :2] += spr["step"] * e[:, :1]
            draw[:, 2] += spr["cpu"] * e[:, 1]
    else:
        # the probe as a run of a trained deployment: the probed run's log factors t (one on the
        # step time, one on the CPU time) replace a new run's draw in its predictions. Unchanged
        # deployment: t ~ N(0, sigma_run) (the fit's between-run spread, run_spread); changed (what
        # the deployment key does not see): t = change + run deviation, the change with the spread
        # of a new deployment (the larger of the fit's sigma_dep and the calibration's factor_sd).
        # Each is conditioned on the probe (Laplace); per draw, one of the two is drawn by their
        # evidence, prior probability of the first pr (RUN_LEVEL_PRIOR)
        spr = draw = None
        rsig = M.run_spread_draws(idata, D, rng)

        def branch(s_step, s_cpu):
            bpsd = np.concatenate([np.stack([s_step, s_step, s_cpu], axis=1), psd[:, 3:]], axis=1)
            fn = _ProbePosterior(fit_parts, y, k, kinds, sab, crel, cd.nu[:, k], bpsd, pmean)  # nf == 1 here
            th, Lb, gb, lz = _laplace(fn, pmean, bpsd, newton_steps)
            dr = (th + np.einsum("dij,dj->di", Lb, rng.standard_normal(th.shape)))[:, :3]
            dr[:, 1] = dr[:, 0]
            return dr, gb, lz

        run_draw, g, logz_run = branch(rsig[0], rsig[1])
        if "deployment" in hyps:
            cfs = factor_sd if factor_sd is not None else (calibration or {}).get("factor_sd")
            chg = (
                np.maximum(sig[0], float((cfs or {}).get("step", 0.0))),
                np.maximum(sig[1], float((cfs or {}).get("cpu", 0.0))),
            )
            c_draw, c_g, logz_chg = branch(np.hypot(chg[0], rsig[0]), np.hypot(chg[1], rsig[1]))
            lo = np.log(pr) + logz_run - np.log1p(-pr) - logz_chg
            p_run = 1.0 / (1.0 + np.exp(-np.clip(lo, -700, 700)))
            is_run = rng.random(D) < p_run
            run_draw = np.where(is_run[:, None], run_draw, c_draw)
            g = np.where(is_run[:, None], g, c_g)
        else:
            p_run, is_run = np.ones(D), np.ones(D, dtype=bool)
    informed = parts.mean(axis=0).sum(axis=1) > 0  # (3,): parts the probe rows exercise
    # the rest of the posterior learns from the probe too: draws reweighted by how well their
    # predicted levels fit the probe's (an unseen GPU's deviation is pinned down by a probe)
    logw = probe_level_weights(parts, y, k, kinds, sig, tau, off, sab, crel, cd.nu[:, k])
    # Pareto-smoothed (the largest weights' tail replaced by a fitted generalized Pareto), with the
    # diagnostic k: above PSIS_K_MAX a handful of draws carries the probe, and "auto" does not trust it
    import arviz as az

    lw, pareto_k = az.psislw(logw - logw.max())  # normalised: the weights sum to 1
    wts = np.exp(lw)
    pareto_k = float(pareto_k)
    applied = (bool(cd.new_levels) and pareto_k <= PSIS_K_MAX) if reweight == "auto" else bool(reweight)
    ess = float(1.0 / np.sum(wts**2))  # what the probe's levels do (or would do) to the draws
    if not applied:  # the deployment factors alone
        wts = np.full(len(wts), 1.0 / len(wts))
    post = idata.posterior
    C, Tn = post.sizes["chain"], post.sizes["draw"]
    new = copy.deepcopy(idata) if copy_idata else None
    if run_draw is None:  # the deployment level
        dvars = {
            "dev_dep": (("chain", "draw", "probe_deployment", "step_part"), draw[:, :2].reshape(C, Tn, 1, 2)),
            "dev_alpha_dep": (("chain", "draw", "probe_deployment"), draw[:, 2].reshape(C, Tn, 1)),
        }
    else:  # model.run_update_factors: the probed run's factors replace a new run's; the deployment keeps the fit's
        dvars = {
            "dev_run_step": (("chain", "draw", "probe_deployment"), run_draw[:, 0].reshape(C, Tn, 1)),
            "dev_run_alpha": (("chain", "draw", "probe_deployment"), run_draw[:, 2].reshape(C, Tn, 1)),
        }
    if applied:  # else coefficient_draws selects draws as without an update
        dvars["draw_weight"] = (("chain", "draw", "probe_deployment"), wts.reshape(C, Tn, 1))
    ds = xr.Dataset(
        dvars,
        coords={
            "chain": post.coords["chain"].values,
            "draw": post.coords["draw"].values,
            "probe_deployment": keys,
            "step_part": list(F.STEP_PARTS),
        },
    )
    if new is not None:
        M.put_group(new, "deployment_update", ds)

    def summ(v):
        # the factor's posterior: the draws' factors under the draws' weights
        e = np.exp(v)
        return {
            "mean": float(np.sum(wts * e)),
            "q05": M._weighted_quantile(e, wts, 0.05),
            "q95": M._weighted_quantile(e, wts, 0.95),
            "log_mean": float(np.sum(wts * v)),
        }

    # the factors the probe's run gets: the deployment's, or (a run of a trained deployment) the run's
    comb = draw if run_draw is None else run_draw
    # effective factor on the probe's own step time (fixed and load parts weighted as in its rows)
    tot = parts[:, :2].sum(axis=2)
    eff = np.log((np.exp(comb[:, :2]) * tot).sum(axis=1) / np.maximum(tot.sum(axis=1), 1e-300))
    r = np.corrcoef(draw[:, 0], draw[:, 1])[0, 1] if informed[:2].all() and nf == 2 and run_draw is None else float("nan")
    info = {
        "mode": "deployment",
        "method": "laplace",
        "deployment": keys[0],
        "trained_deployment": not new_dep,
        "rows": int(len(y)),
        "step_factors": nf if run_draw is None else 1,
        "level": {
            "hypotheses": hyps,
            "p_run": None if p_run is None else float(np.mean(p_run)),
            "run_draws": None if run_draw is None else float(np.mean(is_run)),
            "run_prior_sd": None if run_draw is None else {"step": float(np.median(rsig[0])), "cpu": float(np.median(rsig[1]))},
            "change_prior_sd": None if chg is None else {"step": float(np.median(chg[0])), "cpu": float(np.median(chg[1]))},
            "prior_run": pr if len(hyps) == 2 else None,
        },
        "step_factor": summ(eff),
        "fixed_factor": summ(comb[:, 0]) | {"informed": bool(informed[0])},
        "load_factor": summ(comb[:, 1]) | {"informed": bool(informed[1])},
        "fixed_load_corr": float(r),
        "fixed_share_probe": float(np.median(tot[:, 0] / np.maximum(tot.sum(axis=1), 1e-300))),
        "cpu_factor": summ(comb[:, 2]) | {"informed": bool(informed[2])},
        "slice_sd": {M.KINDS[kk]: float(t) for kk, t in zip(kinds, tau)},
        "slice_offset": {M.KINDS[kk]: float(o) for kk, o in zip(kinds, off)},
        "calibration": (calibration or {}).get("source", "probe") if cal else "slice_spread",
        "update_spread": spr or None,
        "factor_prior_sd": {
            "step": float(np.median(sig[0])),
            "cpu": float(np.median(sig[1])),
            "fit": {"step": sig_fit[0], "cpu": sig_fit[1]},
            "floor": ({"step": float(fsd.get("step", 0.0)), "cpu": float(fsd.get("cpu", 0.0))} if fsd else None),
        },
        "newton_max_abs_grad": float(np.abs(g).max()),
        "draw_weights": {
            "ess": ess,
            "ess_frac": ess / D,
            "applied": applied,
            "new_levels": list(cd.new_levels),
            "pareto_k": pareto_k,
        },
    }
    if new is not None:
        new.attrs["deployment_update"] = json.dumps(info)
    return new, info
