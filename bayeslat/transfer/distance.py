"""How far a configuration lies from a fit's training deployments: configuration-level
distances of canonical batches' features to the training deployments' (:func:`config_distance`)
and workload-level distances of simulated steps' features to the training runs'
(:func:`workload_distance`).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from bayeslat import features as F
from bayeslat import model as M
from bayeslat import simulate
from bayeslat.data import datasets
from bayeslat.data import workload as W
from bayeslat.model.training import _is_bundled, _training_runs
from bayeslat.simulate.replay import deployment

NEVER_TRAINED = 99.0  # log-distance reported for a feature active here but zero in every training deployment


@functools.lru_cache(maxsize=64)
def _run_deployment(run: str):
    info = datasets.run_info(run)
    return deployment(info["model_spec"], info["hardware_spec"], info["server"], info["run"])


def canonical_batches(max_model_len: int) -> dict:
    """{name: STATS} of fixed batches: decodes at 1k / 4k context, a 2048-token prefill chunk, and
    a decode / prefill at the configuration's ``max_model_len``."""
    L = int(max_model_len or 4096)
    dec = lambda n, c: F.batch_stats(np.ones(n), np.full(n, float(c)), np.zeros(n, bool))  # noqa: E731
    return {
        "decode 32 @ 1k": dec(32, 1024),
        "prefill 2048 chunk": F.batch_stats([2048.0], [0.0], [True]),
        "decode 128 @ 4k": dec(128, 4096),
        "decode 8 @ max_model_len": dec(8, max(L - 1, 1)),
        "prefill 2048 @ max_model_len": F.batch_stats([2048.0], [float(max(L - 2048, 0))], [True]),
    }


def _canonical_raw(ctx, max_model_len):
    cb = canonical_batches(max_model_len)
    raw, reg = F.step_features(np.array(list(cb.values())), ctx, scaled=False)
    return list(cb), raw, reg


def config_distance(ctx, max_model_len: int, train: dict) -> dict:
    """Configuration-level distance of a deployment's canonical-batch raw features to those of the
    training deployments (``train``: {name: (ctx, max_model_len, ...)}, e.g.
    :func:`training_deployments`)."""
    names, raw, _ = _canonical_raw(ctx, max_model_len)
    if not train:
        return {"per_feature": {}, "joint": None, "training_deployments": 0}
    T = np.stack([_canonical_raw(v[0], v[1])[1] for v in train.values()])  # (n_dep, B, F)
    lo, hi = T.min(axis=0), T.max(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(raw > hi, np.log(raw / hi), 0.0)
        d = np.where((raw > 0) & (raw < lo), np.log(lo / raw), d)
    d = np.where((raw > 0) & (hi <= 0), NEVER_TRAINED, d)
    d = np.nan_to_num(d, nan=0.0, posinf=NEVER_TRAINED)
    per = {}
    for f, fname in enumerate(F.BETA_NAMES):
        b = int(np.argmax(d[:, f]))
        per[fname] = {
            "log_distance": float(d[b, f]),
            "ratio": float(math.exp(min(d[b, f], 50.0))),
            "batch": names[b],
            "value": float(raw[b, f]),
            "train_min": float(lo[b, f]),
            "train_max": float(hi[b, f]),
            "direction": "above" if raw[b, f] > hi[b, f] else ("below" if d[b, f] > 0 else "inside"),
            "never_trained": bool(d[b, f] >= NEVER_TRAINED),
        }
    # joint: standardized distance in log-feature space to the nearest training deployment
    pos = np.concatenate([T.reshape(-1), raw.reshape(-1)])
    eps = np.zeros(F.N_BETA)
    for f in range(F.N_BETA):
        v = np.concatenate([T[:, :, f].ravel(), raw[:, f]])
        v = v[v > 0]
        eps[f] = 1e-3 * (np.median(v) if len(v) else 1.0)
    lt = np.log(T + eps)
    lx = np.log(raw + eps)
    sd = np.maximum(lt.std(axis=0), 0.25) if len(train) > 1 else np.full(lx.shape, 0.25)
    dist = np.sqrt((((lx[None] - lt) / sd) ** 2).mean(axis=(1, 2)))
    k = int(np.argmin(dist))
    del pos
    return {
        "per_feature": per,
        "batches": names,
        "joint": {"nearest": list(train)[k], "distance": float(dist[k]), "distances": {n: float(v) for n, v in zip(train, dist)}},
        "training_deployments": len(train),
    }


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


def training_reference_steps(idata, *, max_requests: int = 3000, seed: int = 0) -> tuple[np.ndarray | None, str]:
    """Per-step scaled features of the training runs *simulated* with their group's posterior-mean
    coefficients (replayed arrivals, first ``max_requests`` requests): the workload-level
    reference, produced by the same simulator as the checked configuration's steps. Falls back to
    the training rows' per-step averages (``X.sum(regime) / n_steps``, smoothed over the steps a
    window spans) when a training run is not a bundled run (its arrivals are not stored with the
    fit, and a reference of the other runs alone would miss its steps). Returns (features, source)."""
    runs = _training_runs(idata)
    if not runs or not all(_is_bundled(r) for r in runs):
        return None, "training rows"
    key = (idata.attrs.get("data_hash", id(idata)), tuple(runs), max_requests)
    if key in _REF_CACHE:
        return _REF_CACHE[key], "simulated training runs"
    parts = []
    for run in runs:
        dep = _run_deployment(run)
        info = datasets.run_info(run)
        wl = W.from_run(info["run"])
        wl = wl.head(max_requests) if len(wl) > max_requests else wl
        cd = M.coefficient_draws(idata, dep.hardware, dep.model_class, n=100, seed=seed, new_run=False)
        res = simulate.simulate(
            wl, dep.ctx, dep.server, cd.beta.mean(axis=0), cd.alpha.mean(axis=0), seed=seed, record_steps=True
        )
        fe, _ = F.step_features(res.trace[list(F.STATS)].to_numpy(np.float64), dep.ctx)
        parts.append(fe)
    ref = np.concatenate(parts)
    _REF_CACHE[key] = ref
    return ref, "simulated training runs"


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
        lo, hi = np.quantile(t, 0.005), np.quantile(t, 0.995)
        tmax = float(t.max())
        below = float(np.mean(v < lo * (1 - 1e-9))) if len(v) else 0.0
        above = float(np.mean(v > hi * (1 + 1e-9))) if len(v) else 0.0
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
