"""The simulator discrepancy: the simulator's run-level error on a fit's own training runs,
replayed in-sample, measured and stored in the fit (``idata.attrs["sim_discrepancy"]``)."""

from __future__ import annotations

import json

import numpy as np

from bayeslat import model
from bayeslat.data import datasets
from bayeslat.model.training import obs_from_idata
from bayeslat.simulate.engine import discrepancy_key
from bayeslat.simulate.replay import METRICS, predict_case, replay_cases

#: cv_fit measures the simulator discrepancy of each refit on its training runs (attach_sim_discrepancy)
SIM_DISCREPANCY = True
#: draws per training run of the simulator-discrepancy stage (attach_sim_discrepancy)
SIM_DISCREPANCY_DRAWS = 16


def sim_discrepancy(idata, *, draws: int = SIM_DISCREPANCY_DRAWS, seed: int = 0, runs=None) -> dict:
    """The simulator's run-level error on the fit's own training runs, beyond the predictive spread.

    Replays every training run that has per-request data (the bundled runs; ``runs`` to choose)
    under the fit, in-sample, with the run spread (a new run of a trained deployment), without any
    discrepancy. Per metric (TTFT, ITL, E2E) and run: ``e = log(observed / point)`` and the
    predictive log-SD ``w = log(hi90 / lo90) / 3.29``. The discrepancy is the method-of-moments
    SD ``sqrt(max(0, mean(e^2) - mean(w^2)))``: what the simulator (its scheduler, KV and queue
    model) misses even where the step-time model has seen the run. In-sample, so in that respect
    it understates the out-of-sample error; the held-out runs of :mod:`bayeslat.evaluate`'s
    cross-validation never enter it.
    The same for the p90 and p99 (keys "<metric>_p90", "<metric>_p99": the tails' own error, larger
    than the mean's). ``w`` comes from the 5% / 95% quantiles of ``draws`` draws, which understate
    a normal's width by ~13% at 16 draws, so sigma errs on the wide side; one badly simulated run
    dominates it (default fit, TTFT: Mixtral general's -0.43 is most of the 0.11). ``runs``: full
    run ids. Returns ``{"sigma": {key: sd}, "runs": [{run, e_<key>, w_<key>}], "draws": n,
    "run_spread_config": ...}`` ({"sigma": {}} when fewer than 3 training runs have per-request data)."""
    train = set(np.asarray(obs_from_idata(idata).run).astype(str).tolist())
    have = set(datasets.runs()["run"].astype(str))
    sel = sorted(train & have if runs is None else set(runs) & have)
    per = []
    for c in replay_cases(sel) if sel else []:
        if c["run"] not in sel:
            continue
        pred = predict_case(c, idata, draws, seed, discrepancy=False)
        r = {"run": c["run"]}
        for m in METRICS:
            for stat in ("mean", "p90", "p99"):
                p, o = pred[f"{m}_ms"], c["observed"].get(f"{m}_{stat}")
                lo, hi = p[f"{stat}_interval90"]
                ok = bool(o) and p[stat] > 0 and lo > 0 and hi > 0
                k = discrepancy_key(m, stat)
                r[f"e_{k}"] = float(np.log(o / p[stat])) if ok else None
                r[f"w_{k}"] = float(np.log(hi / lo) / (2 * 1.6449)) if ok else None
        per.append(r)
    sigma = {}
    for m in METRICS:
        for stat in ("mean", "p90", "p99"):
            k = discrepancy_key(m, stat)
            ok = [r for r in per if r[f"e_{k}"] is not None]
            if len(ok) >= 3:
                sigma[k] = discrepancy_sd([r[f"e_{k}"] for r in ok], [r[f"w_{k}"] for r in ok])
    return {"sigma": sigma, "runs": per, "draws": int(draws), "seed": int(seed), "run_spread_config": model.RUN_SPREAD}


def discrepancy_sd(e, w) -> float:
    """Method-of-moments SD of an extra error term: log errors ``e`` whose predictive log-SDs ``w``
    explain part of their spread; ``sqrt(max(0, mean(e^2) - mean(w^2)))``."""
    e, w = np.asarray(e, dtype=float), np.asarray(w, dtype=float)
    return float(np.sqrt(max(0.0, np.mean(e**2) - np.mean(w**2))))


def attach_sim_discrepancy(idata, *, draws: int = SIM_DISCREPANCY_DRAWS, seed: int = 0):
    """Measure :func:`sim_discrepancy` and store it in ``idata.attrs["sim_discrepancy"]`` (JSON);
    :func:`bayeslat.model.coefficient_draws` passes it to the simulator's intervals. Returns idata."""
    res = sim_discrepancy(idata, draws=draws, seed=seed)
    idata.attrs["sim_discrepancy"] = json.dumps(res)
    return idata
