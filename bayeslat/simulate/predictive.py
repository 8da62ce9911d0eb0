"""Posterior predictive: the workload simulated once per coefficient draw, summarised across draws
(median point, intervals widened by the simulator discrepancy)."""

from __future__ import annotations

import statistics
import time

import numpy as np

from bayeslat import features as F
from bayeslat.errors import SpecError
from bayeslat.simulate.engine import (
    METRICS,
    _ctx_array,
    _metric_arrays,
    _prepare,
    _q,
    _run_kernel,
    _server_params,
    discrepancy_key,
)

# standard normal quantiles at (k + 1/2) / 64: the simulator discrepancy's grid (posterior_predictive)
_Z_GRID = np.array([statistics.NormalDist().inv_cdf((k + 0.5) / 64) for k in range(64)])


# Draws a prediction with a new level (an unseen GPU or class) needs before its median and 90%
# interval settle: the draws' spread is the population's (benchmarks/hardware_transfer.py: 40 draws
# put the point within x0.95-1.19 of the physics transfer, 100 draws within x0.94-1.05).
NEW_LEVEL_DRAWS = 100


def _one_draw(args):
    prep, srv, ctx_arr, beta, alpha, noise, seed = args
    out = _run_kernel(prep, srv, ctx_arr, beta, alpha, noise, seed, False)
    ok, ttft, itl, e2e = _metric_arrays(prep, out)
    res = {}
    for m, v in (("ttft_ms", ttft), ("itl_ms", itl), ("e2e_ms", e2e)):
        res[m] = _q(v[ok & np.isfinite(v)])
    res["n_failed"] = int((~ok).sum())
    res["steps"] = int(out[10][0])
    return res


def posterior_predictive(workload, ctx, server, draws, n_draws: int | None = None, seed: int = 0) -> dict:
    """Simulate the workload once per coefficient draw and summarise across draws.

    ``draws``: CoefDraws-like (``beta`` (D, R, F), ``alpha`` (D, A), ``sigma_rel`` (D,)) or a dict
    with those keys. ``n_draws`` of them are used (chosen without replacement with ``seed`` when
    fewer than D; all when None). Each draw uses its ``sigma_rel`` as the per-step noise and its
    own RNG seed. The draws run in this process (a sweep over many workloads or deployments runs
    one task per SPEC on Dask: ``bayeslat.pipeline.predict_many``).

    Returns ``{metric: {"mean", "p90", "p99" (medians across draws), "<stat>_draw_mean" (means
    across draws), "<stat>_interval50", "<stat>_interval90" ([lo, hi] across draws), "draws":
    [per-draw values], "sim_sd": the discrepancy SD of the mean}, "requests": n, "n_failed": mean failed
    per draw, "draws": n_draws, "wall_s": s}``.

    ``draws.sim_sd`` (optional, ``{"ttft"|"itl"|"e2e"[_p90|_p99]: sd}``, :func:`bayeslat.simulate.discrepancy.attach_sim_discrepancy`):
    the simulator's own run-level error, a log-normal factor ``exp(sd z)`` on each draw's workload
    statistics. The intervals are quantiles of that mixture (each draw crossed with a fixed grid of
    ``z``); the point (the median across draws) is the draws' own, not perturbed.

    The point prediction is the median across draws: the Bayes estimate under absolute (%) error,
    the accuracy metric. Near saturation a few draws' runaway queues dominate the mean across draws
    (held-out Mixtral codegen: mean TTFT 2.1 s across draws against 59 ms observed).

    ``draws.step_log_factor`` (optional, (D,), :func:`bayeslat.simulate.extrapolation.widen`): the
    workload discrepancy, one log step-time factor per draw. Each draw is then simulated twice,
    with the same seed: as it is, for the point and ``draws``, and with its step time scaled by
    the factor, for the intervals (and ``draws_widened``). The point stays the coefficients' own:
    with 20-40 draws the median of the widened draws would move by several percent from draw to
    draw where the discrepancy is wide.
    """
    get = (lambda k: draws[k]) if isinstance(draws, dict) else (lambda k: getattr(draws, k))
    beta = np.asarray(get("beta"), dtype=np.float64)
    alpha = np.asarray(get("alpha"), dtype=np.float64)
    try:
        sig = get("sigma_rel")
    except (KeyError, AttributeError):
        sig = None
    try:
        sim_sd = get("sim_sd") or {}
    except (KeyError, AttributeError):
        sim_sd = {}
    try:
        step_lf = get("step_log_factor")
    except (KeyError, AttributeError):
        step_lf = None
    D = beta.shape[0]
    sig = np.zeros(D) if sig is None else np.broadcast_to(np.asarray(sig, dtype=np.float64), (D,))
    if beta.ndim != 3 or beta.shape[1:] != (len(F.REGIMES), F.N_BETA):
        raise SpecError(f"draws.beta must be (D, {len(F.REGIMES)}, {F.N_BETA}), got {beta.shape}", field="beta")
    if alpha.shape != (D, F.N_ALPHA):
        raise SpecError(f"draws.alpha must be ({D}, {F.N_ALPHA}), got {alpha.shape}", field="alpha")
    rng = np.random.default_rng(seed)
    if n_draws is None or n_draws >= D:
        idx = np.arange(D)
    else:
        idx = np.sort(rng.choice(D, size=int(n_draws), replace=False))
    srv = _server_params(server)
    prep = _prepare(workload, srv)
    ctx_arr = _ctx_array(ctx)
    seeds = rng.integers(0, 2**31 - 1, size=len(idx))
    b = np.ascontiguousarray(beta[idx])
    a = np.ascontiguousarray(alpha[idx])
    s = np.maximum(sig[idx], 0.0)
    t0 = time.perf_counter()
    per = [_one_draw((prep, srv, ctx_arr, b[i], a[i], s[i], int(seeds[i]))) for i in range(len(idx))]
    # the workload discrepancy: the same draws (and seeds) with their step-time factors, for the intervals
    wide = per
    if step_lf is not None:
        f = np.exp(np.asarray(step_lf, dtype=np.float64)[idx])
        wide = [_one_draw((prep, srv, ctx_arr, b[i] * f[i], a[i], s[i], int(seeds[i]))) for i in range(len(idx))]
    wall = time.perf_counter() - t0
    out: dict = {}
    for m in METRICS:
        entry: dict = {}
        base = m.removesuffix("_ms")
        for stat in ("mean", "p90", "p99"):
            # the statistic's own discrepancy ("e2e_p90"), else the metric's (its mean's)
            sd = float(sim_sd.get(discrepancy_key(base, stat), sim_sd.get(base, 0.0)) or 0.0)
            v = np.array([p[m][stat] for p in per], dtype=np.float64)
            v = v[np.isfinite(v)]
            vw = np.array([p[m][stat] for p in wide], dtype=np.float64)
            vw = vw[np.isfinite(vw)]
            if len(v) == 0 or len(vw) == 0:
                entry[stat] = entry[f"{stat}_draw_mean"] = float("nan")
                entry[f"{stat}_interval50"] = [float("nan")] * 2
                entry[f"{stat}_interval90"] = [float("nan")] * 2
                continue
            entry[stat] = float(np.median(v))
            entry[f"{stat}_draw_mean"] = float(np.mean(v))
            w = (vw[:, None] * np.exp(sd * _Z_GRID)[None, :]).ravel() if sd > 0 else vw
            entry[f"{stat}_interval50"] = [float(np.quantile(w, 0.25)), float(np.quantile(w, 0.75))]
            entry[f"{stat}_interval90"] = [float(np.quantile(w, 0.05)), float(np.quantile(w, 0.95))]
        entry["draws"] = {stat: [p[m][stat] for p in per] for stat in ("mean", "p90", "p99")}
        if step_lf is not None:
            entry["draws_widened"] = {stat: [p[m][stat] for p in wide] for stat in ("mean", "p90", "p99")}
        entry["sim_sd"] = float(sim_sd.get(base, 0.0) or 0.0)  # the mean's
        out[m] = entry
    out["requests"] = int(len(workload))
    out["n_failed"] = float(np.mean([p["n_failed"] for p in per]))
    out["draws"] = int(len(idx))
    out["wall_s"] = wall
    return out
