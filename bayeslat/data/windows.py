"""Observation windows of a reconstruction, and the offset between the client's and the engine's
clocks.

:func:`observation_windows` turns a :class:`~bayeslat.data.reconstruct.Reconstruction` into decode-window
(kind 1) and TTFT (kind 2) rows; :func:`trace_step_windows` does the same from traced steps;
:func:`window_sums` gives the per-regime sums of a window's steps; :func:`estimate_offset` finds the
client-clock offset that makes a reconstruction agree best with the observed windows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bayeslat.data.reconstruct import (
    KIND_STEP,
    KIND_TTFT,
    KIND_WINDOW,
    Reconstruction,
)

# ---------------------------------------------------------------------------------------------
# 3. observation windows
# ---------------------------------------------------------------------------------------------
WINDOW_COLUMNS = ("kind", "request", "y_ms", "k0", "k1", "w0", "w1", "n_steps", "prompt", "queue_depth", "t_us")


def observation_windows(rec: Reconstruction, *, include_warmup: bool = False) -> pd.DataFrame:
    """Decode-window (kind 1) and TTFT (kind 2) rows of a reconstruction (see module docstring).

    Rows touching a step with an unknown duration (``idle_after``) are dropped, except that the
    TTFT row of a request arriving in an idle gap starts at the next step with weight 0 on the
    gap."""
    r = rec.requests
    st = rec.steps
    nK = len(st)
    idle = st["idle_after"].to_numpy()
    idle_cum = np.concatenate([[0], np.cumsum(idle)])
    use = (r["status"] == "ok") & (include_warmup | ~r["warmup"])
    r = r[use]
    kf, kl = r["k_first"].to_numpy(), r["k_last"].to_numpy()
    rows = []
    # decode windows: steps k_first+1 .. k_last
    k0, k1 = kf + 1, np.minimum(kl, nK - 1)
    ok = (k1 >= k0) & (idle_cum[k1] - idle_cum[np.minimum(k0, k1)] == 0)
    dw = pd.DataFrame(
        {
            "kind": KIND_WINDOW,
            "request": r["index"].to_numpy(),
            "y_ms": (r["fin_us"] - r["ft_us"]).to_numpy() / 1e3,
            "k0": k0,
            "k1": k1,
            "w0": 1.0,
            "w1": 1.0,
            "n_steps": (k1 - k0 + 1).astype(float),
            "prompt": r["prompt"].to_numpy(),
            "queue_depth": r["queue_depth"].to_numpy(),
            "t_us": r["ft_us"].to_numpy(),
        }
    )[ok]
    rows.append(dw)
    # TTFT rows follow the simulator's generative model: TTFT = alpha (arrival -> queued, incl.
    # API and streaming overheads) + the wait for the step in flight when the request is queued
    # (expected half a step: weight 0.5 on step k_start - 1) + its prefill steps k_start..k_first.
    # Only requests that arrived with an empty waiting queue: under load, queueing delay is the
    # simulator's job and must not be absorbed by alpha. (Spanning arrival -> first token with
    # steps instead leaves alpha unidentified: y = sum of steps by construction of the step clock.)
    ka = r["k_arrival"].to_numpy()
    ks = r["k_start"].to_numpy()
    waiting = st["waiting_depth"].to_numpy()
    no_queue = (ka >= 0) & (waiting[np.clip(ka, 0, nK - 1)] == 0)
    k1 = np.minimum(kf, nK - 1)
    k0 = np.maximum(ks - 1, 0)
    w0 = np.where(ks >= 1, 0.5, 1.0)
    w1 = np.ones(len(r))
    n_steps = w0 + (k1 - k0)
    ok = no_queue & (ks >= 0) & (k1 >= k0) & (k0 < nK) & (idle_cum[k1] - idle_cum[np.clip(k0, 0, nK)] == 0)
    tw = pd.DataFrame(
        {
            "kind": KIND_TTFT,
            "request": r["index"].to_numpy(),
            "y_ms": (r["ft_us"] - r["arrival_us"]).to_numpy() / 1e3,
            "k0": k0,
            "k1": k1,
            "w0": w0,
            "w1": w1,
            "n_steps": n_steps,
            "prompt": r["prompt"].to_numpy(),
            "queue_depth": r["queue_depth"].to_numpy(),
            "t_us": r["arrival_us"].to_numpy(),
        }
    )[ok]
    rows.append(tw)
    out = pd.concat(rows, ignore_index=True)
    return out[list(WINDOW_COLUMNS)]


def trace_step_windows(
    rec: Reconstruction, trace: pd.DataFrame, offset_us: float, *, max_gap: int = 1, id0: float | None = None, skip_ids=None
) -> pd.DataFrame:
    """Step rows (kind 0) from sampled real step records, mapped onto the reconstruction.

    ``trace``: step.id, step.ts_start_ns (one run). Consecutive sampled records with id gap
    ``d <= max_gap`` give the exact server-clock time of steps id..id+d-1 (``y = dts``;
    ``n_steps = d``; ``max_gap=1`` is the contract's single-step row = ``cycle_time_us``).
    Reconstructed index ``k = step.id - id0`` with ``id0`` the median of ``step.id - K(ts)``
    (estimated if not given). ``skip_ids``: step ids whose one-step pair (gap 1) is left out
    (they have exact rows from step snapshots, see :func:`bayeslat.data.design.exact_step_rows`)."""
    tr = trace.sort_values("step.id")
    ids = tr["step.id"].to_numpy(np.int64)
    ts_us = tr["step.ts_start_ns"].to_numpy(np.float64) / 1e3 - offset_us
    if id0 is None:
        id0 = float(np.median(ids - np.floor(rec.K(ts_us))))
    gap = np.diff(ids)
    y = np.diff(ts_us) / 1e3
    sel = (gap >= 1) & (gap <= max_gap)
    if skip_ids is not None and len(skip_ids):
        sel &= ~((gap == 1) & np.isin(ids[:-1], np.asarray(skip_ids, dtype=np.int64)))
    k0 = ids[:-1][sel] - int(round(id0))
    k1 = k0 + gap[sel] - 1
    nK = len(rec.steps)
    ok = (k0 >= 0) & (k1 < nK)
    idle_cum = np.concatenate([[0], np.cumsum(rec.steps["idle_after"].to_numpy())])
    ok[ok] &= idle_cum[k1[ok] + 1] - idle_cum[k0[ok]] == 0
    return pd.DataFrame(
        {
            "kind": KIND_STEP,
            "request": -1,
            "y_ms": y[sel][ok],
            "k0": k0[ok],
            "k1": k1[ok],
            "w0": 1.0,
            "w1": 1.0,
            "n_steps": gap[sel][ok].astype(float),
            "prompt": 0,
            "queue_depth": 0.0,
            "t_us": ts_us[:-1][sel][ok],
        }
    )[list(WINDOW_COLUMNS)]


def window_sums(values: np.ndarray, k0, k1, w0, w1) -> np.ndarray:
    """Exact weighted sums of per-step rows ``values`` (n_steps, ...) over windows, via cumsums."""
    v = np.asarray(values, dtype=np.float64)
    k0, k1 = np.asarray(k0, np.int64), np.asarray(k1, np.int64)
    w0 = np.asarray(w0, np.float64)
    w1 = np.asarray(w1, np.float64)
    cs = np.concatenate([np.zeros((1,) + v.shape[1:]), np.cumsum(v, axis=0)])
    ex = (slice(None),) + (None,) * (v.ndim - 1)
    full = cs[k1 + 1] - cs[k0]  # weight 1 on k0..k1
    out = full + (w0 - 1.0)[ex] * v[k0] + (w1 - 1.0)[ex] * v[k1]
    same = k0 == k1
    if same.any():  # k0 == k1: weight w0 + w1 - 1
        out[same] = ((w0 + w1 - 1.0)[same])[ex] * v[k0[same]]
    return out


# ---------------------------------------------------------------------------------------------
# 4. clock offset
# ---------------------------------------------------------------------------------------------
def _recon_at(rec: Reconstruction, t_us: np.ndarray):
    k = rec.step_at(t_us)
    k = np.clip(k, 0, len(rec.steps) - 1)
    st = rec.steps
    return (st["n_decode"].to_numpy()[k], st["running_depth"].to_numpy()[k], st["prefill_tokens"].to_numpy()[k] > 0)


def _offset_scores(rec, ts_us, dec, run, pf, offsets):
    sc = np.empty((len(offsets), len(ts_us)))
    scale = max(np.median(dec), 1.0)
    for i, o in enumerate(offsets):
        d, r, p = _recon_at(rec, ts_us - o)
        sc[i] = np.abs(d - dec) / scale + np.abs(r - run) / scale + 0.5 * (p != pf)
    return sc


def estimate_offset(
    rec: Reconstruction,
    trace: pd.DataFrame,
    *,
    coarse_range_s: float = 60.0,
    coarse_step_ms: float = 50.0,
    fine_range_ms: float = 200.0,
    fine_step_ms: float = 1.0,
    n_boot: int = 100,
    seed: int = 0,
    max_points: int = 4000,
) -> dict:
    """Clock offset (us) with ``t_client = ts_ns / 1000 - offset``.

    Start: the first traced step vs the reconstruction's step of the same id-rank. Coarse grid
    (+-``coarse_range_s``) then fine grid (+-``fine_range_ms``) minimising the mean mismatch of
    decode count, running depth (relative) and prefill presence at the sampled steps. Returns
    offset_us, sd_us (bootstrap over sampled steps), score, n."""
    tr = trace.sort_values("step.id")
    rng = np.random.default_rng(seed)
    if len(tr) > max_points:
        tr = tr.iloc[np.sort(rng.choice(len(tr), max_points, replace=False))]
    ts = tr["step.ts_start_ns"].to_numpy(np.float64) / 1e3
    dec = tr["batch.decode_tokens"].to_numpy(np.float64)
    run = tr["queue.running_depth"].to_numpy(np.float64)
    pf = tr["batch.prefill_tokens"].to_numpy(np.float64) > 0
    ids = tr["step.id"].to_numpy(np.float64)
    t_rec = rec.steps["t_start_us"].to_numpy()
    # initial guess: median over sampled steps of ts - t_rec[id] (step ids start near 0)
    kk = np.clip(ids.astype(np.int64), 0, len(t_rec) - 1)
    o0 = float(np.median(ts - t_rec[kk]))
    coarse = o0 + np.arange(-coarse_range_s * 1e6, coarse_range_s * 1e6 + 1, coarse_step_ms * 1e3)
    sc = _offset_scores(rec, ts, dec, run, pf, coarse).mean(axis=1)
    oc = coarse[int(np.argmin(sc))]
    fine = oc + np.arange(-fine_range_ms * 1e3, fine_range_ms * 1e3 + 1, fine_step_ms * 1e3)
    S = _offset_scores(rec, ts, dec, run, pf, fine)
    m = S.mean(axis=1)
    best = fine[int(np.argmin(m))]
    boots = np.empty(n_boot)
    for b in range(n_boot):
        idx = rng.integers(0, S.shape[1], S.shape[1])
        boots[b] = fine[int(np.argmin(S[:, idx].mean(axis=1)))]
    return {
        "offset_us": float(best),
        "sd_us": float(np.std(boots)),
        "score": float(m.min()),
        "coarse_offset_us": float(oc),
        "initial_offset_us": o0,
        "n": int(len(ts)),
    }
