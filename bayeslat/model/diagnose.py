"""Sampler and model diagnostics of a fit (pure functions of the InferenceData; no PyMC).

Which variables: every posterior variable except re-parameterisation helpers: non-centred
offsets (``z_*``), the centred free coordinates (``u_*``, duplicated in the ``dev_*`` deterministics), the
shrinkage fractions ``beta_pop_w`` / ``alpha_pop_w`` and unconstrained copies (``*__``).

Thresholds (``THRESHOLDS``; a fit passes when all hold, for every stage that was sampled):

- ``max_rhat <= 1.01``: rank-normalised split R-hat (Vehtari et al. 2021);
- ``min_ess_bulk >= 400`` and ``min_ess_tail >= 400``: enough for stable 90% intervals;
- ``divergences == 0``: a divergence marks geometry NUTS could not explore, so bias;
- ``min_bfmi >= 0.3``: energy Bayesian fraction of missing information per chain;
- ``tree_depth_saturation <= 0.05``: share of draws that hit the maximum tree depth;
- ``max_pareto_k <= 0.7``: PSIS-LOO is reliable for every observation.

A diagnostic that cannot be computed fails, with its reason (``reasons``): a check that is not
made is not a pass. R-hat needs two chains; PSIS-LOO needs the ``log_likelihood`` group; BFMI,
tree depth and divergences need the sampler's statistics. Only elements whose draws are all equal
(a coefficient held at 0) are left out of R-hat and ESS: they have no sampling error.

Stages: the coefficient fit (the posterior) and, in the "spread" mode of the deployment level,
the cut stage of the between-deployment spread (group ``deployment_spread``, record attrs
``deployment_spread``). That stage is a grid posterior
(:func:`bayeslat.model.estimate_deployment_spread`): no sampler, so no R-hat or ESS; its check is
that the grid holds the posterior (``grid_edge_mass_*`` <= ``GRID_EDGE_MASS``). A spread stage
sampled with NUTS (a fit of the deployment level attached with ``attach_deployment_spread``) is
diagnosed like the coefficient fit on the draws the group keeps, with divergences, BFMI and
tree-depth saturation read from its record (``SPREAD_CHECKS``). PSIS-LOO is a check of the
coefficient stage only. A spread stage that was due (priors ``deployment_level = "spread"`` and
``sigma_dep > 0``) but is absent fails; one that was not due is reported as not run.

ARD (``features_kept``): a beta feature is *kept* when it is present in the fit data and the
5% posterior quantile of its population coefficient exceeds ``KEEP_MS`` = 0.01 ms per scaled
unit (features are O(1): 1% of a unit coefficient), i.e. it contributes with >= 95% posterior
probability more than 10 us per 1000 us of roofline time (a 1% efficiency), 0.1 us per layer or
request, 10 us per step. Everything else is pruned: shrunk to near zero by the
BetaPrime(1/2, 1/2) prior, or absent from the data (posterior = prior).
"""

from __future__ import annotations

import json
import warnings

import numpy as np

from bayeslat.model.io import attr_json
from bayeslat.model.sample import sampler_health

THRESHOLDS = {
    "max_rhat": ("<=", 1.01),
    "min_ess_bulk": (">=", 400.0),
    "min_ess_tail": (">=", 400.0),
    "divergences": ("<=", 0),
    "min_bfmi": (">=", 0.3),
    "tree_depth_saturation": ("<=", 0.05),
    "max_pareto_k": ("<=", 0.7),
}
KEEP_MS = 0.01
HELPERS = ("beta_pop_w", "alpha_pop_w")


def diagnostic_vars(idata) -> list[str]:
    """Posterior variables the diagnostics look at (see module docstring)."""
    return [
        v for v in idata.posterior.data_vars if not (v.endswith("__") or v.startswith("z_") or v.endswith("_c") or v in HELPERS)
    ]


SPREAD_CHECKS = ("max_rhat", "min_ess_bulk", "min_ess_tail", "divergences", "min_bfmi", "tree_depth_saturation")
SAMPLE_DIMS = ("chain", "draw")


def _missing(val) -> bool:
    return val is None or (isinstance(val, float) and not np.isfinite(val))


def _extreme(stat, draws, names, how: str, label: str) -> tuple[float, str | None, str | None]:
    """(max or min over ``names`` of a per-element statistic ``stat`` of the ``draws`` dataset,
    reason it is unusable or None, the variable it comes from). Elements whose draws are all equal
    are skipped (no sampling error); a non-finite statistic of any other element is a reason."""
    vals, owner, bad = [], [], []
    for v in names:
        x = draws[v]
        rest = [d for d in x.dims if d not in SAMPLE_DIMS]
        s = np.asarray(stat[v].transpose(*rest).values, dtype=float).ravel()
        xv = np.asarray(x.transpose(*SAMPLE_DIMS, *rest).values, dtype=float).reshape(-1, s.size)
        free = ~(xv.max(axis=0) == xv.min(axis=0))
        ok = free & np.isfinite(s)
        vals.append(s[ok])
        owner += [v] * int(ok.sum())
        if (free & ~np.isfinite(s)).any():
            bad.append(f"{v} ({int((free & ~np.isfinite(s)).sum())})")
    vals = np.concatenate(vals) if vals else np.array([])
    if bad:
        return float("nan"), f"{label} is not finite for elements of {', '.join(bad)}", None
    if vals.size == 0:
        return float("nan"), f"no variable with varying draws to compute {label} on", None
    i = int(vals.argmax() if how == "max" else vals.argmin())
    return float(vals[i]), None, owner[i]


def _convergence(draws, names: list[str], out: dict, reasons: dict) -> None:
    """R-hat and bulk / tail ESS of ``names`` in the (chain, draw) dataset ``draws``."""
    import arviz as az

    n_chains = int(draws.sizes.get("chain", 0))
    worst = out.setdefault("worst", {})  # the variable each convergence extreme comes from
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if n_chains < 2:
            out["max_rhat"] = float("nan")
            reasons["max_rhat"] = f"R-hat needs >= 2 chains, the draws have {n_chains}"
        else:
            out["max_rhat"], why, worst["max_rhat"] = _extreme(az.rhat(draws, var_names=names), draws, names, "max", "R-hat")
            if why:
                reasons["max_rhat"] = why
        for key, method in (("min_ess_bulk", "bulk"), ("min_ess_tail", "tail")):
            out[key], why, worst[key] = _extreme(
                az.ess(draws, var_names=names, method=method), draws, names, "min", f"{method} ESS"
            )
            if why:
                reasons[key] = why


def _checks(out: dict, th: dict, keys, reasons: dict) -> dict:
    """{key: bool} for ``keys``; a missing value fails (``reasons`` says why), and so does a
    value beyond its threshold."""
    checks = {}
    for key in keys:
        op, lim = th[key]
        val = out.get(key)
        if _missing(val):
            checks[key] = False
            reasons.setdefault(key, "not available")
            continue
        checks[key] = bool(val <= lim) if op == "<=" else bool(val >= lim)
        if not checks[key]:
            where = (out.get("worst") or {}).get(key)
            sval = f"{val:.4g}" if isinstance(val, float) else str(val)
            reasons[key] = f"{sval}{f' ({where})' if where else ''} is not {op} {lim}"
    return checks


def _spread_due(idata) -> tuple[bool, str]:
    """Whether :func:`bayeslat.model.fit` attaches a deployment spread to this fit, and why (not)."""
    if "sigma_dep" in idata.posterior:
        return False, "the deployment level is in the coefficient fit (deployment_level 'fit'), diagnosed with it"
    pri = attr_json(idata, "priors", None)
    if not isinstance(pri, dict):
        return True, "the fit records no priors, so whether a deployment spread was due is unknown"
    if pri.get("deployment_level") != "spread" or not pri.get("sigma_dep"):
        return False, (f"deployment_level {pri.get('deployment_level')!r}, sigma_dep {pri.get('sigma_dep')!r}: no spread stage")
    return True, "the priors ask for a deployment spread (deployment_level 'spread')"


#: most posterior mass allowed in the outer 1% of the deployment-spread grid at either end
GRID_EDGE_MASS = 1e-3


def _grid_spread(out: dict, meta: dict) -> dict:
    """Diagnostics of a grid-estimated deployment spread (``estimate_deployment_spread``): no
    sampler, so no R-hat or ESS; the check is that the grid holds the posterior (``grid_edge_mass``
    of each sigma <= ``GRID_EDGE_MASS``)."""
    checks, reasons = {}, {}
    for part in ("step", "alpha"):
        v = (meta.get(part) or {}).get("grid_edge_mass")
        key = f"grid_edge_mass_{part}"
        out[key] = v
        checks[key] = v is not None and float(v) <= GRID_EDGE_MASS
        if v is None:
            reasons[key] = f"attrs deployment_spread records no grid edge mass of the {part} part"
        elif not checks[key]:
            reasons[key] = f"{float(v):.3g} of the posterior is at the edge of the grid (> {GRID_EDGE_MASS})"
    dof = {p: meta.get(f"{p}_dof") for p in ("step", "alpha")}
    return out | {
        "status": "exact",
        "reason": f"grid posterior from {meta.get('source', '?')} (degrees of freedom: step {dof['step']}, CPU {dof['alpha']})",
        "fit": meta,
        "checks": checks,
        "reasons": reasons,
        "passed": all(checks.values()),
    }


def diagnose_spread(idata, thresholds: dict | None = None) -> dict:
    """Diagnostics of the deployment-spread stage (module docstring): ``status`` "exact" (a grid
    posterior: its grid check), "diagnosed" (sampled with NUTS: the sampler checks), "missing"
    (due but absent: every check fails) or "not run" (not due: no checks); ``reason``, the
    values, ``checks``, ``reasons`` and ``passed``."""
    th = dict(THRESHOLDS, **(thresholds or {}))
    out: dict = {"stage": "deployment_spread"}
    reasons: dict = {}
    if "deployment_spread" not in idata.groups():
        due, why = _spread_due(idata)
        if not due:
            return out | {"status": "not run", "reason": why, "checks": {}, "reasons": {}, "passed": True}
        reasons = {k: "no deployment_spread group" for k in SPREAD_CHECKS}
        return out | {
            "status": "missing",
            "reason": f"{why}, but the fit has no deployment_spread group",
            **{k: None for k in SPREAD_CHECKS},
            "checks": {k: False for k in SPREAD_CHECKS},
            "reasons": reasons,
            "passed": False,
        }
    ds = idata["deployment_spread"]
    meta = attr_json(idata, "deployment_spread", None)
    meta = meta if isinstance(meta, dict) else {}
    if meta.get("method") == "grid":
        return _grid_spread(out, meta)
    names = [v for v in ds.data_vars if all(d in ds[v].dims for d in SAMPLE_DIMS)]
    out["status"] = "diagnosed"
    out["reason"] = None
    out["variables"] = names
    if names:
        _convergence(ds[names], names, out, reasons)
    else:
        for k in ("max_rhat", "min_ess_bulk", "min_ess_tail"):
            out[k] = None
            reasons[k] = "the deployment_spread group has no (chain, draw) variables"
    out["fit"] = meta
    counts = [meta[k] for k in ("divergences", "divergences_all_draws") if meta.get(k) is not None]
    out["divergences"] = int(max(counts)) if counts else None
    if not counts:
        reasons["divergences"] = "attrs deployment_spread records no divergence count of the spread fit"
    for key, what in (("min_bfmi", "BFMI (energy)"), ("tree_depth_saturation", "tree-depth saturation")):
        v = meta.get(key)
        out[key] = float(v) if v is not None else None
        if v is None:
            reasons[key] = (
                f"attrs deployment_spread records no {what} of the spread fit "
                f"(the group keeps draws only, not the sampler statistics)"
            )
    out["worst"] = out.pop("worst", {})
    out["checks"] = _checks(out, th, SPREAD_CHECKS, reasons)
    out["reasons"] = reasons
    out["passed"] = all(out["checks"].values())
    return out


def features_kept(idata) -> dict:
    """ARD summary: feature -> {kept, q05, median, threshold, present}."""
    post = idata.posterior
    if "beta_pop" not in post:
        return {}
    names = [str(f) for f in post.coords["feature"].values]
    try:
        present = set(json.loads(idata.attrs["feature_present"]))
    except (KeyError, TypeError, json.JSONDecodeError):
        present = set(names)
    bp = post["beta_pop"].stack(s=("chain", "draw")).transpose("feature", "s").values
    out = {}
    for i, f in enumerate(names):
        q05 = float(np.quantile(bp[i], 0.05))
        thr = KEEP_MS
        out[f] = {
            "kept": bool(f in present and q05 > thr),
            "q05": q05,
            "median": float(np.median(bp[i])),
            "threshold": thr,
            "present": f in present,
        }
    return out


def diagnose_hardware(idata) -> dict:
    """The hardware level (group ``hardware_level``, :mod:`bayeslat.model.hardware_steps`): the
    kernel fit's sampler health (recorded over every draw when it was fit) and, per GPU, how its
    GPU-bound step coefficients differ from the reference hardware's, median and 90% interval:
    a multiplier for the ratio terms, the added coefficient (ms per scaled unit) for the
    difference terms (at a 2-GPU all-reduce), and ``allreduce_per_gpu_doubling``, the factor of
    its all-reduce per doubling of the GPUs a ring spans. ``status`` "not attached" (no checks) or "diagnosed"."""
    from bayeslat import features as F
    from bayeslat.model.hardware import tp_slope_draws
    from bayeslat.model.hardware_steps import HW_GROUP, step_hardware_deviation

    if HW_GROUP not in idata.groups():
        return {"status": "not attached", "checks": {}, "passed": True}
    meta = attr_json(idata, HW_GROUP, {}) or {}
    health = meta.get("health") or {}
    checks = {
        "divergences": health.get("divergences") == 0,
        "max_rhat": health.get("max_r_hat") is not None and health["max_r_hat"] <= THRESHOLDS["max_rhat"][1],
        "min_ess_bulk": health.get("min_ess_bulk") is not None and health["min_ess_bulk"] >= THRESHOLDS["min_ess_bulk"][1],
    }
    ds = idata[HW_GROUP]
    n = ds.sizes["chain"] * ds.sizes["draw"]
    devs = {}
    for g in [str(v) for v in ds.coords["gpu"].values]:
        log_ratio, rmask, delta, dmask, _ = step_hardware_deviation(idata, g, np.arange(n))
        row = {}
        for i, f in enumerate(F.BETA_NAMES):
            if rmask[i] or dmask[i]:
                v = np.exp(log_ratio[:, i]) if rmask[i] else delta[:, i]
                lo, med, hi = np.quantile(v, [0.05, 0.5, 0.95])
                row[f] = {
                    "how": "ratio" if rmask[i] else "difference",
                    "median": float(med),
                    "lo90": float(lo),
                    "hi90": float(hi),
                }
        if "tp_slope" in ds:
            # the all-reduce's change per doubling of the GPUs a ring spans (x 1: flat)
            lo, med, hi = np.quantile(np.exp(tp_slope_draws(ds, g)), [0.05, 0.5, 0.95])
            row["allreduce_per_gpu_doubling"] = {"how": "ratio", "median": float(med), "lo90": float(lo), "hi90": float(hi)}
        devs[g] = row
    return {
        "status": "diagnosed",
        "reference": meta.get("reference"),
        "health": health,
        "kernel_rows": meta.get("kernel_rows"),
        "deviations": devs,
        "checks": checks,
        "passed": all(checks.values()),
    }


def diagnose(idata, thresholds: dict | None = None) -> dict:
    """Convergence, sampler, PSIS-LOO and ARD diagnostics of both stages (module docstring).

    The coefficient stage's values, ``checks`` and ``reasons`` (why each failed check failed) are
    top-level keys; the spread stage is ``deployment_spread`` (:func:`diagnose_spread`).
    ``passed`` is True when every check of every sampled stage holds."""
    import arviz as az

    th = dict(THRESHOLDS, **(thresholds or {}))
    names = diagnostic_vars(idata)
    out: dict = {"variables": names}
    reasons: dict = {}
    _convergence(idata.posterior[names], names, out, reasons)
    ss = idata.get("sample_stats", None)
    counts = []
    if ss is not None and "diverging" in ss:
        counts.append(int(ss["diverging"].sum()))
    # a thinned fit keeps the divergence count of every draw in its attrs
    if idata.attrs.get("divergences_all_draws") is not None:
        counts.append(int(idata.attrs["divergences_all_draws"]))
    out["divergences"] = max(counts) if counts else None
    if not counts:
        reasons["divergences"] = "no sample_stats.diverging and no attrs divergences_all_draws"
    health = sampler_health(idata)
    out["min_bfmi"] = health.get("min_bfmi", float("nan"))
    if "min_bfmi" not in health:
        reasons["min_bfmi"] = "no sample_stats.energy"
    elif not np.isfinite(out["min_bfmi"]):
        reasons["min_bfmi"] = "BFMI is not finite (constant or non-finite energy)"
    out["tree_depth_saturation"] = health.get("tree_depth_saturation", float("nan"))
    if "tree_depth_saturation" not in health:
        reasons["tree_depth_saturation"] = "no sample_stats.maxdepth_reached / reached_max_treedepth"
    out["max_pareto_k"] = float("nan")
    out["loo"] = None
    if "log_likelihood" in idata.groups():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loo = az.loo(idata, pointwise=True)
        except (ValueError, TypeError, KeyError) as err:
            reasons["max_pareto_k"] = f"PSIS-LOO failed: {err}"
        else:
            k = np.asarray(loo.pareto_k).ravel()
            out["max_pareto_k"] = float(np.max(k))
            if not np.isfinite(out["max_pareto_k"]):
                reasons["max_pareto_k"] = f"Pareto k is not finite for {int((~np.isfinite(k)).sum())} observation(s)"
            out["loo"] = {
                "elpd": float(loo.elpd_loo),
                "se": float(loo.se),
                "p_loo": float(loo.p_loo),
                "n_bad_k": int((k > th["max_pareto_k"][1]).sum()),
            }
    else:
        reasons["max_pareto_k"] = "no log_likelihood group: PSIS-LOO cannot be computed"
    fk = features_kept(idata)
    out["features_kept"] = [f for f, v in fk.items() if v["kept"]]
    out["features_pruned"] = [f for f, v in fk.items() if not v["kept"]]
    out["ard"] = fk
    out["thresholds"] = {k: f"{op} {lim}" for k, (op, lim) in th.items()}
    out["worst"] = out.pop("worst")
    out["checks"] = _checks(out, th, th, reasons)
    out["reasons"] = reasons
    out["deployment_spread"] = diagnose_spread(idata, thresholds)
    out["hardware_level"] = diagnose_hardware(idata)
    out["passed"] = all(out["checks"].values()) and out["deployment_spread"]["passed"] and out["hardware_level"]["passed"]
    return out
