"""How well a fit predicts a probe's rows, and what to do about it (:func:`score_probe`).

Probe decision rules (:func:`score_probe`)
------------------------------------------
With ``ratio`` = median over the probe's rows of observed / predicted mean, ``cov90`` = fraction
of rows inside their 90% posterior predictive interval and ``outliers`` = fraction with PIT outside
[0.005, 0.995]:

- ``refit``: ``|log ratio| > log(PROBE_REFIT_RATIO)`` (x1.5) or ``cov90 < PROBE_REFIT_COVERAGE`` (0.3);
- ``update``: ``|log ratio| > log(PROBE_UPDATE_RATIO)`` (x1.1) or ``cov90 < PROBE_UPDATE_COVERAGE``
  (0.6) or ``outliers > PROBE_UPDATE_OUTLIERS`` (0.1);
- ``transfer-ok`` otherwise.

The probe's rows are scored as the new run they are (:func:`score_rows`): the rows of a kind share
one level error, the spread of a probe's misfit measured by probing the fit's training runs
(:func:`probe_level_error`), on top of each row's own noise. Decode windows sum ~250 steps, so
their own noise is < 1%, while a probe slice is 2-5% off the fit (a new run, its warm-up and
load): scored in-sample, such a probe misses most windows without the model being wrong.
"""

from __future__ import annotations

import math

import numpy as np

from bayeslat import model as M
from bayeslat.probe.condition import auto_calibration
from bayeslat.probe.read import probe_obs
from bayeslat.probe.slices import slice_spread

DECISIONS = ("transfer-ok", "update", "refit")

PROBE_REFIT_RATIO = 1.5
PROBE_REFIT_COVERAGE = 0.3
PROBE_UPDATE_RATIO = 1.1
PROBE_UPDATE_COVERAGE = 0.6
PROBE_UPDATE_OUTLIERS = 0.1


#: (mu, tau) of a 200-request probe's level error per row kind where a fit cannot measure it: the
#: shipped default fit's out-of-sample probe errors (leave-one-model-out fits, 15 bundled runs:
#: decode windows +0.6%, SD 5.3%; the summed TTFT level +13%, SD 11%, floored at SLICE_SD_DEFAULT).
#: Between-run spread alone (slice_spread, SLICE_SD_DEFAULT) understates it: the start of a run is
#: not its average.
PROBE_LEVEL_DEFAULT = {"window": (0.006, 0.053), "ttft": (0.13, 0.15)}


def probe_level_error(idata, obs, *, seed: int = 0, calibration="auto") -> dict:
    """{kind: (mu, tau)} of the level error a probe's rows share per row kind (log scale): a probe is
    a slice of a run the fit has not seen, whose level differs from the fit's prediction by the
    spread between runs and by the slice's offset from its run (the start of a run is not its
    average). Per kind, the mean and SD of that misfit measured by probing the fit's training runs
    the same way, replaced by the fit's out-of-sample errors where it carries them
    (:func:`auto_calibration` without the update spread, or ``calibration``: a
    :func:`probe_calibration` result or None); kinds it does not cover (a fit without >= 3 runs
    of per-request data) get :data:`PROBE_LEVEL_DEFAULT`, its SD floored at :func:`slice_spread`'s
    SD across runs of one deployment."""
    if calibration == "auto":
        n_req = int(obs.meta.get("probe_requests", 0) or 0)
        calibration = auto_calibration(idata, n_req, seed=seed, design=obs.meta.get("probe_design", "first"), spread=False)
    kinds = (calibration or {}).get("kinds", {})
    ss = slice_spread(idata, seed=seed)
    out = {}
    for kind, sd in ss.items():
        if kind in kinds:
            out[kind] = (float(kinds[kind]["mu"]), float(kinds[kind]["tau"]))
        else:
            mu0, tau0 = PROBE_LEVEL_DEFAULT.get(kind, (0.0, 0.0))
            out[kind] = (mu0, max(tau0, float(sd)))
    return out


def score_rows(idata, obs, *, draws: int = 400, seed: int = 0, new_run: bool = True, calibration="auto") -> dict:
    """Posterior predictive checks of ObsTable rows: z-scores, PIT, 90% coverage, outliers, ratio.

    ``new_run`` (default): the rows are a probe, a slice of a run the fit has not seen, scored with
    the level error its rows of a kind share (:func:`probe_level_error`; ``calibration`` as there),
    the calibrated slice errors :func:`update_deployment` conditions with (for kinds the fit cannot
    calibrate, :data:`PROBE_LEVEL_DEFAULT` here, the between-run spread there). False: scored as
    the fit's own rows (in-sample intervals: the noise of each row alone), e.g. rows a refit saw.
    ``out["level_error"]``: the (mu, tau) used per kind."""
    lev = probe_level_error(idata, obs, seed=seed, calibration=calibration) if new_run else None
    pp = M.posterior_predictive(idata, obs, n=draws, seed=seed, level_error=lev)
    y = np.asarray(obs.y, dtype=float)
    m, sd = pp.mean(axis=0), pp.std(axis=0)
    z = (y - m) / np.maximum(sd, 1e-9)
    pit = (pp < y).mean(axis=0)
    lo, hi = np.quantile(pp, 0.05, axis=0), np.quantile(pp, 0.95, axis=0)
    cov = (y >= lo) & (y <= hi)
    with np.errstate(divide="ignore", invalid="ignore"):
        lr = np.log(np.where((y > 0) & (m > 0), y / m, np.nan))
    out = {
        "rows": int(len(y)),
        "new_run": bool(new_run),
        "z_mean": float(np.mean(z)),
        "z_sd": float(np.std(z)),
        "coverage90": float(cov.mean()),
        "outlier_rate": float(np.mean((pit < 0.005) | (pit > 0.995))),
        "ratio_median": float(np.exp(np.nanmedian(lr))),
        "abs_err_pct_median": float(100 * np.nanmedian(np.abs(y - m) / np.abs(m))),
        "rel_width90_median": float(np.nanmedian((hi - lo) / np.abs(m))),
        "pit_hist": np.histogram(pit, bins=10, range=(0, 1))[0].tolist(),
        "by_kind": {},
        "level_error": {k: {"mu": v[0], "tau": v[1]} for k, v in (lev or {}).items()},
    }
    kinds = np.asarray(obs.kind)
    for k in np.unique(kinds):
        sel = kinds == k
        out["by_kind"][M.KINDS[int(k)]] = {
            "rows": int(sel.sum()),
            "coverage90": float(cov[sel].mean()),
            "z_mean": float(z[sel].mean()),
            "ratio_median": float(np.exp(np.nanmedian(lr[sel]))),
            "outlier_rate": float(np.mean((pit[sel] < 0.005) | (pit[sel] > 0.995))),
        }
    return out


def decide(sc: dict) -> tuple[str, list]:
    """Probe decision from :func:`score_rows` output (rules in the module docstring)."""
    lr = abs(math.log(max(sc["ratio_median"], 1e-12)))
    why = []
    if lr > math.log(PROBE_REFIT_RATIO) or sc["coverage90"] < PROBE_REFIT_COVERAGE:
        why.append(f"observed / predicted = {sc['ratio_median']:.2f}, 90% coverage {100 * sc['coverage90']:.0f}%")
        return "refit", why
    if lr > math.log(PROBE_UPDATE_RATIO):
        why.append(f"observed / predicted = {sc['ratio_median']:.2f} (> {PROBE_UPDATE_RATIO}x off)")
    if sc["coverage90"] < PROBE_UPDATE_COVERAGE:
        why.append(f"90% coverage {100 * sc['coverage90']:.0f}% < {100 * PROBE_UPDATE_COVERAGE:.0f}%")
    if sc["outlier_rate"] > PROBE_UPDATE_OUTLIERS:
        why.append(
            f"{100 * sc['outlier_rate']:.0f}% of the rows have PIT outside [0.005, 0.995] (> {100 * PROBE_UPDATE_OUTLIERS:.0f}%)"
        )
    return ("update" if why else "transfer-ok"), why or [
        f"observed / predicted = {sc['ratio_median']:.2f}, 90% coverage {100 * sc['coverage90']:.0f}%"
    ]


def score_probe(spec, idata, probe_paths, *, draws: int = 400, seed: int = 0) -> dict:
    """Score a probe run of the configuration against the posterior (rules in the module docstring)."""
    obs, infos = probe_obs(spec, probe_paths)
    sc = score_rows(idata, obs, draws=draws, seed=seed)
    decision, why = decide(sc)
    return {
        "decision": decision,
        "reasons": why,
        "scores": sc,
        "probes": [{k: v for k, v in i.items() if k != "frame"} for i in infos],
    }
