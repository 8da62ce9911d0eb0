"""How far a probe, one slice of a run, is off: the spread between slices of one deployment's
traffic a fit measures (:func:`slice_spread`) and the out-of-sample probe errors a fit carries in
its attrs (:func:`attach_probe_oos`, :func:`oos_calibration`, :func:`factor_sd_from`).
"""

from __future__ import annotations

import json

import numpy as np

from bayeslat import model as M
from bayeslat.model.training import obs_from_idata

# log-scale spread between traffic slices of one deployment per row kind, where a fit cannot
# measure it (no deployment with >= 2 runs): what slice_spread measures on the bundled runs
# (leave-one-model-out fits: windows 0.010-0.015, TTFT 0.12-0.17)
SLICE_SD_DEFAULT = {"step": 0.015, "window": 0.015, "ttft": 0.15, "alpha": 0.15}


def slice_spread(idata, *, draws: int = 200, seed: int = 0) -> dict:
    """Per row kind, how much the mean misfit of one slice of a deployment's traffic differs from
    another's: the SD across runs of one deployment of each run's median log(observed / predicted),
    pooled (root mean square) over the fit's deployments with >= 2 runs. A probe is one such
    slice, so its rows of a kind share one draw of this error (:func:`update_deployment`): 150
    TTFT rows that all run 27% long are one piece of evidence about the deployment, not 150.
    Kinds the fit cannot measure get ``SLICE_SD_DEFAULT``."""
    train = obs_from_idata(idata)
    mu = M.predict_mean(idata, train, n=draws, seed=seed).mean(axis=0)
    ok = (train.y > 0) & (mu > 0)
    r = np.where(ok, np.log(np.where(ok, train.y, 1.0) / np.where(ok, mu, 1.0)), np.nan)
    deps = train.meta.get("deployments", {})
    out = {}
    for k, kind in enumerate(M.KINDS):
        var, n = [], 0
        for dep in sorted(set(deps.values())):
            sels = [(train.run == ru) & (train.kind == k) for ru, dd in deps.items() if dd == dep]
            med = [np.nanmedian(r[sel]) for sel in sels if np.sum(sel & ok) >= 10]
            if len(med) >= 2:
                var.append(np.var(med, ddof=1) * (len(med) - 1))
                n += len(med) - 1
        out[kind] = float(max(np.sqrt(np.sum(var) / n), 0.01)) if n else SLICE_SD_DEFAULT[kind]
    return out


def oos_calibration(errors, base: dict | None = None, *, min_runs: int = 3) -> dict | None:
    """A probe calibration from out-of-sample slice errors (:func:`probe_slice_error` of runs whose
    model a fit did not see): per kind, ``mu`` the mean and ``tau`` the SD over runs (never below
    ``SLICE_SD_DEFAULT``). They replace ``base``'s in-sample values: those compare a probe with a
    fit that has seen its run, so they also carry the fit's own misfit of the run (in-sample TTFT
    offsets spread 0.24-0.32 across runs, against 0.11 probe-to-whole-run out of sample).
    ``errors``: list of {kind: error} (other keys, e.g. "run", are ignored), and entries with
    ``factor_step`` / ``factor_cpu`` (:func:`run_factor_error`, one per deployment), which give
    ``out["factor_sd"]`` (:func:`factor_sd_from`). ``base`` (a :func:`probe_calibration` result)
    supplies the kinds not measured here and its ``spread``."""
    out = dict(base or {})
    kinds = dict((base or {}).get("kinds", {}))
    for kind in sorted({k for e in errors for k in e if k in SLICE_SD_DEFAULT}):
        v = np.array([e[kind] for e in errors if kind in e])
        if len(v) < min_runs:
            continue
        kinds[kind] = {
            "mu": float(v.mean()),
            "tau": float(max(v.std(ddof=1), SLICE_SD_DEFAULT[kind])),
            "runs": int(len(v)),
            "sd_runs": float(v.std(ddof=1)),
            "source": "out-of-sample",
        }
    if not kinds:
        return None
    out["kinds"] = kinds
    out["source"] = "out-of-sample"
    fs = factor_sd_from(errors, min_runs=min_runs)
    if fs:
        out["factor_sd"] = fs
    return out


def factor_sd_from(errors, *, min_runs: int = 3) -> dict | None:
    """The factor prior of a new deployment from out-of-sample deployment factors (entries of
    ``errors`` with ``factor_step`` / ``factor_cpu``, :func:`run_factor_error`, one per
    deployment): per part, the root mean square of the log factors (around 0, the prior's centre).
    None unless both parts have >= ``min_runs`` values."""
    vals = {
        part: np.array([e[f"factor_{part}"] for e in errors if e.get(f"factor_{part}") is not None], dtype=float)
        for part in ("step", "cpu")
    }
    if min(len(v) for v in vals.values()) < min_runs:
        return None
    return {part: float(np.sqrt(np.mean(v**2))) for part, v in vals.items()} | {"deployments": int(min(map(len, vals.values())))}


#: out-of-sample slice errors measured on probes of n requests serve probes of n / 1.5 ... 1.5 n
OOS_SIZE_TOLERANCE = 1.5


def oos_attr(design: str = "first") -> str:
    """The attrs key of a fit's out-of-sample probe errors for probes of ``design``."""
    return "probe_oos_errors" if design == "first" else f"probe_oos_errors_{design}"


def attach_probe_oos(idata, errors: list, n_requests: int, source: str = "", design: str = "first"):
    """Store out-of-sample probe slice errors (:func:`probe_slice_error` of each run under a fit
    that did not see its model) and deployment factors (:func:`run_factor_error`, one entry per
    deployment; ``bayeslat calibrate``, ``bayeslat.pipeline.calibrate``) in
    ``idata.attrs["probe_oos_errors"]``; ``update_deployment(calibration="auto")`` then uses
    them (:func:`oos_calibration`); probes of another ``design`` (:func:`bundled_probe`) are kept
    under their own key (:func:`oos_attr`). Returns idata."""
    idata.attrs[oos_attr(design)] = json.dumps(
        {"n_requests": int(n_requests), "design": design, "errors": list(errors), "source": source}
    )
    return idata
