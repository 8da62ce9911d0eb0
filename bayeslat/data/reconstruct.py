"""Tables -> per-step batch statistics and observation windows.

Two paths:

1. **Exact traces** (:func:`from_step_requests`): per-step, per-request snapshots
   (``step_requests``) plus step records (``steps``) give every step's ``STATS`` vector via
   :func:`bayeslat.features.batch_stats` and, where two consecutive steps were traced, the
   observed step time.

2. **Lifecycle only** (:func:`reconstruct_lifecycle`): per-request arrival, TTFT, E2E, prompt
   and (exact) output tokens. The step sequence is rebuilt as follows.

   *Step clock.* Let K(t) be the number of scheduler steps started by time t (client clock).
   A successful request r emits its first token at the end of one step and then exactly one token
   per step, so ``K(fin_r) - K(ft_r) = n_r - 1`` (ft = arrival + TTFT, fin = arrival + E2E). With
   thousands of overlapping decode windows the step *rate* rho(t) = dK/dt on a grid of
   ``bin_us`` bins is the regularised least-squares solution of ``A rho = n - 1``
   (``A[r, b]`` = fraction of bin b inside r's window; rows weighted by 1/sqrt(n_r - 1);
   second-difference smoothing; rate fixed to 0 in bins where nothing is in flight;
   negatives clipped; scipy.sparse ``lsqr``). Step k starts at ``t_k = K^{-1}(k)``.

   *Index assignment.* Request r's last prefill chunk runs in step ``k_first`` (its first token
   is emitted at the end of it, i.e. ``ft ~ t_{k_first+1}``); its n-1 decode steps are
   ``k_first+1 .. k_last = k_first + n - 1`` (exact by construction). ``k_first`` averages both
   anchors: ``round((K(ft) + K(fin) - (n - 1)) / 2) - 1``.

   *Batch composition of step k.* Decodes: requests with ``k_first < k <= k_last``, context
   before the step = prompt + (k - k_first - 1). Prefill: the uncached part u_r of the prompt is
   computed in chunks ending at ``k_first``; the scheduler is decode-first with a token budget
   (``max_num_batched_tokens``) so the chunks are allocated backwards from ``k_first`` into the
   budget left after that step's decodes and other prefills (FCFS by ``k_first``), never before
   the first step starting after arrival (overflow is put into ``k_first`` and counted).

   *Prefix cache* (``prefix_cache``): the shared_prefix workloads reuse a few dozen distinct
   prompts (system prompt + per-user question; inference-perf replays them). ``"repeat"``
   (default): the first request with a given prompt length computes its whole prompt, later
   ones hit the cache for ``floor((p - 1) / block) * block`` tokens (vLLM's full-block hit, at
   least one token recomputed); eviction is ignored (KV capacity >> the distinct prompts).
   ``"system"``: only ``system_prompt_len`` (block-aligned) is cached after the first request.
   ``"none"``: nothing cached.

   *Queues.* Waiting at step k: arrived (``t_k >= arrival``) and first chunk not yet run; failed
   (timed-out) requests wait from arrival to arrival + timeout (then the server aborts them;
   assumed never scheduled, consistent with their NaN TTFT). Running: requests with a chunk or
   decode in step k.

   *Warm-up.* The first requests of a run include server warm-up; they are kept in the step
   reconstruction (they occupy steps) but flagged (``warmup``) and excluded from observations.

   *Idle.* Bins where no request is in flight have rate 0; a step followed by an idle gap has an
   unknown duration (``idle_after``), and windows touching it are dropped.

   Assumptions checked on the real data by ``benchmarks/reconstruct_agreement.py`` (3 traced
   runs): the decode count, prefill tokens, running depth at the sampled steps, the step clock
   ``K`` against the traced ``step.id`` and the step time over traced gaps.

   *Where it fails: KV-cache exhaustion.* The step clock assumes a request, once its first token
   is out, decodes one token every step until it finishes (no preemption), and that failed
   requests took no steps. Both break in the overloaded Llama-2-7B ``reasoning`` run: its KV
   cache holds 7462 x 16 = 119k tokens, i.e. 47 requests of ~1080 + 1448 tokens, while 4 req/s
   of 1448-token outputs keep ~80-130 successful requests between first token and finish at
   once (rebuilt KV demand: p95 1.75x, peak 2.0x the capacity; all other runs <= 0.6x). vLLM
   preempts (recompute), so decode windows hold pauses: the successful requests' ITL is bimodal
   (56% at 29.0-29.4 ms, a third at 45-57 ms), and no step rate fits all windows
   (``resid_steps_mad`` 279 steps, vs <= 0.1 elsewhere). 85% of its requests failed (every
   arrival after 180 s); with TTFTs of the last successful ones near 240 s, an unknown number of
   them were scheduled (prefilled, partly decoded) before the client's 300 s timeout, with no
   record of when: the batches' composition is unknown. Fitting the clock
   on the unpreempted requests alone (ITL < 31 ms) brings the residual to 3.1 steps, but the
   rebuilt batches would still lack the preempted and failed requests that filled the cache, so
   rows from them would bias beta: :func:`bayeslat.data.design.bundled_obs` / ``obs_from_tables``
   skip such runs (``info["kv_demand_ratio_p95"]`` says why). Using them needs the step
   records (``step.BATCH_SUMMARY``) or journey events of such a run.

Observation windows (:func:`observation_windows`) are ``(k0, k1, w0, w1)`` over a run's step
sequence: steps k0..k1 inclusive, weight w0 on k0, w1 on k1, 1 in between (if ``k0 == k1``
the weight is ``w0 + w1 - 1``). kinds: 0 step (traced, server clock), 1 decode window
(y = E2E - TTFT, n-1 steps), 2 TTFT (y = TTFT = alpha + half of step ``k_start - 1`` + the
prefill steps ``k_start..k_first``; only requests arriving to an empty waiting queue).

Clock offset (:func:`estimate_offset`): server monotonic ns vs client us from the first
request; ``t_client_us = ts_ns / 1000 - offset_us``. Estimated by matching the traced decode
count / running depth / prefill presence with the reconstruction (coarse grid, then fine grid);
the uncertainty is the bootstrap spread of the argmin over sampled steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.linalg import lsqr

from bayeslat import features as F
from bayeslat.errors import IngestError

STEP_REQUESTS_COLUMNS = (
    "step_id",
    "request_id",
    "phase",
    "num_computed_tokens",
    "scheduled_tokens_this_step",
    "num_prompt_tokens",
)
STEPS_COLUMNS = ("step_id", "ts_start_ns", "cycle_time_us")
KIND_STEP, KIND_WINDOW, KIND_TTFT, KIND_ALPHA = 0, 1, 2, 3


# ---------------------------------------------------------------------------------------------
# 1. exact traces
# ---------------------------------------------------------------------------------------------
def _require(df: pd.DataFrame, cols, name: str):
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise IngestError(f"missing columns {missing}", file=name, field=missing[0])


def from_step_requests(step_requests: pd.DataFrame, steps: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per-step STATS from exact per-request snapshots.

    ``step_requests`` columns: step_id, request_id, phase ("PREFILL"/"DECODE", case-insensitive;
    WAITING rows are ignored), num_computed_tokens (before the step, prefix-cache hits included),
    scheduled_tokens_this_step, num_prompt_tokens. ``steps`` (optional): step_id, ts_start_ns,
    cycle_time_us (NaN where unknown); if it lacks cycle_time_us it is derived from consecutive
    step ids.

    Returns a DataFrame indexed by position with step_id, the STATS columns, n_requests, and
    (if ``steps`` given) ts_start_ns, dt_us (observed step time, NaN where unknown).
    """
    _require(step_requests, STEP_REQUESTS_COLUMNS, "step_requests")
    sr = step_requests[step_requests["scheduled_tokens_this_step"] > 0]
    phase = sr["phase"].astype(str).str.upper()
    bad = ~phase.isin(["PREFILL", "DECODE"])
    if bad.any():
        raise IngestError(f"unknown phase {phase[bad].iloc[0]!r} in a scheduled row", file="step_requests", field="phase")
    is_pf = (phase == "PREFILL").to_numpy()
    t = sr["scheduled_tokens_this_step"].to_numpy(np.float64)
    c = sr["num_computed_tokens"].to_numpy(np.float64)
    # a request whose computed tokens already cover the prompt is decoding whatever the label says
    is_pf &= c < sr["num_prompt_tokens"].to_numpy(np.float64)
    sid = sr["step_id"].to_numpy()
    ids, inv = np.unique(sid, return_inverse=True)
    out = np.zeros((len(ids), F.N_STATS))
    # vectorised batch_stats
    p, d = is_pf, ~is_pf
    np.add.at(out[:, F.S["n_prefill"]], inv[p], 1.0)
    np.add.at(out[:, F.S["n_decode"]], inv[d], 1.0)
    np.add.at(out[:, F.S["prefill_tokens"]], inv[p], t[p])
    np.add.at(out[:, F.S["prefill_attn_pairs"]], inv[p], t[p] * (c[p] + (t[p] + 1.0) / 2.0))
    np.add.at(out[:, F.S["prefill_ctx_tokens"]], inv[p], c[p] + t[p])
    np.add.at(out[:, F.S["decode_ctx_tokens"]], inv[d], c[d] + 1.0)
    res = pd.DataFrame(out, columns=list(F.STATS))
    res.insert(0, "step_id", ids)
    res["n_requests"] = res["n_prefill"] + res["n_decode"]
    if steps is not None:
        _require(steps, ("step_id", "ts_start_ns"), "steps")
        st = steps.sort_values("step_id").drop_duplicates("step_id")
        if "cycle_time_us" not in st.columns:
            nxt = st["step_id"].shift(-1)
            cyc = (st["ts_start_ns"].shift(-1) - st["ts_start_ns"]) / 1e3
            st = st.assign(cycle_time_us=np.where(nxt == st["step_id"] + 1, cyc, np.nan))
        res = res.merge(st[["step_id", "ts_start_ns", "cycle_time_us"]], on="step_id", how="left")
        res = res.rename(columns={"cycle_time_us": "dt_us"})
    return res


# ---------------------------------------------------------------------------------------------
# 2. lifecycle reconstruction
# ---------------------------------------------------------------------------------------------
@dataclass
class Reconstruction:
    """Rebuilt step sequence of one run.

    steps: k, t_start_us, dt_us, STATS columns, running_depth, waiting_depth, idle_after.
    requests: one row per input request (same order): index, status ("ok" | "aborted" |
      "no_decode" | "invalid"), warmup, arrival_us, ft_us, fin_us, n_out, prompt, uncached,
      k_arrival (step in flight at arrival, -1 if none), w_arrival (fraction of it left),
      k_start (first prefill chunk), k_first, k_last, queue_depth (running + waiting at
      arrival), resid_steps (K(fin) - K(ft) - (n - 1) before rounding).
    info: run-level diagnostics.
    """

    run: str
    steps: pd.DataFrame
    requests: pd.DataFrame
    info: dict = field(default_factory=dict)
    grid_t: np.ndarray | None = None  # bin edges (us)
    grid_K: np.ndarray | None = None  # K at the bin edges

    def K(self, t_us) -> np.ndarray:
        """Step clock: steps started by client time t (fractional)."""
        return np.interp(np.asarray(t_us, dtype=np.float64), self.grid_t, self.grid_K)

    def step_at(self, t_us) -> np.ndarray:
        """Index of the step in flight at client time t (-1 before the first, n-1 after)."""
        t0 = self.steps["t_start_us"].to_numpy()
        return np.searchsorted(t0, np.asarray(t_us, dtype=np.float64), side="right") - 1


def _solve_rate(ft, fin, nsteps, t_end, bin_us, smooth, active, iter_lim=300):
    nb = int(np.ceil(t_end / bin_us)) + 1
    edges = np.arange(nb + 1) * bin_us
    b0 = np.floor(ft / bin_us).astype(np.int64)
    b1 = np.floor(fin / bin_us).astype(np.int64)
    lens = b1 - b0 + 1
    rows = np.repeat(np.arange(len(ft)), lens)
    offs = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
    cols = np.repeat(b0, lens) + offs
    lo = np.maximum(edges[cols], np.repeat(ft, lens))
    hi = np.minimum(edges[cols + 1], np.repeat(fin, lens))
    vals = np.maximum(hi - lo, 0.0) / bin_us
    wrow = 1.0 / np.sqrt(np.maximum(nsteps, 1.0))
    act = np.flatnonzero(active[:nb])
    colmap = -np.ones(nb, dtype=np.int64)
    colmap[act] = np.arange(len(act))
    keep = colmap[cols] >= 0
    A = sp.csr_matrix((vals[keep] * wrow[rows[keep]], (rows[keep], colmap[cols[keep]])), shape=(len(ft), len(act)))
    # second differences between consecutive active bins (smoothness of the rate)
    na = len(act)
    if na >= 3:
        i = np.arange(na - 2)
        D = sp.csr_matrix(
            (
                np.concatenate([np.ones(na - 2), -2 * np.ones(na - 2), np.ones(na - 2)]) * smooth,
                (np.tile(i, 3), np.concatenate([i, i + 1, i + 2])),
            ),
            shape=(na - 2, na),
        )
        M = sp.vstack([A, D]).tocsr()
        rhs = np.concatenate([nsteps * wrow, np.zeros(na - 2)])
    else:
        M, rhs = A, nsteps * wrow
    # initial guess: the median step rate
    rate0 = np.median(nsteps / np.maximum(fin - ft, 1.0)) * bin_us
    x0 = np.full(na, rate0)
    # Jacobi column scaling speeds lsqr up a lot (columns differ by the number of windows)
    cn = np.sqrt(np.asarray(M.multiply(M).sum(axis=0)).ravel())
    cn[cn == 0] = 1.0
    Ms = M @ sp.diags(1.0 / cn)
    sol = lsqr(Ms, rhs - M @ x0, atol=1e-8, btol=1e-8, iter_lim=iter_lim)[0] / cn + x0
    rho = np.zeros(nb)
    rho[act] = np.clip(sol, 0.0, None)
    return edges, rho


def _uncached(prompt, arrival_order, mode, block, system_len):
    p = np.asarray(prompt, dtype=np.int64)
    if mode == "none":
        return p.copy()
    hit_full = ((p - 1) // block) * block
    if mode == "repeat":
        u = p.copy()
        seen = set()
        for i in arrival_order:
            if p[i] in seen:
                u[i] = p[i] - hit_full[i]
            seen.add(p[i])
        return u
    if mode == "system":
        sys_hit = np.minimum((int(system_len) // block) * block, hit_full)
        u = p - sys_hit
        u[arrival_order[0]] = p[arrival_order[0]]
        return u
    raise ValueError(f"prefix_cache must be 'repeat', 'system' or 'none', got {mode!r}")


def reconstruct_lifecycle(
    req: pd.DataFrame,
    *,
    run: str = "",
    budget: int = 2048,
    max_num_seqs: int = 128,
    block_size: int = 16,
    prefix_cache: str = "repeat",
    system_prompt_len: int = 0,
    bin_us: float = 20_000.0,
    smooth: float = 3.0,
    timeout_s: float = 300.0,
    n_warmup_max: int = 20,
    iter_lim: int = 300,
    kv_capacity_tokens: float | None = None,
) -> Reconstruction:
    """Rebuild the step sequence of one run from per-request lifecycle data.

    ``req`` columns (as :func:`bayeslat.data.datasets.requests`): index, arrival_us, input_tokens,
    output_tokens, has_error, ttft_ms, e2e_ms. See the module docstring for the method.

    ``kv_capacity_tokens`` (GPU KV blocks x block size; optional) only adds a diagnostic of the
    no-preemption assumption: ``info["kv_demand_ratio_p95"]``, the 95th percentile over steps of
    the KV tokens the rebuilt batches hold (decode + prefill contexts) over the capacity. Above 1
    the batches cannot have fitted: vLLM preempted requests, their decode windows hold pauses, and
    the step clock does not fit (``resid_steps_mad`` large).
    """
    _require(req, ("arrival_us", "input_tokens", "output_tokens", "has_error", "ttft_ms", "e2e_ms"), run or "requests")
    n_req = len(req)
    a = req["arrival_us"].to_numpy(np.float64)
    a = a - a.min() if n_req else a
    prompt = req["input_tokens"].to_numpy(np.int64)
    n_out = req["output_tokens"].to_numpy(np.int64)
    err = req["has_error"].to_numpy(bool)
    ttft = req["ttft_ms"].to_numpy(np.float64) * 1e3
    e2e = req["e2e_ms"].to_numpy(np.float64) * 1e3
    ft, fin = a + ttft, a + e2e
    status = np.full(n_req, "ok", dtype=object)
    status[err] = "aborted"
    invalid = ~err & ~(np.isfinite(ttft) & np.isfinite(e2e) & (ttft >= 0) & (e2e >= ttft) & (prompt > 0))
    status[invalid] = "invalid"
    status[~err & ~invalid & (n_out < 2)] = "no_decode"
    served = (status == "ok") | (status == "no_decode")  # occupy steps
    ok = status == "ok"
    if ok.sum() < 1:
        raise IngestError("no successful request with >= 2 output tokens", file=run or "requests", field="output_tokens")

    # warm-up flag: leading requests whose TTFT is far above the run's typical one
    order = np.argsort(a, kind="stable")
    warm = np.zeros(n_req, dtype=bool)
    med_ttft = np.nanmedian(ttft[ok])
    for i in order[:n_warmup_max]:
        if served[i] and ttft[i] > 2.0 * med_ttft:
            warm[i] = True
        elif served[i]:
            break

    # --- step clock
    t_end = float(np.nanmax(np.where(served, fin, a))) + 2 * bin_us
    nb = int(np.ceil(t_end / bin_us)) + 1
    active = np.zeros(nb + 1, dtype=bool)
    diff = np.zeros(nb + 2)
    s_ = np.floor(a[served] / bin_us).astype(int)
    e_ = np.floor(fin[served] / bin_us).astype(int)
    np.add.at(diff, s_, 1)
    np.add.at(diff, e_ + 1, -1)
    active = np.cumsum(diff)[: nb + 1] > 0
    nsteps = (n_out[ok] - 1).astype(np.float64)
    for it in (iter_lim,):
        edges, rho = _solve_rate(ft[ok], fin[ok], nsteps, t_end, bin_us, smooth, active, iter_lim=it)
        Kedge = np.concatenate([[0.0], np.cumsum(rho)])
        Kf = lambda t: np.interp(t, edges, Kedge)  # noqa: E731, B023 (the loop runs once)
        resid = np.full(n_req, np.nan)
        resid[ok] = Kf(fin[ok]) - Kf(ft[ok]) - nsteps

    # --- index assignment
    k_first = np.full(n_req, -1, dtype=np.int64)
    kf_ok = np.rint((Kf(ft[served]) + Kf(fin[served]) - (n_out[served] - 1)) / 2.0) - 1
    k_first[served] = np.maximum(kf_ok, 0).astype(np.int64)
    nd = np.where(served, np.maximum(n_out - 1, 0), 0)
    k_last = np.where(served, k_first + nd, -1)
    n_steps_total = int(max(np.rint(Kedge[-1]), k_last.max() + 1))
    kgrid = np.arange(n_steps_total + 1, dtype=np.float64)
    # K^-1 (strictly increasing K assumed where rho > 0; use the left edge on flats)
    t_start = np.interp(kgrid, Kedge + np.arange(len(Kedge)) * 1e-12, edges)
    dt = np.diff(t_start)
    t_start = t_start[:-1]
    nK = n_steps_total

    # --- decodes (difference arrays)
    cnt = np.zeros(nK + 2)
    ctxsum = np.zeros(nK + 2)
    sv = np.flatnonzero(served & (nd > 0))
    np.add.at(cnt, k_first[sv] + 1, 1)
    np.add.at(cnt, np.minimum(k_last[sv] + 1, nK + 1), -1)
    base = (prompt[sv] - k_first[sv]).astype(np.float64)  # decode ctx at step k = prompt + k - k_first
    np.add.at(ctxsum, k_first[sv] + 1, base)
    np.add.at(ctxsum, np.minimum(k_last[sv] + 1, nK + 1), -base)
    n_dec = np.cumsum(cnt)[:nK]
    ks = np.arange(nK, dtype=np.float64)
    dec_ctx = np.cumsum(ctxsum)[:nK] + ks * n_dec

    # --- prefill chunks, decode-first, backwards from k_first into the budget left
    unc = np.zeros(n_req, dtype=np.int64)
    unc[served] = _uncached(prompt[served], np.argsort(a[served], kind="stable"), prefix_cache, block_size, system_prompt_len)
    cached = prompt - unc
    k_arr = np.searchsorted(t_start, a, side="right") - 1  # step in flight at arrival
    cap = budget - n_dec
    seqcap = max_num_seqs - n_dec
    pf_stats = np.zeros((nK, 5))  # n_prefill, tokens, attn_pairs, ctx_tokens
    k_start = np.full(n_req, -1, dtype=np.int64)
    overflow = 0
    for i in sorted(np.flatnonzero(served), key=lambda j: (k_first[j], a[j])):
        k = k_first[i]
        lo = max(k_arr[i] + 1, 0)
        rem = int(unc[i])
        chunks = []
        while rem > 0:
            take = min(rem, max(int(cap[k]), 0))
            if k == k_first[i]:
                take = max(take, 1)
            if k <= lo or (seqcap[k] <= 0 and k != k_first[i]):
                take = rem if k <= lo else 0
                overflow += int(k <= lo and take > max(int(cap[k]), 0))
            if take > 0:
                chunks.append((k, take))
                cap[k] -= take
                seqcap[k] -= 1
                rem -= take
            k -= 1
            if k < 0 and rem > 0:
                chunks[-1] = (chunks[-1][0], chunks[-1][1] + rem)
                overflow += 1
                rem = 0
        c = float(cached[i])
        for k, t in reversed(chunks):
            pf_stats[k, 0] += 1
            pf_stats[k, 1] += t
            pf_stats[k, 2] += t * (c + (t + 1) / 2.0)
            pf_stats[k, 3] += c + t
            c += t
        k_start[i] = chunks[-1][0] if chunks else k_first[i]

    stats = np.zeros((nK, F.N_STATS))
    stats[:, F.S["n_prefill"]] = pf_stats[:, 0]
    stats[:, F.S["n_decode"]] = n_dec
    stats[:, F.S["prefill_tokens"]] = pf_stats[:, 1]
    stats[:, F.S["prefill_attn_pairs"]] = pf_stats[:, 2]
    stats[:, F.S["prefill_ctx_tokens"]] = pf_stats[:, 3]
    stats[:, F.S["decode_ctx_tokens"]] = dec_ctx

    # --- queues: running = prefilling (k_start..k_first) + decoding; waiting = arrived, not started
    run_d = np.zeros(nK + 2)
    np.add.at(run_d, k_start[served], 1)
    np.add.at(run_d, np.minimum(k_last[served] + 1, nK + 1), -1)
    running = np.cumsum(run_d)[:nK]
    k_arr_next = np.clip(k_arr + 1, 0, nK)
    wait_d = np.zeros(nK + 2)
    np.add.at(wait_d, k_arr_next[served], 1)
    np.add.at(wait_d, np.maximum(k_start[served], k_arr_next[served]), -1)
    ab = err
    if ab.any():
        k_to = np.clip(np.searchsorted(t_start, a[ab] + timeout_s * 1e6, side="left"), 0, nK)
        np.add.at(wait_d, k_arr_next[ab], 1)
        np.add.at(wait_d, np.maximum(k_to, k_arr_next[ab]), -1)
    waiting = np.cumsum(wait_d)[:nK]

    # idle: after step k nothing is running and nothing is waiting
    idle_after = np.zeros(nK, dtype=bool)
    idle_after[:-1] = (running[1:] == 0) & (running[:-1] > 0) | (dt[:-1] > 20 * np.median(dt[dt > 0]))
    idle_after[-1] = True

    steps = pd.DataFrame(stats, columns=list(F.STATS))
    steps.insert(0, "k", np.arange(nK))
    steps.insert(1, "t_start_us", t_start)
    steps.insert(2, "dt_us", dt)
    steps["running_depth"] = running
    steps["waiting_depth"] = waiting
    steps["idle_after"] = idle_after

    kq = np.clip(k_arr, 0, nK - 1)
    w_arr = np.where(k_arr >= 0, np.clip((t_start[kq] + dt[kq] - a) / np.maximum(dt[kq], 1e-9), 0.0, 1.0), 0.0)
    qd = np.where(k_arr >= 0, running[kq] + waiting[kq], 0.0)
    reqs = pd.DataFrame(
        {
            "index": req["index"].to_numpy() if "index" in req.columns else np.arange(n_req),
            "status": status.astype(str),
            "warmup": warm,
            "arrival_us": a,
            "ft_us": ft,
            "fin_us": fin,
            "n_out": n_out,
            "prompt": prompt,
            "uncached": np.where(served, unc, 0),
            "k_arrival": k_arr,
            "w_arrival": w_arr,
            "k_start": k_start,
            "k_first": k_first,
            "k_last": k_last,
            "queue_depth": qd,
            "resid_steps": resid,
        }
    )
    info = {
        "run": run,
        "n_requests": int(n_req),
        "n_steps": int(nK),
        "counts": {s: int((status == s).sum()) for s in ("ok", "aborted", "no_decode", "invalid")},
        "n_warmup": int(warm.sum()),
        "prefill_overflow": int(overflow),
        "resid_steps_mad": float(np.nanmedian(np.abs(resid[ok]))),
        "bin_us": bin_us,
        "prefix_cache": prefix_cache,
        "budget": budget,
        "failed_frac": float(err.mean()) if n_req else 0.0,
    }
    kv_demand = stats[:, F.S["decode_ctx_tokens"]] + stats[:, F.S["prefill_ctx_tokens"]]
    info["kv_demand_p95_tokens"] = float(np.percentile(kv_demand, 95)) if nK else 0.0
    if kv_capacity_tokens:
        info["kv_demand_ratio_p95"] = info["kv_demand_p95_tokens"] / float(kv_capacity_tokens)
    return Reconstruction(run, steps, reqs, info, edges, Kedge)
