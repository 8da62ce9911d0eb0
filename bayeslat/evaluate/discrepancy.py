"""The workload discrepancy's calibration: how wrong the step time of a workload the fit has not
seen is, from held-out workloads (leave-one-workload-out folds).

Each held-out run gives, per metric (mean TTFT, ITL, E2E), the log step-time factor ``r`` at which
the simulator, under the fold's median coefficients, meets the observed mean
(:func:`implied_step_errors`): the workload's error read back as a step-time error, through the
simulator's own response curve, so a saturated run's 10x TTFT and an unloaded run's 5% ITL are
the same kind of number. ``v`` is the fold's predictive log-SD of the metric carried into step
time by the curve's local slope; ``g`` the workload's distance from the fold's training rows
(:func:`bayeslat.simulate.extrapolation.workload_extrapolation`).

:func:`calibrate_workload_discrepancy` puts ``r ~ Normal(0, v^2 + tau0^2 + tau1^2 g^2)`` on a grid
of (tau0, tau1) with half-normal priors and returns draws of the posterior. A run's metrics share
one step-time error, so each run's log-likelihood is the mean of its metrics', not their sum.
The priors carry what the run-level folds cannot: with four workloads, a fold holding out the
only workload far from the rest has no far workload to learn ``tau1`` from.

- ``tau0 ~ HalfNormal(sigma_dep)``: a new workload on a trained deployment is a priori as
  uncertain in step time as a new deployment (the fit's between-deployment spread, itself from
  held-out models);
- ``tau1 ~ HalfNormal(TAU1_PRIOR_SCALE)``: a workload whose every step lies outside the training
  range has its step time from the physics alone, whose per-shape error is the kernel model's
  residual scale (median over kernel families of the hardware fit's ``s``, ``models/hardware.nc``).
"""

from __future__ import annotations

import json

import numpy as np

from bayeslat import model as M
from bayeslat import simulate
from bayeslat.simulate.extrapolation import REFERENCE_DRAWS, WORKLOAD_DISCREPANCY_ATTR, workload_extrapolation

#: log step-time factors of the response curve (implied_step_errors): +-0.6 reaches x0.55 and x1.8
RESPONSE_GRID = np.linspace(-0.6, 0.6, 25)
#: prior scale of tau1: the kernel model's per-shape log residual scale, median over its five
#: families (models/hardware.nc posterior ``s``: GEMM 0.17, prefill 0.31, decode 0.30, MoE 0.28,
#: all-reduce 0.14); tests/test_discrepancy.py checks it against the shipped hardware fit
TAU1_PRIOR_SCALE = 0.28
#: prior scale of tau0 when the fit has no between-deployment spread
TAU0_PRIOR_SCALE = 0.05
#: grid of the calibration posterior
TAU0_GRID = np.linspace(0.0, 0.5, 101)
TAU1_GRID = np.linspace(0.0, 1.5, 151)
#: posterior draws stored in the fit
CALIBRATION_DRAWS = 400
#: a metric whose simulated mean moves less than this with the step time (d log mean / d log step)
#: says little about the step time: its implied error is kept in the record but not used (Llama-2-7B
#: reasoning: E2E elasticity 0.1, so a 4% E2E error reads as a step factor beyond the grid)
MIN_ELASTICITY = 0.5
#: simulated draws per held-out run of the calibration (the predictive log-SD ``v``)
CALIBRATION_PRED_DRAWS = 16

_Z90 = 1.6448536269514722


def _implied(lf: np.ndarray, y: np.ndarray, o: float) -> float:
    """The log step factor nearest 0 at which the nondecreasing curve ``y(lf)`` reaches ``o``; a
    grid end when ``o`` lies beyond the curve (the error is then at least that: such a run pulls
    tau up less than it should, never more)."""
    if o <= y[0]:
        return float(lf[0])
    if o >= y[-1]:
        return float(lf[-1])
    a = int(np.searchsorted(y, o, side="left"))  # y[a-1] < o <= y[a]
    b = int(np.searchsorted(y, o, side="right")) - 1  # y[b] <= o < y[b+1]

    def cross(j):
        if y[j] == y[j - 1]:
            return float(lf[j])
        return float(lf[j - 1] + (o - y[j - 1]) / (y[j] - y[j - 1]) * (lf[j] - lf[j - 1]))

    lo = cross(a)
    hi = lo if b < a else float(lf[b] + (0.0 if y[b + 1] == y[b] else (o - y[b]) / (y[b + 1] - y[b]) * (lf[b + 1] - lf[b])))
    if lo <= 0.0 <= hi:
        return 0.0
    return lo if abs(lo) < abs(hi) else hi


def implied_step_errors(case: dict, idata, pred: dict, *, seed: int = 0) -> dict:
    """A held-out case's errors as step-time errors under ``idata`` (a fit without the case's run).

    ``pred``: the case's prediction under ``idata`` without the workload discrepancy
    (:func:`bayeslat.simulate.predict_case`). Returns ``{"run", "distance" (g), "metrics": {metric:
    {"r", "v", "elasticity", "e" (log observed / predicted), "used"}}}`` for the metrics with an
    observed mean; ``used``: the elasticity is at least :data:`MIN_ELASTICITY`."""
    dep = case["deployment"]
    cd = dep.coefficient_draws(idata, REFERENCE_DRAWS, seed)
    beta, alpha = np.median(cd.beta, axis=0), np.median(cd.alpha, axis=0)
    wl = case["workload_obj"]
    g = workload_extrapolation(wl, dep.ctx, dep.server, idata, beta, alpha, seed=seed)
    curves = {m: [] for m in simulate.METRICS}
    for lf in RESPONSE_GRID:
        s = simulate.simulate(wl, dep.ctx, dep.server, beta * np.exp(lf), alpha, seed=seed).summary
        for m in simulate.METRICS:
            curves[m].append(s[m]["mean"])
    mid = len(RESPONSE_GRID) // 2
    out = {}
    for m in simulate.METRICS:
        o = case["observed"].get(m.removesuffix("_ms") + "_mean")
        y = np.log(np.maximum(np.asarray(curves[m], dtype=float), 1e-12))
        p = pred[m]["mean"]
        lo, hi = pred[m]["mean_interval90"]
        if not (o and np.isfinite(o) and o > 0) or not np.all(np.isfinite(y)) or not (p > 0 and lo > 0 and hi > 0):
            continue
        # the curve through the prediction (median across draws) at factor 1, made nondecreasing
        yy = np.maximum.accumulate(y - y[mid] + np.log(p))
        el = float((y[mid + 1] - y[mid - 1]) / (RESPONSE_GRID[mid + 1] - RESPONSE_GRID[mid - 1]))
        w = float(np.log(hi / lo) / (2 * _Z90))
        out[m] = {
            "r": _implied(RESPONSE_GRID, yy, float(np.log(o))),
            "v": w / max(abs(el), 0.1),
            "elasticity": el,
            "e": float(np.log(o / p)),
            "used": bool(abs(el) >= MIN_ELASTICITY),
        }
    return {"run": case["run"], "distance": g["distance"], "feature": g["feature"], "metrics": out}


def calibrate_workload_discrepancy(
    errors: list[dict],
    *,
    tau0_scale: float = TAU0_PRIOR_SCALE,
    tau1_scale: float = TAU1_PRIOR_SCALE,
    n_draws: int = CALIBRATION_DRAWS,
    seed: int = 0,
    source: str = "",
) -> dict:
    """Posterior of (tau0, tau1) from held-out runs' step-time errors (:func:`implied_step_errors`),
    on a grid with half-normal priors (scales ``tau0_scale``, ``tau1_scale``). Returns the JSON-able
    calibration :func:`bayeslat.simulate.extrapolation.step_discrepancy` reads: ``tau0`` / ``tau1``
    (``n_draws`` posterior draws each), their means and 90% intervals, the priors and the errors."""
    if tau0_scale <= 0 or tau1_scale <= 0:
        raise ValueError(f"prior scales must be > 0, got tau0 {tau0_scale}, tau1 {tau1_scale}")
    A, B = np.meshgrid(TAU0_GRID, TAU1_GRID, indexing="ij")
    lp = -0.5 * (A / tau0_scale) ** 2 - 0.5 * (B / tau1_scale) ** 2
    used = 0
    for e in errors:
        ms = [m for m in e["metrics"].values() if m.get("used", True)]
        if not ms:
            continue
        g = float(e["distance"])
        ll = np.zeros_like(A)
        for m in ms:
            var = m["v"] ** 2 + A**2 + (B * g) ** 2
            ll += -0.5 * np.log(var) - 0.5 * m["r"] ** 2 / var
        lp += ll / len(ms)
        used += 1
    p = np.exp(lp - lp.max()).ravel()
    p /= p.sum()
    rng = np.random.default_rng(seed)
    k = rng.choice(p.size, size=int(n_draws), p=p)
    d0, d1 = TAU0_GRID[1] - TAU0_GRID[0], TAU1_GRID[1] - TAU1_GRID[0]
    t0 = np.clip(A.ravel()[k] + d0 * (rng.random(len(k)) - 0.5), 0.0, None)
    t1 = np.clip(B.ravel()[k] + d1 * (rng.random(len(k)) - 0.5), 0.0, None)
    return {
        "tau0": [round(float(x), 5) for x in t0],
        "tau1": [round(float(x), 5) for x in t1],
        "tau0_mean": float(t0.mean()),
        "tau1_mean": float(t1.mean()),
        "tau0_interval90": [float(np.quantile(t0, 0.05)), float(np.quantile(t0, 0.95))],
        "tau1_interval90": [float(np.quantile(t1, 0.05)), float(np.quantile(t1, 0.95))],
        "prior": {"tau0_scale": float(tau0_scale), "tau1_scale": float(tau1_scale)},
        "runs": used,
        "errors": errors,
        "source": source,
    }


def tau0_prior_scale(idata) -> float:
    """``tau0``'s prior scale for a fit: its between-deployment step-time spread (the mean of
    ``sigma_dep``), else :data:`TAU0_PRIOR_SCALE`."""
    sp = M.deployment_spread_draws(idata, 400, np.random.default_rng(0))
    return float(np.mean(sp[0])) if sp is not None else TAU0_PRIOR_SCALE


def attach_workload_discrepancy(idata, calibration: dict):
    """Store a calibration (:func:`calibrate_workload_discrepancy`) in ``idata.attrs``; returns idata."""
    idata.attrs[WORKLOAD_DISCREPANCY_ATTR] = json.dumps(calibration)
    return idata


def heldout_step_errors(cases, fold_fit, *, draws: int = CALIBRATION_PRED_DRAWS, seed: int = 0, log=None) -> list[dict]:
    """:func:`implied_step_errors` of every held-out case under its fold: ``fold_fit(case)`` returns the
    fit without the case's run (e.g. the case's leave-one-workload-out refit)."""
    out = []
    for c in cases:
        fit = fold_fit(c)
        pred = simulate.predict_case(c, fit, draws, seed, workload_discrepancy=False)
        e = implied_step_errors(c, fit, pred, seed=seed)
        if log:
            rs = ", ".join(f"{m.removesuffix('_ms')} {v['r']:+.3f}" for m, v in e["metrics"].items())
            log(f"{c['run']}: distance {e['distance']:.2f}, implied step error {rs}")
        out.append(e)
    return out
