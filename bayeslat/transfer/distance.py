"""How far a configuration lies from a fit's training deployments: configuration-level
distances of canonical batches' features to the training deployments' (:func:`config_distance`)
and workload-level distances of simulated steps' features to the training runs'
(:func:`workload_distance`).
"""

from __future__ import annotations

import math

import numpy as np

from bayeslat import features as F
from bayeslat.simulate.extrapolation import (
    smooth_steps,
    smoothing_steps,
    training_reference_steps,
    training_step_features,
    workload_distance,
)

NEVER_TRAINED = 99.0  # log-distance reported for a feature active here but zero in every training deployment


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


__all__ = [
    "NEVER_TRAINED",
    "canonical_batches",
    "config_distance",
    "smooth_steps",
    "smoothing_steps",
    "training_reference_steps",
    "training_step_features",
    "workload_distance",
]
