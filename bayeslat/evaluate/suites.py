"""The validation suites: every run of a suite predicted and compared (``validate``)."""

from __future__ import annotations

import copy
import time

import pandas as pd

from bayeslat import model
from bayeslat.data import design
from bayeslat.errors import SpecError
from bayeslat.evaluate import discrepancy as VD
from bayeslat.evaluate.cases import _aggregate_cases, external_cases
from bayeslat.evaluate.crossval import _cv_groups, cv_fit, cv_rows
from bayeslat.evaluate.metrics import compare, summarize
from bayeslat.simulate.replay import predict_case, replay_cases

#: the suites of ``validate`` (``bayeslat validate --suite``)
SUITES = ("replay", "aggregate", "all", "loro", "lomo", "lowo", "external")


def validate(
    suite: str = "replay",
    idata=None,
    draws: int = 8,
    runs=None,
    seed: int = 0,
    fit_kwargs: dict | None = None,
    n_per_run_kind: int | None = None,
    bins=design.BINS,
    log=None,
    fit_dir=None,
    external=None,
    hardware=None,
    progress=None,
    workload_discrepancy: bool = True,
) -> tuple[pd.DataFrame, dict]:
    """Predict every run of a suite and compare with what was measured.

    Parameters
    ----------
    suite : str
        ``replay`` (the bundled per-request runs, in-sample under the default fit),
        ``aggregate`` (the aggregate-only runs), ``all``, the cross-validation suites ``loro`` /
        ``lomo`` / ``lowo`` (refit without each held-out run, model or workload), or ``external``.
    idata : arviz.InferenceData, optional
        The fit (default: the shipped one); the cross-validation suites refit.
    draws : int
        Posterior draws simulated per run.
    runs : list of str, optional
        Only these runs.
    seed : int
        Seed of the draws, the simulation and the refits' rows.
    fit_kwargs : dict, optional
        Sampler settings of the refits.
    n_per_run_kind : int, optional
        Raw rows per (run, kind) of the refits, instead of ``bins``.
    bins : tuple of int, optional
        The refits' bins of every row (``bayeslat.data.design.collapse``), as the default fit.
    log : callable, optional
        Called with a progress line.
    fit_dir : str, optional
        Where the cross-validation refits are cached (``bayeslat.evaluate.cv_fit_path``).
    external : list, optional
        ``suite="external"``: run files or experiment directories
        (``bayeslat.evaluate.external_cases``).
    hardware : str, optional
        The GPU of experiment directories that name none.
    progress : callable, optional
        Called with (runs done, runs in the suite) after each run (e.g.
        ``bayeslat.cluster.stderr_progress``).
    workload_discrepancy : bool
        The held-out runs' predictions carry a workload discrepancy
        (:mod:`bayeslat.evaluate.discrepancy`), calibrated, nested, without the fold's held-out
        runs: on the leave-one-workload-out errors of the runs of the *other* workloads (``lowo``),
        models (``lomo``) or runs (``loro``), each under the refit without its workload. The other
        suites use the fit's own calibration. False: no workload discrepancy in the refits.
        Nested in its targets, not in every refit: the other runs' errors come from refits
        without *their* workload, which may include the held-out runs.

    Returns
    -------
    tuple of (pandas.DataFrame, dict)
        The per-run table (predicted and observed mean / p90 / p99 of TTFT, ITL, E2E, errors, 90%
        intervals) and the summary (median absolute errors and interval coverage).

    Examples
    --------
    >>> import bayeslat
    >>> table, summary = bayeslat.validate("replay", draws=8)  # doctest: +SKIP
    >>> summary["all"]["e2e_mean_median_abs_err_pct"]  # doctest: +SKIP
    """
    if suite not in SUITES:
        raise SpecError(f"unknown suite {suite!r} (one of {', '.join(SUITES)})", field="suite")
    if int(draws) < 1:
        raise SpecError(f"must be >= 1, got {draws}", field="draws")
    log = log or (lambda *a: None)
    rows = []
    if suite in ("loro", "lomo", "lowo"):
        cases = replay_cases(runs)
        if not cases:
            raise SpecError(f"no bundled run matches {runs}", field="runs")
        # reconstructed once, and only if a fold is not cached; each fold is a subset
        full = cv_rows(seed, n_per_run_kind=n_per_run_kind, bins=bins)
        done = 0

        fits: dict = {}  # the workload folds of the discrepancy are the lowo suite's own folds

        def refit(exclude, held, what=suite):
            key = frozenset(exclude)
            if key not in fits:
                fits[key] = _refit(exclude, held, what)
            return fits[key]

        def _refit(exclude, held, what):
            return cv_fit(
                full,
                exclude,
                seed=seed,
                n_per_run_kind=n_per_run_kind,
                bins=None if n_per_run_kind else bins,
                fit_kwargs=fit_kwargs,
                fit_dir=fit_dir,
                log=lambda m: log(f"[{what}] held out {held}: {m}"),
            )

        errors = _lowo_step_errors(replay_cases(None), refit, seed, log) if workload_discrepancy else None
        key = {"lowo": "workload", "lomo": "model", "loro": "run"}[suite]
        for held, group in _cv_groups(cases, suite).items():
            exclude = {c["run"] for c in group}
            fit_idata = refit(exclude, held)
            if errors is not None:
                fit_idata = _with_nested_discrepancy(fit_idata, errors, {c[key] for c in group}, key, seed, held)
            for c in group:
                rows.append(compare(c, predict_case(c, fit_idata, draws, seed)) | {"held_out": held})
                done += 1
                if progress:
                    progress(done, len(cases))
    else:
        idata = idata if idata is not None else model.load_default()
        cases = []
        if suite in ("replay", "all"):
            cases += replay_cases(runs)
        if suite in ("aggregate", "all"):
            cases += _aggregate_cases(runs, seed)
        if suite == "external" or external:
            cases += external_cases(external or [], hardware=hardware, seed=seed, runs=runs)
        if not cases:
            if suite == "external" and not external:
                raise SpecError("suite 'external' needs the runs to validate (--external PATH ...)", field="external")
            raise SpecError(f"no run of suite {suite!r} matches {runs}" if runs else f"suite {suite!r} has no runs", field="runs")
        for i, c in enumerate(cases, 1):
            t0 = time.time()
            rows.append(compare(c, predict_case(c, idata, draws, seed)))
            log(f"[{suite}] {c['run']}: {time.time() - t0:.1f} s")
            if progress:
                progress(i, len(cases))
    df = pd.DataFrame(rows)
    return df, summarize(df)


def _lowo_step_errors(cases, refit, seed, log) -> list[dict]:
    """Every bundled run's error as a step-time error under the refit without its workload
    (:func:`bayeslat.evaluate.discrepancy.heldout_step_errors`), with the run's workload and model."""
    groups = _cv_groups(cases, "lowo")

    def fold_fit(c):  # ``refit`` holds each fold once (validate's memo, the benchmark's dict)
        return refit({x["run"] for x in groups[c["workload"]]}, c["workload"], "lowo")

    errs = VD.heldout_step_errors(cases, fold_fit, seed=seed, log=lambda m: log(f"[workload discrepancy] {m}"))
    by_run = {c["run"]: c for c in cases}
    return [e | {"workload": by_run[e["run"]]["workload"], "model": by_run[e["run"]]["model"]} for e in errs]


def _with_nested_discrepancy(fit_idata, errors, held, key, seed, name):
    """A shallow copy of a fold's fit carrying the workload discrepancy calibrated on the errors of
    the runs whose ``key`` (workload, model or run) is not held out."""
    inner = [e for e in errors if e[key] not in held]
    cal = VD.calibrate_workload_discrepancy(
        inner, tau0_scale=VD.tau0_prior_scale(fit_idata), seed=seed, source=f"nested: without {key} {name}"
    )
    out = copy.copy(fit_idata)
    out.attrs = dict(fit_idata.attrs)
    return VD.attach_workload_discrepancy(out, cal)
