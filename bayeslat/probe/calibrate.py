"""Out-of-sample probe errors: how far a probe of a run a fit has not seen misleads about the
whole run (:func:`probe_slice_error`) and which deployment factors the whole runs call for
(:func:`run_factor_error`), measured per held-out model (:func:`oos_errors`); what the shipped
default's probe calibration is made from.
"""

from __future__ import annotations

import numpy as np

from bayeslat import model as M
from bayeslat.data import design
from bayeslat.errors import SpecError
from bayeslat.probe.condition import probe_statistics, update_deployment
from bayeslat.probe.read import bundled_probe, probe_obs
from bayeslat.simulate.spec import spec_for_run


def probe_slice_error(
    idata, run: str, n_requests: int, *, workload=None, draws: int = 100, seed: int = 0, design: str = "first"
) -> dict:
    """How far a probe of a bundled run misleads about the whole run, per row kind, under ``idata``.

    Per posterior draw, the probe's statistic of a kind (the rows' median log(observed / mu), or
    log(sum observed / sum mu) for ``POOLED_PROBE_KINDS``: what :func:`update_deployment` sees)
    minus the same statistic over every row of the whole run; the mean over draws (the draw's own
    coefficient error cancels in the difference). Under a fit that did not see the run's model
    (leave-one-model-out), this is the probe's out-of-sample slice error: the start of a run, at
    its load, is not the whole run when the model's error depends on the load. Runs the bundled
    reconstruction skips (``design.bundled_obs``) give {}."""
    spec = spec_for_run(run, workload=workload)
    pobs, _ = probe_obs(spec, bundled_probe(run, n_requests, design))
    whole = _whole_run_rows([run], n_per_run_kind=None)
    if whole is None:
        return {}
    p, w = (probe_statistics(t, M.predict_mean(idata, t, n=draws, seed=seed)) for t in (pobs, whole))
    return {kind: float(np.mean(p[kind] - w[kind])) for kind in sorted(set(p) & set(w))}


def _whole_run_rows(runs: list, *, n_per_run_kind: int | None, seed: int = 0):
    """The bundled rows (no step rows) of exactly ``runs`` (full run ids), ``n_per_run_kind`` per
    run and kind (None: all); None when the reconstruction skips them all (``design.bundled_obs``)."""
    try:
        whole = design.bundled_obs(runs=runs, n_per_run_kind=n_per_run_kind, seed=seed, step_rows=False)
    except SpecError:
        return None
    keep = np.isin(np.asarray(whole.run).astype(str), [str(r) for r in runs])
    return whole.subset(keep) if keep.any() else None


def run_factor_error(idata, runs, *, seed: int = 0, n_per_kind: int = 300) -> dict:
    """The deployment factors a deployment's bundled runs call for under ``idata``: the log
    step-time and CPU-time factors (``"factor_step"``, ``"factor_cpu"``) that
    :func:`update_deployment` finds when it conditions on the rows of all of ``runs`` (one
    deployment, as the model has one factor pair per deployment, not per run) with a flat prior on
    the factors (SD 1, whether or not the fit has seen the deployment) and no slice error (whole
    runs are not a slice). Under a fit that did not see the deployment's model
    (leave-one-model-out), this is how far a new model's deployment sits from the fit: the
    out-of-sample spread of these values is the prior a probe update of a new deployment needs
    (:func:`oos_calibration`'s ``factor_sd``); the fit's own between-deployment
    spread only covers deployments of the models it has seen. ``n_per_kind`` rows per run and
    kind, stratified over the run (``design.bundled_obs``): the Newton steps cost draws x rows, and
    the factors are settled long before a run's ~20,000 rows. Runs the bundled reconstruction skips
    are left out; {} when none is left."""
    res = whole_run_update(idata, runs, seed=seed, n_per_kind=n_per_kind, copy_idata=False)
    if res is None:
        return {}
    _, info, whole = res
    return {
        "factor_step": float(info["step_factor"]["log_mean"]),
        "factor_cpu": float(info["cpu_factor"]["log_mean"]),
        "factor_runs": sorted(set(np.asarray(whole.run).astype(str).tolist())),
    }


def whole_run_update(idata, runs, *, seed: int = 0, n_per_kind: int = 300, copy_idata: bool = True):
    """:func:`update_deployment` conditioned on every row of bundled ``runs`` (one deployment): no
    slice error (whole runs are not a slice), a flat factor prior (SD 1), no draw weights.
    Returns (updated idata or None, info, the rows) or None when the bundled reconstruction skips
    every run. :func:`run_factor_error` reads the factors; ``benchmarks/probe_ceiling.py`` predicts
    with them (the ceiling of a probe update)."""
    whole = _whole_run_rows([runs] if isinstance(runs, str) else list(runs), n_per_run_kind=int(n_per_kind), seed=seed)
    if whole is None:
        return None
    kinds = {M.KINDS[int(k)] for k in np.unique(whole.kind)}
    cal = {"kinds": {k: {"mu": 0.0, "tau": 1e-3} for k in kinds}, "source": "whole runs"}
    # reweight=False: the factors alone carry the deployment's distance. Reweighting the draws of a
    # new class by whole runs would absorb it into the class deviation (held-out Mixtral: step
    # +0.007 instead of +0.056), and the factor prior this measures serves every deployment
    new, info = update_deployment(
        idata,
        whole,
        seed=seed,
        calibration=cal,
        copy_idata=copy_idata,
        factor_sd={"step": 1.0, "cpu": 1.0},
        reweight=False,
        level="deployment",
    )
    return new, info, whole


def oos_errors(fold_fit, groups, probe_n, *, seed=0, design="first", hold_out="model", log=None) -> dict[str, list[dict]]:
    """The out-of-sample probe errors a fit's probe calibration is made from (what
    :func:`bayeslat.probe.attach_probe_oos` stores): per held-out group, every run's slice error
    (:func:`probe_slice_error`) under the fit without the group, and, for ``hold_out="model"``, one
    entry of the deployment factors the group's runs call for (:func:`run_factor_error`; held-out
    workloads: their deployments are trained, the factor prior of a new one is not used).

    ``fold_fit``: a callable, held-out group -> the fold's InferenceData (the fit without the
    group's runs). ``groups``: {held-out group (a model): [cases]}, each case a dict with ``"run"``
    and ``"workload_obj"`` (``bayeslat.evaluate.replay_cases``). ``probe_n``, ``design``: the
    probe (:func:`bayeslat.probe.bundled_probe`). ``log``: called with a line per run and per
    deployment (None: silent). Returns {group: [{"run", "model", kind: error...}, ...,
    {"model", "factor_step", "factor_cpu", "factor_runs"}]}."""
    oos = {}
    for model, group in groups.items():
        idata = fold_fit(model)
        oos[model] = [
            {"run": c["run"], "model": model}
            | probe_slice_error(idata, c["run"], probe_n, workload=c["workload_obj"], seed=seed, design=design)
            for c in group
        ]
        if log is not None:
            for c, e in zip(group, oos[model]):
                log(
                    f"slice error {c['run'][16:]:38s} "
                    + " ".join(f"{k} {v:+.3f}" for k, v in e.items() if k not in ("run", "model"))
                )
        # the factors the held-out model's deployment calls for (all its runs; one entry)
        # (held-out workloads: their deployments are trained, the factor prior of a new one is not used)
        fe = run_factor_error(idata, [c["run"] for c in group], seed=seed) if hold_out == "model" else {}
        if fe:
            oos[model].append({"model": model} | fe)
            if log is not None:
                log(
                    f"deployment factors {model:31s} step {fe['factor_step']:+.3f} cpu {fe['factor_cpu']:+.3f} "
                    f"({len(fe['factor_runs'])} runs)"
                )
    return oos
