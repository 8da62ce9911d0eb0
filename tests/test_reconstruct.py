"""Lifecycle reconstruction on a synthetic run from a tiny exact vLLM-like scheduler."""

from __future__ import annotations

from collections import deque

import numpy as np
import pandas as pd
import pytest

from bayeslat import features as F
from bayeslat.data import reconstruct as R
from bayeslat.data import windows as RW
from bayeslat.errors import IngestError


def simulate(n=500, rate=25.0, budget=512, max_seqs=64, seed=0):
    """Exact step-level scheduler: decode-first, FCFS admission, chunked last prefill.
    Step time (us) = 8000 + 4 * tokens (known). Returns (requests df, true steps df, per-request)."""
    rng = np.random.default_rng(seed)
    arr = np.cumsum(rng.exponential(1e6 / rate, n))
    arr -= arr[0]
    prompt = rng.integers(50, 900, n)
    nout = rng.integers(5, 120, n)
    done_pf = np.zeros(n, int)
    gen = np.zeros(n, int)
    ft = np.full(n, np.nan)
    fin = np.full(n, np.nan)
    waiting, running = deque(), []
    t, nxt, k = 0.0, 0, 0
    steps = []
    while nxt < n or waiting or running:
        while nxt < n and arr[nxt] <= t:
            waiting.append(nxt)
            nxt += 1
        if not waiting and not running:
            t = arr[nxt]
            continue
        left = budget
        dec, chunks = [], []
        for r in running:
            if done_pf[r] >= prompt[r]:
                dec.append(r)
                left -= 1
        for r in running:
            if done_pf[r] < prompt[r] and left > 0:
                c = min(prompt[r] - done_pf[r], left)
                chunks.append((r, c, done_pf[r]))
                left -= c
        while waiting and left > 0 and len(running) < max_seqs:
            r = waiting.popleft()
            running.append(r)
            c = min(prompt[r], left)
            chunks.append((r, c, 0))
            left -= c
        tokens = budget - left
        dt = 8000.0 + 4.0 * tokens
        ctx = [prompt[r] + gen[r] - 1 for r in dec]
        steps.append(
            {
                "k": k,
                "t_start_us": t,
                "dt_us": dt,
                "n_decode": len(dec),
                "n_prefill": len(chunks),
                "prefill_tokens": sum(c for _, c, _ in chunks),
                "running": len(running),
                "waiting": len(waiting),
                "decode_ctx_tokens": sum(c + 1 for c in ctx),
            }
        )
        t += dt
        for r, c, _ in chunks:
            done_pf[r] += c
            if done_pf[r] == prompt[r]:
                gen[r] = 1
                ft[r] = t
        for r in dec:
            gen[r] += 1
        for r in list(running):
            if done_pf[r] == prompt[r] and gen[r] >= nout[r]:
                fin[r] = t
                running.remove(r)
        k += 1
    req = pd.DataFrame(
        {
            "index": np.arange(n),
            "arrival_us": arr.astype(np.int64),
            "input_tokens": prompt,
            "output_tokens": nout,
            "has_error": False,
            "ttft_ms": (ft - arr) / 1e3,
            "e2e_ms": (fin - arr) / 1e3,
        }
    )
    return req, pd.DataFrame(steps)


@pytest.fixture(scope="module")
def synth():
    req, true = simulate()
    rec = R.reconstruct_lifecycle(req, run="synth", budget=512, max_num_seqs=64, prefix_cache="none", bin_us=20_000)
    return req, true, rec


def test_step_count_and_composition(synth):
    req, true, rec = synth
    assert abs(len(rec.steps) - len(true)) <= 0.01 * len(true)
    # compare at the true step start times (index alignment is irrelevant to the clock)
    k = np.clip(rec.step_at(true["t_start_us"].to_numpy() + 1.0), 0, len(rec.steps) - 1)
    d = rec.steps["n_decode"].to_numpy()[k] - true["n_decode"].to_numpy()
    assert np.mean(np.abs(d) <= 1) > 0.95
    run = rec.steps["running_depth"].to_numpy()[k] - true["running"].to_numpy()
    assert np.mean(np.abs(run) <= 2) > 0.9
    # prefill token totals are conserved
    assert rec.steps["prefill_tokens"].sum() == pytest.approx(req["input_tokens"].sum())
    assert rec.info["counts"]["ok"] == len(req)


def test_step_times(synth):
    _, true, rec = synth
    k = np.clip(rec.step_at(true["t_start_us"].to_numpy() + 1.0), 0, len(rec.steps) - 1)
    busy = ~rec.steps["idle_after"].to_numpy()[k]
    rel = rec.steps["dt_us"].to_numpy()[k][busy] / true["dt_us"].to_numpy()[busy] - 1
    assert np.median(np.abs(rel)) < 0.05
    # total time of the busy sequence within 1 %
    assert abs(np.mean(rel)) < 0.03


def test_windows_exact(synth):
    req, _, rec = synth
    w = RW.observation_windows(rec)
    dw = w[w.kind == R.KIND_WINDOW]
    n = req.set_index("index").loc[dw["request"], "output_tokens"].to_numpy()
    assert np.all(dw["n_steps"].to_numpy() == n - 1)
    assert len(dw) >= 0.95 * len(req)
    tt = w[w.kind == R.KIND_TTFT]
    # TTFT rows: exactly the served requests that arrived to an empty waiting queue; they span
    # half of the step before prefill (w0 = 0.5, or 1 at the first step) through k_first
    r = rec.requests.set_index("index")
    ka = r.loc[tt["request"], "k_arrival"].to_numpy()
    assert np.all(rec.steps["waiting_depth"].to_numpy()[ka] == 0)
    ok = (r["status"] == "ok") & ~r["warmup"] & (r["k_arrival"] >= 0)
    no_queue = ok & (rec.steps["waiting_depth"].to_numpy()[np.clip(r["k_arrival"], 0, None)] == 0)
    assert len(tt) >= 0.95 * no_queue.sum() and len(tt) >= 0.5 * len(req)
    assert set(np.unique(tt.w0)) <= {0.5, 1.0}
    assert np.all(tt.k1.to_numpy() == r.loc[tt["request"], "k_first"].to_numpy())
    assert np.all(tt.k0.to_numpy() == np.maximum(r.loc[tt["request"], "k_start"].to_numpy() - 1, 0))
    # window sums through cumsums == brute force
    vals = rec.steps[list(F.STATS)].to_numpy()
    s = RW.window_sums(vals, w.k0, w.k1, w.w0, w.w1)
    for i in np.random.default_rng(0).choice(len(w), 50, replace=False):
        r = w.iloc[i]
        wt = np.ones(int(r.k1 - r.k0 + 1))
        if r.k0 == r.k1:
            wt[0] = r.w0 + r.w1 - 1
        else:
            wt[0], wt[-1] = r.w0, r.w1
        np.testing.assert_allclose(s[i], wt @ vals[int(r.k0) : int(r.k1) + 1], rtol=1e-9, atol=1e-6)
    # predicted decode-window durations from the true step-time law (8 ms + 4 us/token) ~ y
    tok = RW.window_sums((rec.steps["n_decode"] + rec.steps["prefill_tokens"]).to_numpy(), dw.k0, dw.k1, dw.w0, dw.w1)
    pred = (8000.0 * dw["n_steps"] + 4.0 * tok) / 1e3
    assert np.median(np.abs(pred / dw["y_ms"] - 1)) < 0.03


def test_offset_recovers_shift(synth):
    _, true, rec = synth
    shift_us = 123_456_789.0
    rng = np.random.default_rng(1)
    tr = true.iloc[np.sort(rng.choice(len(true), len(true) // 4, replace=False))]
    trace = pd.DataFrame(
        {
            "step.id": tr["k"] + 7,
            "step.ts_start_ns": ((tr["t_start_us"] + shift_us) * 1e3).astype(np.int64),
            "batch.decode_tokens": tr["n_decode"],
            "queue.running_depth": tr["running"],
            "batch.prefill_tokens": tr["prefill_tokens"],
        }
    )
    off = RW.estimate_offset(rec, trace, coarse_range_s=5.0, n_boot=20)
    assert abs(off["offset_us"] - shift_us) < 15_000  # within ~1.5 steps
    assert off["sd_us"] < 50_000
    rows = RW.trace_step_windows(rec, trace, off["offset_us"], max_gap=1)
    assert len(rows) > 0 and np.all(rows.kind == R.KIND_STEP) and np.all(rows.n_steps == 1)


def test_exact_trace_path():
    sr = pd.DataFrame(
        {
            "step_id": [1, 1, 1, 2, 2],
            "request_id": ["a", "b", "c", "a", "b"],
            "phase": ["DECODE", "PREFILL", "WAITING", "decode", "PREFILL"],
            "num_computed_tokens": [100, 0, 0, 101, 64],
            "scheduled_tokens_this_step": [1, 64, 0, 1, 36],
            "num_prompt_tokens": [50, 100, 30, 50, 100],
        }
    )
    steps = pd.DataFrame({"step_id": [1, 2], "ts_start_ns": [1_000_000, 13_000_000]})
    out = R.from_step_requests(sr, steps)
    np.testing.assert_allclose(out.loc[0, list(F.STATS)].to_numpy(), F.batch_stats([1, 64], [100, 0], [False, True]))
    np.testing.assert_allclose(out.loc[1, list(F.STATS)].to_numpy(), F.batch_stats([1, 36], [101, 64], [False, True]))
    assert out.loc[0, "dt_us"] == pytest.approx(12_000.0) and np.isnan(out.loc[1, "dt_us"])
    with pytest.raises(IngestError, match="scheduled_tokens_this_step"):
        R.from_step_requests(sr.drop(columns=["scheduled_tokens_this_step"]))


def test_aborted_requests_accounted():
    req, _ = simulate(n=120, seed=3)
    req.loc[[10, 20], "has_error"] = True
    req.loc[[10, 20], ["ttft_ms", "e2e_ms"]] = np.nan
    rec = R.reconstruct_lifecycle(req, budget=512, max_num_seqs=64, prefix_cache="none")
    c = rec.info["counts"]
    assert c["aborted"] == 2 and sum(c.values()) == len(req)
    assert rec.steps["waiting_depth"].max() >= 1
