"""How far a workload lies from a fit's training rows, and the step-time discrepancy that grows with it.

- :func:`workload_distance`: the fraction of a workload's simulated steps whose scaled features lie
  outside the training runs' 0.5-99.5% range, per feature (what ``bayeslat check`` reports);
  :func:`workload_extrapolation`: the same for the steps' batch shapes (requests, tokens,
  context), summarised as one distance ``g`` in [0, 1], the largest of those fractions.
- :func:`step_discrepancy`: one log step-time factor per posterior draw, ``tau z`` with
  ``tau^2 = tau0^2 + tau1^2 g^2``: ``tau0`` the step-time error of a workload the fit has not seen
  whose steps lie inside the training range, ``tau1`` the growth to a workload whose every step
  lies outside it. Their joint posterior comes from held-out workloads (leave-one-workload-out
  folds, :mod:`bayeslat.evaluate.discrepancy`) and is stored in the fit's attrs
  (``workload_discrepancy``); :func:`widen` applies the factors to a prediction's draws.

The factor multiplies the whole step time (every beta coefficient) of its draw before the workload
is simulated (for the intervals; the point, the median across draws, comes from the same draws
without it), so it propagates through the queue: near saturation, where a few percent of step time
decide between a short and a runaway queue, the draws land on both branches and the interval spans
them instead of a point on one side. The arrival-to-queue terms (alpha) are not widened: the
held-out workloads' misses are in the step time (ITL, and TTFT through the queue).
"""

from __future__ import annotations

import functools
import json
import math

import numpy as np

from bayeslat import features as F
from bayeslat import model as M
from bayeslat.config import load_hardware, release_distance, vllm_release
from bayeslat.config.hardware import hardware_key
from bayeslat.data import datasets
from bayeslat.data import workload as W
from bayeslat.model.hardware_steps import HW_GROUP, version_shift
from bayeslat.model.training import _is_bundled, _training, _training_runs, trained_vllm_versions
from bayeslat.simulate.engine import simulate
from bayeslat.simulate.rundeployment import deployment

#: the fit's attrs key of the workload discrepancy's calibration (:mod:`bayeslat.evaluate.discrepancy`)
WORKLOAD_DISCREPANCY_ATTR = "workload_discrepancy"
#: coefficient draws whose medians the distance is read under, in the calibration and in a prediction
#: alike (near saturation the simulated batch shapes follow those medians)
REFERENCE_DRAWS = 100


@functools.lru_cache(maxsize=64)
def _run_deployment(run: str):
    info = datasets.run_info(run)
    return deployment(info["model_spec"], info["hardware_spec"], info["server"], info["run"])


def training_step_features(idata) -> np.ndarray:
    """Per-step average scaled features ``X.sum(regime) / n_steps`` of the training rows that span
    at least one step (n_rows, N_BETA)."""
    cd = idata.constant_data
    X = cd["X"].values.sum(axis=1)
    ns = cd["n_steps"].values
    m = ns >= 1.0
    return X[m] / ns[m, None]


def smoothing_steps(idata) -> int:
    """Steps a training row typically spans (median ``n_steps`` of the decode windows; 1 if none)."""
    cd = idata.constant_data
    ns = cd["n_steps"].values[cd["kind"].values == 1]
    return int(max(1, np.median(ns))) if len(ns) else 1


def smooth_steps(step_feats: np.ndarray, k: int) -> np.ndarray:
    """Moving averages over ``k`` consecutive steps (the training rows are per-step averages over
    windows of steps, and the lifecycle reconstruction spreads each prefill over its steps: single
    simulated steps are compared at the same time scale)."""
    if k <= 1 or len(step_feats) <= k:
        return step_feats if k <= 1 or not len(step_feats) else step_feats.mean(axis=0, keepdims=True)
    c = np.concatenate([np.zeros((1, step_feats.shape[1])), np.cumsum(step_feats, axis=0)])
    return (c[k:] - c[:-k]) / k


_REF_CACHE: dict = {}


def _fingerprint(idata) -> str:
    """The fit's data hash and a hash of its posterior means: two fits of the same rows with
    different posteriors (priors, sampler, an update) simulate different reference steps."""
    import hashlib

    post = idata.posterior
    h = hashlib.sha256()
    for v in sorted(post.data_vars)[:8]:
        h.update(np.ascontiguousarray(post[v].mean(("chain", "draw")).values, dtype=np.float64).tobytes())
    return f"{idata.attrs.get('data_hash', '')}:{h.hexdigest()[:16]}"


def _simulated_reference(idata, max_requests: int, seed: int):
    """(features, stats) of every step of the fit's training runs simulated with their group's
    posterior-mean coefficients, cached per fit; None when a training run is not bundled."""
    runs = _training_runs(idata)
    if not runs or not all(_is_bundled(r) for r in runs):
        return None
    key = (_fingerprint(idata), tuple(runs), max_requests, seed)
    if key in _REF_CACHE:
        return _REF_CACHE[key]
    feats, stats = [], []
    for run in runs:
        dep = _run_deployment(run)
        info = datasets.run_info(run)
        wl = W.from_run(info["run"])
        wl = wl.head(max_requests) if len(wl) > max_requests else wl
        cd = M.coefficient_draws(idata, dep.hardware, dep.model_class, n=100, seed=seed, new_run=False)
        res = simulate(wl, dep.ctx, dep.server, cd.beta.mean(axis=0), cd.alpha.mean(axis=0), seed=seed, record_steps=True)
        st = res.trace[list(F.STATS)].to_numpy(np.float64)
        fe, _ = F.step_features(st, dep.ctx)
        feats.append(fe)
        stats.append(st)
    if len(_REF_CACHE) >= 16:  # a few fits per process; the oldest goes first
        _REF_CACHE.pop(next(iter(_REF_CACHE)))
    _REF_CACHE[key] = (np.concatenate(feats), np.concatenate(stats))
    return _REF_CACHE[key]


def training_reference_steps(idata, *, max_requests: int = 3000, seed: int = 0) -> tuple[np.ndarray | None, str]:
    """Per-step scaled features of the training runs *simulated* with their group's posterior-mean
    coefficients (replayed arrivals, first ``max_requests`` requests): the workload-level
    reference, produced by the same simulator as the checked configuration's steps. Falls back to
    the training rows' per-step averages (``X.sum(regime) / n_steps``, smoothed over the steps a
    window spans) when a training run is not a bundled run (its arrivals are not stored with the
    fit, and a reference of the other runs alone would miss its steps). Returns (features, source)."""
    ref = _simulated_reference(idata, max_requests, seed)
    return (None, "training rows") if ref is None else (ref[0], "simulated training runs")


def training_reference_stats(idata, *, max_requests: int = 3000, seed: int = 0) -> np.ndarray | None:
    """The batch shapes (``features.STATS`` per step: requests, tokens, context) of the same
    simulated training steps as :func:`training_reference_steps`; None without bundled runs."""
    ref = _simulated_reference(idata, max_requests, seed)
    return None if ref is None else ref[1]


def stats_distance(stats: np.ndarray, ref: np.ndarray) -> dict:
    """{stat: fraction of ``stats``' steps outside ``ref``'s 0.5-99.5% range} per batch-shape
    statistic (a statistic zero in every reference step: the fraction of steps where it is not)."""
    return {name: sum(_outside(stats[:, k], ref[:, k])[2:]) for k, name in enumerate(F.STATS)}


def _outside(v: np.ndarray, t: np.ndarray) -> tuple[float, float, float, float]:
    """(lo, hi, share of ``v`` below lo, share above hi): ``t``'s 0.5% / 99.5% quantiles and how
    much of ``v`` lies beyond them (a relative 1e-9 of slack, so a value equal to the bound is in)."""
    lo, hi = np.quantile(t, 0.005), np.quantile(t, 0.995)
    if not len(v):
        return float(lo), float(hi), 0.0, 0.0
    return float(lo), float(hi), float(np.mean(v < lo * (1 - 1e-9))), float(np.mean(v > hi * (1 + 1e-9)))


def workload_distance(step_feats: np.ndarray, idata) -> dict:
    """Workload-level distance: fraction of the simulated steps' scaled features outside the
    reference's 0.5-99.5% range and the largest simulated / largest reference value. The reference
    is :func:`training_reference_steps` (the training runs simulated the same way); without bundled
    training runs, the training rows' per-step averages, with the simulated steps smoothed over the
    steps a training window spans. ``never_trained``: the feature is active in simulated steps but
    zero in the whole reference (``max_ratio`` is then capped at 1e6: the ratio is infinite)."""
    tr, source = training_reference_steps(idata)
    if tr is None:
        tr = training_step_features(idata)
        step_feats = smooth_steps(step_feats, smoothing_steps(idata))
    out = {"_reference": source}
    for f, fname in enumerate(F.BETA_NAMES):
        v = step_feats[:, f]
        t = tr[:, f] if len(tr) else np.zeros(1)
        lo, hi, below, above = _outside(v, t)
        tmax = float(t.max())
        vmax = float(v.max()) if len(v) else 0.0
        ratio = vmax / tmax if tmax > 0 else (math.inf if vmax > 0 else 0.0)
        out[fname] = {
            "frac_outside": below + above,
            "frac_below": below,
            "frac_above": above,
            "train_q005": float(lo),
            "train_q995": float(hi),
            "train_max": tmax,
            "sim_max": vmax,
            "sim_q50": float(np.median(v)) if len(v) else 0.0,
            "max_ratio": float(min(ratio, 1e6)),
            "never_trained": bool(tmax <= 0 and vmax > 0),
        }
    return out


_HW_CACHE: dict = {}


def _training_hardware(idata) -> np.ndarray | None:
    """The hardware constants (peak FLOP/s, HBM, link and PCIe bandwidth: the first four entries
    of the feature context) of the fit's training deployments, one row per distinct GPU (None:
    no training spec is known)."""
    key = _fingerprint(idata)
    if key not in _HW_CACHE:
        train = _training(idata)[0]
        rows = [np.asarray(v.ctx.to_array(), dtype=float)[:4] for v in train.values()]
        _HW_CACHE[key] = np.unique(np.round(np.array(rows), 6), axis=0) if rows else None
    return _HW_CACHE[key]


def workload_extrapolation(workload, ctx, server, idata, beta, alpha, *, seed: int = 0) -> dict:
    """How far ``workload`` lies from the fit's training runs: the workload simulated once under
    (``beta``, ``alpha``) (e.g. the draws' medians), and ``g``, the largest fraction of its steps
    outside the training steps' 0.5-99.5% range over the measures compared. Returns
    ``{"distance": g, "feature": the measure of the largest fraction, "per_feature": {measure:
    fraction}, "basis"}``: 0 for a workload of the training runs' shape, 1 when every step lies
    outside in some measure.

    The measures are the steps' batch shapes (``features.STATS``: requests, prompt tokens,
    context), compared with the training runs simulated the same way (``basis`` "batch shapes"):
    what the workload and its load make of a step, not the model or GPU that runs it. A new model
    or GPU moves the step features (weights per step, time at peak) for every step; that part of
    the extrapolation is the deployment spread's and the hardware level's, each calibrated on its
    own held-out models and GPUs, and is not counted twice. A fit whose training runs are not
    bundled (no arrivals to simulate) compares the scaled step features with its training rows
    instead (``basis`` "step features"), computed with a training GPU's constants on a GPU the fit
    has no step rows of."""
    res = simulate(workload, ctx, server, np.asarray(beta), np.asarray(alpha), seed=seed, record_steps=True)
    stats = res.trace[list(F.STATS)].to_numpy(np.float64)
    ref = training_reference_stats(idata)
    if ref is not None:
        per, basis = stats_distance(stats, ref), "batch shapes"
    else:
        arr = np.array(ctx.to_array() if isinstance(ctx, F.FeatureContext) else ctx, dtype=float)
        hw = _training_hardware(idata)
        if hw is not None and not np.any(np.all(np.isclose(hw, np.round(arr[:4], 6), rtol=1e-6), axis=1)):
            arr[:4] = np.median(hw, axis=0)
        feats, _ = F.step_features(stats, arr)
        wd = workload_distance(feats, idata)
        per, basis = {k: float(v["frac_outside"]) for k, v in wd.items() if not k.startswith("_")}, "step features"
    top = max(per, key=per.get) if per else ""
    return {"distance": float(per.get(top, 0.0)), "feature": top, "per_feature": per, "basis": basis}


def discrepancy_calibration(idata) -> dict | None:
    """The fit's workload-discrepancy calibration (attrs ``workload_discrepancy``; None if it has none)."""
    raw = (getattr(idata, "attrs", None) or {}).get(WORKLOAD_DISCREPANCY_ATTR)
    return json.loads(raw) if raw else None


def step_discrepancy(idata, distance: float, n: int, *, seed: int = 0) -> np.ndarray | None:
    """``n`` log step-time factors for a workload at ``distance`` g from the training rows: draw
    ``i`` takes a (tau0, tau1) pair of the calibration's posterior and a standard normal ``z`` (in
    antithetic pairs ``z``, ``-z``), ``tau z`` with ``tau = sqrt(tau0^2 + tau1^2 g^2)``. None when the fit has no calibration."""
    cal = discrepancy_calibration(idata)
    if not cal:
        return None
    t0, t1 = np.asarray(cal["tau0"], dtype=float), np.asarray(cal["tau1"], dtype=float)
    rng = np.random.default_rng([int(seed), 7919])
    h = (int(n) + 1) // 2
    g = float(min(max(distance, 0.0), 1.0))
    # antithetic pairs (tau z, -tau z), one (tau0, tau1) pair each: every sample of factors is
    # symmetric about 0, which steadies its 5% / 95% quantiles at 20-40 draws
    j = rng.integers(0, len(t0), size=h)
    return _antithetic(np.sqrt(t0[j] ** 2 + (t1[j] * g) ** 2), rng, n)


def _antithetic(scale, rng, n: int) -> np.ndarray:
    """``n`` factors ``scale z`` in antithetic pairs ``(scale z, -scale z)``, ``z`` standard normal
    (``scale``: a number or one per pair)."""
    d = scale * rng.standard_normal((int(n) + 1) // 2)
    return np.concatenate([d, -d])[: int(n)]


def widen(draws, delta):
    """Give ``draws`` (CoefDraws) one log step-time factor per draw (:func:`step_discrepancy`),
    as ``draws.step_log_factor``: :func:`bayeslat.simulate.posterior_predictive` simulates each
    draw with its step time (every beta coefficient) scaled by ``exp(delta)`` for the intervals,
    and without it for the point. Returns ``draws``."""
    d = np.asarray(delta, dtype=float)
    if d.shape != (draws.beta.shape[0],):
        raise ValueError(f"one step factor per draw: {draws.beta.shape[0]} draws, {d.shape} factors")
    draws.step_log_factor = d
    return draws


def widen_for_workload(draws, idata, workload, ctx, server, *, seed: int = 0, reference=None) -> dict | None:
    """Apply the fit's workload discrepancy to ``draws`` for ``workload`` (a workload the fit was not
    trained on): its distance (:func:`workload_extrapolation`, simulated under the medians of
    ``reference``, draws of the same group; default ``draws`` themselves. The calibration reads
    the distance under the medians of :data:`REFERENCE_DRAWS` draws (``bayeslat.evaluate.discrepancy``):
    a prediction of a few draws passes as many as a reference, so that near saturation both read the same g),
    then :func:`widen` with :func:`step_discrepancy`. Returns ``{"distance", "feature", "tau"
    (the median tau of the draws' pairs)}``, or None (draws unchanged) when the fit has no
    calibration."""
    cal = discrepancy_calibration(idata)
    if not cal:
        return None
    ref = reference if reference is not None else draws
    ext = workload_extrapolation(
        workload, ctx, server, idata, np.median(ref.beta, axis=0), np.median(ref.alpha, axis=0), seed=seed
    )
    g = ext["distance"]
    widen(draws, step_discrepancy(idata, g, draws.beta.shape[0], seed=seed))
    tau = np.sqrt(np.asarray(cal["tau0"]) ** 2 + (np.asarray(cal["tau1"]) * g) ** 2)
    return {"distance": g, "feature": ext["feature"], "tau": float(np.median(tau)), "basis": ext["basis"]}


def version_discrepancy(idata, version: str | None, hardware: str | None = None) -> dict | None:
    """The step-time discrepancy of serving on vLLM ``version`` with a fit trained on other releases.

    The fit's training releases come from its training specs
    (:func:`bayeslat.model.training.trained_vllm_versions`); the distance is the number of minor
    releases to the nearest (:func:`bayeslat.config.release_distance`; patch releases of one line
    are distance 0). Its size comes from the fit's hardware level: the kernel timings measured
    under two vLLM releases give the change of a decode step's kernel time per minor release
    (:func:`bayeslat.model.hardware_steps.version_shift`, on ``hardware`` when it is a GPU of the
    level, else the fit's reference GPU), and the step-time factor is ``N(0, sd_release^2 x
    distance)``: a random walk over releases. Kernels are what the tables measure; a release's
    changes to the scheduler and the host side are not in them, so this sd is a floor.

    Returns None when ``version`` is None (the spec names none: the training release is assumed),
    else ``{"version", "trained", "unknown_runs", "distance", "sd", "per_release_sd", "basis"}``;
    ``distance`` is None when no training run's release is known, ``sd`` None when the distance
    is unknown or the fit has no hardware level with two releases to size it."""
    if version is None:
        return None
    version = vllm_release(version)
    trained, unknown = trained_vllm_versions(idata)
    out = {"version": version, "trained": trained, "unknown_runs": unknown, "distance": None, "sd": None}
    out |= {"per_release_sd": None, "basis": None}
    if not trained:
        return out
    out["distance"] = min(release_distance(version, t) for t in trained)
    if out["distance"] == 0:
        out["sd"] = 0.0
        return out
    if HW_GROUP not in idata.groups():
        return out
    ds = idata[HW_GROUP]
    gpus = [str(g) for g in ds.coords["gpu"].values]
    gpu = hardware if hardware in gpus else M.attr_json(idata, HW_GROUP, {}).get("reference")
    if gpu not in gpus:
        return out
    shift = version_shift(ds, gpu, load_hardware(hardware_key(gpu)))
    if shift is None:
        return out
    out["per_release_sd"] = shift["per_release_sd"]
    out["sd"] = shift["per_release_sd"] * math.sqrt(out["distance"])
    out["basis"] = shift
    return out


def version_step_factors(sd: float, n: int, *, seed: int = 0) -> np.ndarray:
    """``n`` log step-time factors ``sd z`` in antithetic pairs (as :func:`step_discrepancy`)."""
    return _antithetic(float(sd), np.random.default_rng([int(seed), 104729]), n)


def widen_for_version(draws, info: dict | None, *, seed: int = 0):
    """Add the vLLM version discrepancy ``info`` (a :func:`version_discrepancy` record) to ``draws``'
    log step-time factors (``draws.step_log_factor``, after :func:`widen_for_workload` if the fit has
    a workload discrepancy: the two are independent, so their log factors add). ``draws`` unchanged
    when ``info`` is None (no version named) or its ``sd`` is 0 or unknown. Returns ``draws``."""
    if info is None or not info["sd"]:
        return draws
    d = version_step_factors(info["sd"], draws.beta.shape[0], seed=seed)
    prev = getattr(draws, "step_log_factor", None)
    return widen(draws, d if prev is None else np.asarray(prev, dtype=float) + d)


def version_note(info: dict) -> str:
    """One sentence on a :func:`version_discrepancy` record, for ``check`` reasons and ``predict`` notes."""
    trained = ", ".join(info["trained"]) or "unknown"
    if info["distance"] is None:
        return (
            f"vLLM {info['version']} was asked for, but no training run's vLLM release is known: the version "
            "change is not in the intervals (set vllm_version in the training runs' server configs)"
        )
    if info["distance"] == 0:
        return f"vLLM {info['version']} is the release line of the training runs ({trained})"
    if info["sd"] is None:
        return (
            f"vLLM {info['version']} is {info['distance']} minor releases from the training runs' ({trained}); "
            "the fit has no hardware level with two releases to size the change, so the intervals do not carry it"
        )
    return (
        f"vLLM {info['version']} is {info['distance']} minor release{'s' if info['distance'] != 1 else ''} from the "
        f"training runs' ({trained}): the draws carry a step-time discrepancy of sd {info['sd']:.3f} (log scale; "
        f"{info['per_release_sd']:.3f} per release from the kernels timed under vLLM "
        f"{' and '.join(info['basis']['versions'])}; host-side changes are not in it)"
    )
