"""Replay cases: the bundled per-request runs as (deployment, workload, observed) cases, and the
posterior predictive of a case under a fit (what validation and the simulator discrepancy score)."""

from __future__ import annotations

from bayeslat.data import datasets, workload
from bayeslat.model.training import _training_runs
from bayeslat.simulate.extrapolation import REFERENCE_DRAWS, discrepancy_calibration, widen_for_workload
from bayeslat.simulate.predictive import posterior_predictive
from bayeslat.simulate.rundeployment import deployment

#: run-level metrics, as the observed keys name them ("ttft_mean", "e2e_p99", ...)
METRICS = ("ttft", "itl", "e2e")


def replay_cases(runs: list[str] | None):
    out = []
    for info in datasets.runs().to_dict("records"):
        if runs and not any(r in info["run"] for r in runs):
            continue
        dep = deployment(info["model_spec"], info["hardware_spec"], info["server"], info["run"])
        wl = workload.from_run(info["run"])
        obs = info["observed"]["all"]
        observed = {f"{m}_{q}": obs[f"{m}_{q}"] for m in METRICS for q in ("mean", "p90", "p99")}
        out.append(
            dict(
                run=info["run"],
                model=info["model"],
                workload=info["workload"],
                kind="replay",
                itl_definition="server",
                deployment=dep,
                workload_obj=wl,
                observed=observed,
                stress=info["workload"] == "reasoning",
            )
        )
    return out


def predict_case(
    case: dict, idata, draws: int, seed: int, *, discrepancy: bool = True, workload_discrepancy: bool = True
) -> dict:
    """Posterior predictive of one case; returns the prediction dict of :func:`posterior_predictive`.
    A case whose run is not one of the fit's training runs is a workload the fit has not seen: its
    draws carry the fit's workload discrepancy (:func:`bayeslat.simulate.extrapolation.widen_for_workload`;
    ``"workload_discrepancy"`` in the result says how far and how wide, None without one).
    ``discrepancy=False``: without the fit's simulator and workload discrepancies (what
    :func:`bayeslat.simulate.discrepancy.sim_discrepancy` measures); ``workload_discrepancy=False``:
    without the workload discrepancy (what :mod:`bayeslat.evaluate.discrepancy` calibrates it on)."""
    dep = case["deployment"]
    cd = dep.coefficient_draws(idata, draws, seed)
    wd = None
    if not discrepancy:
        cd.sim_sd = None
    elif workload_discrepancy and discrepancy_calibration(idata) and case["run"] not in set(_training_runs(idata) or []):
        ref = dep.coefficient_draws(idata, REFERENCE_DRAWS, seed)
        wd = widen_for_workload(cd, idata, case["workload_obj"], dep.ctx, dep.server, seed=seed, reference=ref)
    out = posterior_predictive(case["workload_obj"], dep.ctx, dep.server, cd, n_draws=draws, seed=seed)
    out["workload_discrepancy"] = wd
    return out
