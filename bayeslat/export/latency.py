"""Reference simulator-side latency model, reading a bayeslat json/yaml export.

It implements the five methods a BLIS latency model provides, with posterior-mean coefficients
of one group. Times are milliseconds (bayeslat's unit; multiply by 1000 for BLIS's microseconds).

- ``step_time(batch)``: the step's batch statistics -> raw features (numba kernel) -> regime ->
  ``sum_f raw_f / scale_f * beta[regime, f]``. Output-token processing, scheduling and the CUDA
  graph launch are inside the fitted step time (request_overhead, step_overhead).
- ``queueing_time(request)``: alpha, the arrival-to-wait-queue delay: ``A . alpha``.
- ``output_token_processing_time()``: 0 -- absorbed in step_time (request_overhead).
- ``scheduling_processing_time()``: 0 -- absorbed in step_time (step_overhead).
- ``preemption_processing_time()``: 0 -- a preempted request is recomputed, which appears as
  prefill tokens of later steps; the n_preempted statistic has no feature.
"""

from __future__ import annotations

import numba
import numpy as np

from bayeslat import features as F
from bayeslat.export.coefficients import read_export


@numba.njit(cache=True)
def _batch_stats_kernel(new_tokens, context, is_prefill, out):
    for k in range(out.shape[0]):
        out[k] = 0.0
    for i in range(new_tokens.shape[0]):
        t = new_tokens[i]
        c = context[i]
        if is_prefill[i]:
            out[0] += 1.0
            out[2] += t
            out[3] += t * (c + (t + 1.0) / 2.0)
            out[4] += c + t
        else:
            out[1] += 1.0
            out[5] += c + 1.0


@numba.njit(cache=True)
def _step_time_kernel(stats, ctx, beta_raw, raw):
    F.step_features_kernel(stats, ctx, raw)
    r = F.regime_kernel(raw)
    s = 0.0
    for f in range(raw.shape[0]):
        s += raw[f] * beta_raw[r, f]
    return s


class LatencyModel:
    """Posterior-mean latency model of one (hardware, model class) group and one deployment."""

    def __init__(self, beta: np.ndarray, alpha: np.ndarray, ctx: F.FeatureContext, meta: dict | None = None):
        self.beta = np.asarray(beta, dtype=np.float64)  # (R, F) ms per scaled unit
        self.alpha = np.asarray(alpha, dtype=np.float64)  # (A,) ms per scaled unit
        if self.beta.shape != (len(F.REGIMES), F.N_BETA) or self.alpha.shape != (F.N_ALPHA,):
            raise ValueError("beta must be (N_REGIMES, N_BETA) and alpha (N_ALPHA,)")
        self.ctx = ctx
        self.meta = meta or {}
        self._ctx = np.ascontiguousarray(ctx.to_array() if isinstance(ctx, F.FeatureContext) else ctx, dtype=np.float64)
        self._beta_raw = np.ascontiguousarray(self.beta / F.BETA_SCALE)  # ms per raw unit
        self._alpha_raw = self.alpha / F.ALPHA_SCALE
        self._raw = np.empty(F.N_BETA)
        self._stats = np.empty(F.N_STATS)
        # warm the numba kernels
        self.step_time(np.zeros(F.N_STATS))

    @classmethod
    def from_dict(cls, d: dict, ctx: F.FeatureContext) -> LatencyModel:
        beta = np.array([[d["beta"][reg][f]["mean"] for f in F.BETA_NAMES] for reg in F.REGIMES])
        alpha = np.array([d["alpha"][a]["mean"] for a in F.ALPHA_NAMES])
        return cls(beta, alpha, ctx, meta={"group": d.get("group"), "spec_version": d.get("spec_version")})

    @classmethod
    def from_file(cls, path, ctx: F.FeatureContext) -> LatencyModel:
        return cls.from_dict(read_export(path), ctx)

    def step_time(self, batch) -> float:
        """Step time (ms) of a batch: a STATS vector, or (new_tokens, context_before, is_prefill)
        arrays / a dict with those keys."""
        if isinstance(batch, dict):
            batch = (batch["new_tokens"], batch["context_before"], batch["is_prefill"])
        if isinstance(batch, tuple):
            t, c, p = batch
            _batch_stats_kernel(
                np.asarray(t, dtype=np.float64), np.asarray(c, dtype=np.float64), np.asarray(p, dtype=np.bool_), self._stats
            )
            stats = self._stats
        else:
            stats = np.asarray(batch, dtype=np.float64)
        return _step_time_kernel(stats, self._ctx, self._beta_raw, self._raw)

    def queueing_time(self, request) -> float:
        """Arrival-to-wait-queue delay (ms) of a request (dict / object with prompt_tokens and
        queue_depth, or a (prompt_tokens, queue_depth) pair)."""
        if isinstance(request, dict):
            pt, qd = request["prompt_tokens"], request.get("queue_depth", 0.0)
        elif isinstance(request, tuple):
            pt, qd = request
        else:
            pt, qd = request.prompt_tokens, getattr(request, "queue_depth", 0.0)
        a = self._alpha_raw
        return float(a[0] + a[1] * pt + a[2] * qd + a[3] * F.multiproc(self._ctx))

    def output_token_processing_time(self) -> float:
        """0: output processing is part of the fitted step time (request_overhead)."""
        return 0.0

    def scheduling_processing_time(self) -> float:
        """0: scheduling is part of the fitted step time (step_overhead)."""
        return 0.0

    def preemption_processing_time(self) -> float:
        """0: recompute after preemption appears as prefill tokens of later steps."""
        return 0.0
