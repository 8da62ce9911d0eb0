"""Sampler and model diagnostics of a fit (pure functions of the InferenceData; no PyMC).

Which variables: every posterior variable except re-parameterisation helpers: non-centred
offsets (``z_*``), the centred free coordinates (``u_*``, duplicated in the ``dev_*`` deterministics), the
shrinkage fractions ``beta_pop_w`` / ``alpha_pop_w`` and unconstrained copies (``*__``).

Thresholds (``THRESHOLDS``; a fit passes when all hold):

- ``max_rhat <= 1.01``: rank-normalised split R-hat (Vehtari et al. 2021);
- ``min_ess_bulk >= 400`` and ``min_ess_tail >= 400``: enough for stable 90% intervals;
- ``divergences == 0``: a divergence marks geometry NUTS could not explore, so bias;
- ``min_bfmi >= 0.3``: energy Bayesian fraction of missing information per chain;
- ``tree_depth_saturation <= 0.05``: share of draws that hit the maximum tree depth;
- ``max_pareto_k <= 0.7``: PSIS-LOO is reliable for every observation.

ARD (``features_kept``): a beta feature is *kept* when it is present in the fit data and the
5% posterior quantile of its population coefficient exceeds ``KEEP_MS`` = 0.01 ms per scaled
unit (features are O(1): 1% of a unit coefficient), i.e. it contributes with >= 95% posterior
probability more than 10 us per 1000 us of roofline time (a 1% efficiency), 0.1 us per layer or
request, 10 us per step. Everything else is pruned: shrunk to near zero by the
BetaPrime(1/2, 1/2) prior, or absent from the data (posterior = prior).
"""
from __future__ import annotations

import json
import sys
import warnings

import numpy as np

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
    return [v for v in idata.posterior.data_vars
            if not (v.endswith("__") or v.startswith("z_") or v.endswith("_c") or v in HELPERS)]


def _min_max(ds, how):
    vals = [np.asarray(ds[v].values, dtype=float).ravel() for v in ds.data_vars]
    vals = np.concatenate(vals) if vals else np.array([np.nan])
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return float("nan")
    return float(vals.max() if how == "max" else vals.min())


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
        out[f] = {"kept": bool(f in present and q05 > thr), "q05": q05, "median": float(np.median(bp[i])),
                  "threshold": thr, "present": f in present}
    return out


def diagnose(idata, thresholds: dict | None = None) -> dict:
    """Convergence, sampler, PSIS-LOO and ARD diagnostics; ``passed`` is True when all thresholds hold."""
    import arviz as az

    th = dict(THRESHOLDS, **(thresholds or {}))
    names = diagnostic_vars(idata)
    out: dict = {"variables": names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["max_rhat"] = _min_max(az.rhat(idata, var_names=names), "max")
        out["min_ess_bulk"] = _min_max(az.ess(idata, var_names=names, method="bulk"), "min")
        out["min_ess_tail"] = _min_max(az.ess(idata, var_names=names, method="tail"), "min")
    ss = idata.get("sample_stats", None)
    out["divergences"] = int(ss["diverging"].sum()) if ss is not None and "diverging" in ss else 0
    # a thinned fit keeps the divergence count of every draw in its attrs
    out["divergences"] = max(out["divergences"], int(idata.attrs.get("divergences_all_draws", 0) or 0))
    out["min_bfmi"] = float(np.min(az.bfmi(idata))) if ss is not None and "energy" in ss else float("nan")
    sat = float("nan")
    if ss is not None:
        for key in ("maxdepth_reached", "reached_max_treedepth"):
            if key in ss:
                sat = float(np.mean(ss[key].values))
                break
    out["tree_depth_saturation"] = sat
    out["max_pareto_k"] = float("nan")
    out["loo"] = None
    if "log_likelihood" in idata.groups():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loo = az.loo(idata, pointwise=True)
        k = np.asarray(loo.pareto_k).ravel()
        out["max_pareto_k"] = float(np.max(k))
        out["loo"] = {"elpd": float(loo.elpd_loo), "se": float(loo.se), "p_loo": float(loo.p_loo),
                      "n_bad_k": int((k > th["max_pareto_k"][1]).sum())}
    fk = features_kept(idata)
    out["features_kept"] = [f for f, v in fk.items() if v["kept"]]
    out["features_pruned"] = [f for f, v in fk.items() if not v["kept"]]
    out["ard"] = fk
    checks = {}
    for key, (op, lim) in th.items():
        val = out.get(key)
        if val is None or (isinstance(val, float) and np.isnan(val)):
            checks[key] = None  # not available: not counted as a failure
            continue
        checks[key] = bool(val <= lim) if op == "<=" else bool(val >= lim)
    out["thresholds"] = {k: f"{op} {lim}" for k, (op, lim) in th.items()}
    out["checks"] = checks
    out["passed"] = all(v is not False for v in checks.values())
    return out


def format_table(d: dict) -> str:
    lines = [f"{'diagnostic':<24}{'value':>14}  {'threshold':<10} ok"]
    for key, thr in d["thresholds"].items():
        val = d.get(key)
        ok = d["checks"].get(key)
        sval = "n/a" if val is None or (isinstance(val, float) and np.isnan(val)) else (f"{val:.4g}" if isinstance(val, float) else str(val))
        lines.append(f"{key:<24}{sval:>14}  {thr:<10} {'-' if ok is None else ('yes' if ok else 'NO')}")
    if d.get("loo"):
        lines.append(f"PSIS-LOO elpd {d['loo']['elpd']:.1f} (se {d['loo']['se']:.1f}), p_loo {d['loo']['p_loo']:.1f}")
    lines.append("features kept (ARD): " + (", ".join(d["features_kept"]) or "none"))
    lines.append("features pruned:     " + (", ".join(d["features_pruned"]) or "none"))
    lines.append("PASSED" if d["passed"] else "FAILED")
    return "\n".join(lines)


def cli_diagnose(args) -> int:
    """``bayeslat diagnose MODEL [--json]``: exit 1 when any diagnostic fails its threshold."""
    from bayeslat.model import load

    d = diagnose(load(args.model))
    if getattr(args, "json", False):
        print(json.dumps({k: v for k, v in d.items() if k != "variables"}, indent=2, default=str))
    else:
        print(format_table(d))
    return 0 if d["passed"] else 1


if __name__ == "__main__":  # pragma: no cover
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--json", action="store_true")
    sys.exit(cli_diagnose(ap.parse_args()))
