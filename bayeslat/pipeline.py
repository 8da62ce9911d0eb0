"""The fit pipeline: every stage a posterior goes through, in order, whichever route starts it.

``bayeslat.fit(obs)``, ``bayeslat fit`` and the shipped ``models/default.nc`` are the same object made
by the same stages:

1. **NUTS** (``bayeslat.model.fit``): the main fit of the rows, then two cut stages exact on a
   grid: the between-deployment spread (from the fit's residuals) and the between-run spread.
2. **Hardware level** (``bayeslat.model.hardware_steps.attach_hardware_level``): the fit of the
   GPUs' kernel efficiencies to real kernel timings (the shipped ``models/hardware.nc``, made by
   ``bayeslat hardware``) is attached when the fit's hardware is one of its GPUs, so predictions
   for the other GPUs of it scale the GPU-bound coefficients by what their kernels measure.
3. **Simulator discrepancy** (``bayeslat.simulate.attach_sim_discrepancy``): the training runs are
   replayed through the simulator and the run-level error it leaves is stored, so predictive
   intervals carry it. It needs each run's per-request arrivals, so it runs where the training runs
   are bundled runs (``discrepancy=None``, the default, decides that from the rows).
4. **Probe calibration** (``calibrate``, ``bayeslat calibrate``): out-of-sample probe errors from
   leave-one-model-out refits, which ``bayeslat update`` uses to weigh a probe. It refits once per
   held-out model, so it is a separate, optional step; the shipped default has been through it.
   The held-out models' deployment factors also re-estimate the between-deployment spread.

``training_obs`` builds the rows ``bayeslat fit`` fits (bundled runs or ingested tables, with the
data seed and the stratified subsample), and ``fit_attrs`` the attributes it records, so that the
command and a notebook get the same rows from the same arguments.
"""

from __future__ import annotations

import json
import os

from bayeslat import evaluate as V
from bayeslat import features as F
from bayeslat import model as M
from bayeslat import probe as P
from bayeslat import simulate
from bayeslat.data import datasets, design
from bayeslat.errors import SpecError
from bayeslat.evaluate import discrepancy as VD
from bayeslat.simulate.extrapolation import (
    REFERENCE_DRAWS,
    discrepancy_calibration,
    version_discrepancy,
    widen_for_version,
    widen_for_workload,
)

#: probe size, in requests, of the calibration's out-of-sample errors (the size ``bayeslat update``
#: probes are compared with)
CALIBRATION_PROBE_N = 200


def training_obs(
    data: str = "bundled",
    *,
    runs=None,
    exclude=None,
    data_seed: int = 0,
    rows_per_run_kind: int | None = None,
    bins: tuple[int, int] | None = design.BINS,
):
    """The rows a fit sees: by default every row of every run, collapsed into bin means.

    Parameters
    ----------
    data
        ``"bundled"`` (the package's real runs) or a directory of ingested tables
        (``bayeslat ingest --out``).
    runs, exclude
        Run ids to keep / leave out (None: all).
    data_seed
        Seeds the reconstruction's offset estimate and the subsample, apart from the sampler's seed.
    rows_per_run_kind
        A stratified subsample of raw rows instead of bins: this many rows per (run, kind), spread
        over each run's timeline.
    bins
        (time slices, design bins) per run and kind: every row is used, in bin means
        (``bayeslat.data.design.collapse``; default ``design.BINS``). None, without
        ``rows_per_run_kind``: raw rows, up to the row builders' cap of 300 per run and kind.

    Returns
    -------
    bayeslat.data.design.ObsTable
    """
    kw = {"runs": runs, "exclude": exclude, "seed": int(data_seed)}
    if not rows_per_run_kind and bins is not None:
        kw |= {"bins": tuple(int(b) for b in bins), "n_per_run_kind": None}
    obs = design.bundled_obs(**kw) if data == "bundled" else design.obs_from_tables(data, **kw)
    if rows_per_run_kind:
        obs = design.subsample(obs, int(rows_per_run_kind), seed=int(data_seed))
    return obs


def fit_attrs(
    data: str = "bundled",
    *,
    runs=None,
    exclude=None,
    data_seed: int = 0,
    rows_per_run_kind: int | None = None,
    bins: tuple[int, int] | None = design.BINS,
) -> dict:
    """The data arguments of ``training_obs`` as fit attributes (what makes a fit rebuildable)."""
    attrs = {"data_source": str(data), "runs": json.dumps(runs), "exclude": json.dumps(exclude)}
    if data == "bundled":
        attrs["bundled_data_hash"] = datasets.data_hash()
    attrs["rows_per_run_kind"] = int(rows_per_run_kind or 0)
    attrs["bins"] = json.dumps(None if rows_per_run_kind or bins is None else [int(b) for b in bins])
    attrs["data_seed"] = int(data_seed)
    return attrs


def _bundled_run_ids() -> set[str]:
    return set(datasets.runs().index.astype(str))


def _bundled_runs(obs) -> bool:
    return bool(len(obs.run)) and set(map(str, obs.run)) <= _bundled_run_ids()


def fit(obs, *, seed: int = 0, discrepancy: bool | None = None, hardware="default", log=None, **kwargs):
    """Fit the hierarchical model and run every stage of the pipeline but the probe calibration.

    Parameters
    ----------
    obs
        The rows (``bayeslat.data.design.ObsTable``), e.g. ``training_obs``.
    seed
        The sampler's seed (the simulator-discrepancy replay uses it too).
    discrepancy
        Attach the simulator discrepancy (stage 3); None: where every training run is a bundled run.
    hardware
        The hardware level (stage 2): ``"default"`` the shipped fit, a path or InferenceData of a
        ``bayeslat hardware`` fit, or None for none. Attached only where one of the fit's hardware
        levels is among its GPUs.
    log
        A callable taking one line as each stage starts (None: silent); the sampler's own
        progress bar is ``progressbar``.
    **kwargs
        Passed to ``bayeslat.model.fit`` (backend, draws, tune, chains, target_accept, priors,
        attrs, progressbar).

    Returns
    -------
    arviz.InferenceData

    Examples
    --------
    >>> import bayeslat
    >>> from bayeslat.pipeline import training_obs
    >>> obs = training_obs()                               # doctest: +SKIP
    >>> idata = bayeslat.fit(obs, seed=0)                  # doctest: +SKIP
    """
    say = log or (lambda _line: None)
    n_runs = len(set(map(str, obs.run)))
    say(
        f"[1/3] NUTS on {len(obs.y):,} rows ({int(obs.n_rows.sum()):,} raw rows) of {n_runs} runs (compile, sample, then the spread stages)"
    )
    idata = M.fit(obs, seed=seed, **kwargs)
    say("[2/3] hardware level")
    attach_hardware(idata, hardware)
    if discrepancy is None:
        discrepancy = _bundled_runs(obs)
    say(
        f"[3/3] simulator discrepancy: replaying {n_runs} training runs"
        if discrepancy
        else "[3/3] simulator discrepancy: not run"
    )
    if discrepancy:
        simulate.attach_sim_discrepancy(idata, seed=seed)
    return idata


def attach_hardware(idata, hardware="default") -> bool:
    """Attach a hardware fit (stage 2 of :func:`fit`) where one of ``idata``'s hardware levels is
    among its GPUs; returns whether it was attached."""
    if hardware is None:
        return False
    from bayeslat.model import hardware as HW
    from bayeslat.model import hardware_steps as HS

    if isinstance(hardware, str) and hardware == "default":
        hw = HW.load_hardware_fit()
    elif isinstance(hardware, (str, os.PathLike)):
        hw = HW.load_hardware_fit(hardware)
    else:
        hw = hardware
    gpus = set(HS.hardware_names(hw))
    if not gpus & {str(v) for v in idata.posterior.coords["hardware"].values}:
        return False
    HS.attach_hardware_level(idata, hw)
    return True


def _fit_rows(idata) -> dict:
    """The rows a fit was made of, as ``cv_fit`` takes them (its attrs ``rows_per_run_kind`` and
    ``bins``; a fit that records neither: the default bins)."""
    n = int(idata.attrs.get("rows_per_run_kind", 0) or 0)
    if n:
        return {"n_per_run_kind": n, "bins": None}
    bins = json.loads(idata.attrs["bins"]) if "bins" in idata.attrs else design.BINS
    return {"n_per_run_kind": None, "bins": tuple(bins) if bins else design.BINS}


def calibrate(
    idata,
    *,
    probe_n: int = CALIBRATION_PROBE_N,
    seed: int = 0,
    design_name: str = "first",
    fit_dir=None,
    fit_kwargs: dict | None = None,
    log=None,
    workload: bool = True,
):
    """Attach the out-of-sample probe calibration to a fit of the bundled runs (stage 3), and the
    workload discrepancy calibrated on leave-one-workload-out folds.

    For each model of the bundled per-request runs, the fit is redone without that model's runs
    (``bayeslat.evaluate.cv_fit``: the rows the fit was made of, cached in ``fit_dir``); each
    of its runs is probed with its first ``probe_n`` requests and the probe's error under the fold's
    fit is measured, as is the deployment factor the held-out model calls for
    (``bayeslat.probe.oos_errors``). The errors are stored in the fit's attrs
    (``bayeslat.probe.attach_probe_oos``), where ``bayeslat update`` reads them.

    Then, with ``workload``, the fit is redone without each workload's runs, each held-out run's
    error is read back as a step-time error (``bayeslat.evaluate.discrepancy``), and the workload
    discrepancy (tau0, tau1) calibrated on them is stored in the fit's attrs
    (``workload_discrepancy``): every prediction of a workload the fit has not seen widens by it,
    more the further its steps lie from the training rows
    (``bayeslat.simulate.extrapolation``).

    Parameters
    ----------
    idata
        A fit whose training runs are bundled runs.
    probe_n
        Requests per probe.
    seed
        Seed of the fold refits' rows and of the probe replays.
    design_name
        Probe design (``"first"``: the first requests after warm-up; ``"stages"``: spread over the
        run's load stages).
    fit_dir
        A directory caching the fold refits (None: not cached).
    fit_kwargs
        Sampler settings of the fold refits (default: the package's, as the shipped default).
    log
        A callable taking one progress line (None: silent).
    workload
        Calibrate the workload discrepancy on leave-one-workload-out folds (False: keep the fit's).

    Returns
    -------
    arviz.InferenceData
        ``idata``, with ``attrs["probe_oos_errors"]`` set, in the deployment level's "spread"
        mode the deployment spread re-estimated from the held-out models' deployment factors
        (``bayeslat.model.estimate_deployment_spread``), and with ``workload``
        ``attrs["workload_discrepancy"]``.

    Raises
    ------
    SpecError
        When the fit's training runs are not bundled runs (their probes replay bundled requests).
    """
    cd = idata.get("constant_data")
    trained = set(map(str, cd["run"].values)) if cd is not None and "run" in cd else set()
    known = _bundled_run_ids()
    if not trained or not trained <= known:
        raise SpecError(
            "calibrate needs a fit of the bundled runs (its probes replay their requests); "
            f"not bundled: {sorted(trained - known)[:3] or 'no training runs recorded'}",
            field="model",
        )
    # every bundled run of the fit's models is probed, those the reconstruction kept out of the rows too
    cases = simulate.replay_cases(None)
    models = {c["model"] for c in cases if c["run"] in trained}
    cases = [c for c in cases if c["model"] in models]
    groups: dict = {}
    for c in cases:
        groups.setdefault(c["model"], []).append(c)
    rows = _fit_rows(idata)
    full = V.cv_rows(seed, **rows)
    folds: dict = {}

    def fold_fit(model):
        if model not in folds:
            excl = {c["run"] for c in groups[model]}
            folds[model] = V.cv_fit(full, excl, seed=seed, fit_dir=fit_dir, fit_kwargs=fit_kwargs, log=log, **rows)
        return folds[model]

    oos = P.oos_errors(fold_fit, groups, probe_n, seed=seed, design=design_name, log=log)
    where = f"in {fit_dir}" if fit_dir else "(not cached)"
    errors = [e for errs in oos.values() for e in errs]
    source = f"bayeslat calibrate: leave-one-model-out folds {where}"
    P.attach_probe_oos(idata, errors, probe_n, source=source, design=design_name)
    # the held-out models' deployment factors are draws of a new deployment's factor: the
    # between-deployment spread from them (nested cross-validation) replaces the one from the
    # fit's own residuals, which the coefficients absorb where deployments are few
    heldout = [e for e in errors if "factor_step" in e]
    pri = M.attr_json(idata, "priors", {}) or {}
    if heldout and pri.get("deployment_level") == "spread" and pri.get("sigma_dep"):
        M.estimate_deployment_spread(idata, heldout=heldout, seed=seed, info={"heldout_source": source})
    if workload:
        calibrate_workload(
            idata,
            cases=cases,
            full=full,
            rows=rows,
            seed=seed,
            fit_dir=fit_dir,
            fit_kwargs=fit_kwargs,
            log=log,
        )
    return idata


def calibrate_workload(idata, *, cases, full, rows: dict, seed: int = 0, fit_dir=None, fit_kwargs=None, log=None):
    """The workload discrepancy of ``idata`` from leave-one-workload-out folds of its ``cases``
    (``bayeslat.evaluate.discrepancy``): each workload's runs under the refit without them; tau0's
    prior scale is the fit's between-deployment spread (after ``calibrate`` re-estimates it)."""
    groups: dict = {}
    for c in cases:
        groups.setdefault(c["workload"], []).append(c)
    if len(groups) < 2:
        raise SpecError(f"the workload discrepancy needs runs of two workloads or more, got {sorted(groups)}", field="model")
    folds: dict = {}

    trained = set(map(str, idata.constant_data["run"].values))

    def fold_fit(case):
        w = case["workload"]
        if w not in folds:
            # a workload none of whose runs is in the fit's rows: the fit itself is the fit without it
            excl = {c["run"] for c in groups[w]} & trained
            folds[w] = V.cv_fit(full, excl, seed=seed, fit_dir=fit_dir, fit_kwargs=fit_kwargs, log=log, **rows) if excl else idata
        return folds[w]

    errors = VD.heldout_step_errors([c for g in groups.values() for c in g], fold_fit, seed=seed, log=log)
    where = f"in {fit_dir}" if fit_dir else "(not cached)"
    cal = VD.calibrate_workload_discrepancy(
        errors,
        tau0_scale=VD.tau0_prior_scale(idata),
        seed=seed,
        source=f"bayeslat calibrate: leave-one-workload-out folds {where}",
    )
    VD.attach_workload_discrepancy(idata, cal)
    if log:
        log(
            f"workload discrepancy: tau0 {cal['tau0_mean']:.3f} [{cal['tau0_interval90'][0]:.3f}, {cal['tau0_interval90'][1]:.3f}], "
            f"tau1 {cal['tau1_mean']:.3f} [{cal['tau1_interval90'][0]:.3f}, {cal['tau1_interval90'][1]:.3f}] from {cal['runs']} held-out runs"
        )
    return idata


def predict(spec, model=None, *, draws: int = 20, seed: int = 0) -> dict:
    """Posterior predictive TTFT, ITL and E2E of a workload on a deployment (``bayeslat predict``).

    Parameters
    ----------
    spec
        A SPEC.yaml path or a mapping in its format (model, hardware, server, workload).
    model
        A fit (InferenceData) or a path to one; None: the shipped default.
    draws
        Posterior draws simulated.
    seed
        Seed of the draws and of the simulation.

    Returns
    -------
    dict
        ``{"ttft"|"itl"|"e2e": {"mean", "p90", "p99", "mean_interval90"}, "requests": int}`` (ms), plus
        ``"spec"`` (the resolved spec), ``"result"`` (the full posterior predictive) and
        ``"new_levels"`` (levels the fit has not seen, drawn from the population),
        ``"workload_discrepancy"`` and ``"version_discrepancy"`` (the step-time factors the interval's
        draws carry for a workload outside the training range and for a server
        ``vllm_version`` other than the training runs'; None when they do not apply).

    Examples
    --------
    >>> import bayeslat
    >>> out = bayeslat.predict("specs/examples/llama-2-7b-h100-codegen.yaml", draws=4)  # doctest: +SKIP
    >>> out["e2e"]["mean_interval90"]  # doctest: +SKIP
    """
    s = simulate.load_spec(spec) if isinstance(spec, (str, os.PathLike)) else simulate.resolve_spec(spec)
    idata = M.load_or_default(model) if model is None or isinstance(model, (str, os.PathLike)) else model
    cdraws = M.coefficient_draws(
        idata,
        s["hardware"].name,
        s["model"].model_class,
        n=int(draws),
        seed=int(seed),
        deployment=F.deployment_key(s["ctx"], s["hardware"].name),
        tensor_parallel=s["server"].tensor_parallel,
    )
    srv = simulate.spec_sim_server(s)
    # a SPEC's workload is one the fit was not trained on: its draws carry the workload discrepancy
    wd = None
    if discrepancy_calibration(idata):
        ref = M.coefficient_draws(
            idata,
            s["hardware"].name,
            s["model"].model_class,
            n=REFERENCE_DRAWS,
            seed=int(seed),
            deployment=F.deployment_key(s["ctx"], s["hardware"].name),
            tensor_parallel=s["server"].tensor_parallel,
        )
        wd = widen_for_workload(cdraws, idata, s["workload"], s["ctx"], srv, seed=int(seed), reference=ref)
    vd = version_discrepancy(idata, s["server"].vllm_version, s["hardware"].name)
    widen_for_version(cdraws, vd, seed=int(seed))
    res = simulate.posterior_predictive(s["workload"], s["ctx"], srv, cdraws, n_draws=None, seed=int(seed))
    out = {m: {k: res[m][k] for k in ("mean", "p90", "p99", "mean_interval90")} for m in simulate.METRICS}
    out["requests"] = res["requests"]
    out["workload_discrepancy"] = wd
    out["version_discrepancy"] = vd
    return out | {"spec": s, "result": res, "new_levels": list(getattr(cdraws, "new_levels", None) or [])}


_TASK_MODELS: dict = {}


def _task_model(model):
    """A sweep task's fit: loaded once per worker process and path (None: the shipped default)."""
    if model is not None and not isinstance(model, (str, os.PathLike)):
        return model
    key = None if model is None else os.fspath(model)
    if key not in _TASK_MODELS:
        _TASK_MODELS[key] = M.load_or_default(key)
    return _TASK_MODELS[key]


def _predict_task(item) -> dict:
    spec, model, draws, seed = item
    out = predict(spec, _task_model(model), draws=draws, seed=seed)
    s, res = out.pop("spec"), out.pop("result")
    return out | {"spec": str(s.get("spec_path") or spec), "draws": int(res["draws"]), "n_failed": float(res["n_failed"])}


def _check_task(item) -> dict:
    from bayeslat.transfer import check

    spec, model, draws, seed = item
    return check(spec, _task_model(model), draws=draws, seed=seed)


def _sweep(task, specs, model, draws, seed, workers, scheduler, progress) -> list:
    from bayeslat import cluster

    if model is not None and not isinstance(model, (str, os.PathLike)) and (scheduler is not None or workers != 0):
        raise SpecError("a sweep on Dask takes the fit as a path (its workers load it once each)", field="model")
    items = [(spec, model, int(draws), int(seed)) for spec in specs]
    return cluster.map_tasks(task, items, workers=workers, scheduler=scheduler, progress=progress)


def predict_many(specs, model=None, *, draws: int = 20, seed: int = 0, workers: int | None = None, scheduler=None, progress=None):
    """:func:`predict` of every SPEC of ``specs``, one Dask task each (:mod:`bayeslat.cluster`).

    Each task is ``predict(spec, model, draws=draws, seed=seed)``: a pure function of the spec, so
    the results are the same on any number of workers, and the same as calling :func:`predict`
    on each spec in turn.

    Parameters
    ----------
    specs
        SPEC.yaml paths (or mappings in its format).
    model
        A fit's path; None: the shipped default. Each worker loads it once.
        (An InferenceData only with ``workers=0``.)
    draws, seed
        As :func:`predict`.
    workers
        Processes of the local Dask cluster (None: the usable CPUs; 0: in this process).
    scheduler
        Address of an existing Dask scheduler (or a ``distributed.Client``) to run on instead.
    progress
        A callable taking (done, total) after each task.

    Returns
    -------
    list of dict
        Per spec, in order: :func:`predict`'s summary (``ttft_ms`` / ``itl_ms`` / ``e2e_ms`` with ``mean``,
        ``p90``, ``p99``, ``mean_interval90``; ``requests``; ``new_levels``) with the spec's path,
        ``draws`` and ``n_failed`` instead of the full posterior predictive.
    """
    return _sweep(_predict_task, specs, model, draws, seed, workers, scheduler, progress)


def check_many(specs, model=None, *, draws: int = 20, seed: int = 0, workers: int | None = None, scheduler=None, progress=None):
    """``bayeslat.transfer.check`` of every SPEC of ``specs``, one Dask task each; the parameters
    are :func:`predict_many`'s. Returns the check reports, in order."""
    return _sweep(_check_task, specs, model, draws, seed, workers, scheduler, progress)


__all__ = ["CALIBRATION_PROBE_N", "calibrate", "check_many", "fit", "fit_attrs", "predict", "predict_many", "training_obs"]
