"""Observation rows straight from the traced tables of one ingested run: exact one-step rows from
step snapshots (:func:`exact_step_rows`), alpha-only rows from journey requests
(:func:`journey_alpha_rows`), and the server's idle gaps that step rows must not span
(:func:`journey_idle_gaps`, :func:`idle_overlap`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bayeslat import features as F
from bayeslat.data import reconstruct as R
from bayeslat.data.obs import ObsTable


def _per_regime(stats: np.ndarray, ctx) -> np.ndarray:
    feat, reg = F.step_features(np.asarray(stats, dtype=np.float64), ctx)
    per = np.zeros((len(feat), len(F.REGIMES), F.N_BETA))
    per[np.arange(len(feat)), reg, :] = feat
    return per


def exact_step_rows(
    steps: pd.DataFrame, step_requests: pd.DataFrame, kv_steps: pd.DataFrame | None = None, block_size: int = 16
) -> tuple[pd.DataFrame, dict]:
    """Exact one-step rows of one run from ``step.REQUEST_SNAPSHOT`` records (rich step tracing):
    the step's STATS from its per-request snapshots (:func:`bayeslat.data.reconstruct.from_step_requests`),
    ``offload_tokens`` from ``kv_steps`` (blocks offloaded + loaded in that scheduler step x
    ``block_size``), ``n_preempted`` from ``batch.num_preempted``; y = ``cycle_time_us`` (the next
    sampled step's start - this start). Kept: steps whose successor was sampled and whose
    snapshots are complete (as many scheduled PREFILL / DECODE snapshots as
    ``batch.num_prefill_reqs`` / ``batch.num_decode_reqs``, where recorded). A cycle that holds a
    wait for the next arrival is not a step time: vLLM runs one empty step (no snapshots, so no row
    here) after the last request finishes before it idles; where journey requests exist,
    :func:`idle_overlap` finds rows overlapping a time the server held no request.

    Returns (DataFrame with step_id, ts_start_ns, y_ms and the STATS columns, counts)."""
    cols = {
        "step.id": "step_id",
        "request.id": "request_id",
        "request.phase": "phase",
        "request.num_computed_tokens": "num_computed_tokens",
        "request.scheduled_tokens_this_step": "scheduled_tokens_this_step",
        "request.num_prompt_tokens": "num_prompt_tokens",
    }
    sr = step_requests[list(cols)].rename(columns=cols)
    num = ["step_id", "num_computed_tokens", "scheduled_tokens_this_step", "num_prompt_tokens"]
    complete_row = sr[num].notna().all(axis=1) & sr["phase"].notna()
    counts = {"snapshots": int(len(sr)), "snapshots_incomplete": int((~complete_row).sum())}
    sr = sr[complete_row]
    sr = pd.DataFrame(
        {
            "step_id": sr["step_id"].to_numpy(np.int64),
            "request_id": sr["request_id"].astype(str).to_numpy(),
            "phase": sr["phase"].astype(str).to_numpy(),
            **{c: sr[c].to_numpy(np.float64) for c in num[1:]},
        }
    )
    sr = sr[sr["phase"].str.upper().isin(["PREFILL", "DECODE"]) | (sr["scheduled_tokens_this_step"] <= 0)]
    st = pd.DataFrame(
        {
            "step_id": steps["step.id"].to_numpy(np.int64),
            "ts_start_ns": steps["step.ts_start_ns"].to_numpy(np.int64),
            "cycle_time_us": steps["cycle_time_us"].to_numpy(np.float64),
        }
    )
    if not len(sr):
        return pd.DataFrame(columns=["step_id", "ts_start_ns", "y_ms", *F.STATS]), {**counts, "steps_exact": 0}
    res = R.from_step_requests(sr, st)
    # completeness against the step record's own request counts
    rec = steps.drop_duplicates("step.id").set_index("step.id")
    npf = rec["batch.num_prefill_reqs"].reindex(res["step_id"]).to_numpy(dtype="float64", na_value=np.nan)
    ndc = rec["batch.num_decode_reqs"].reindex(res["step_id"]).to_numpy(dtype="float64", na_value=np.nan)
    # a snapshot labelled PREFILL whose computed tokens cover the prompt counts as a decode in
    # from_step_requests; vLLM's batch counters count requests, so compare the totals
    tot = npf + ndc
    got = (res["n_prefill"] + res["n_decode"]).to_numpy()
    complete = np.isnan(tot) | (got == tot)
    npre = rec["batch.num_preempted"].reindex(res["step_id"]).to_numpy(dtype="float64", na_value=np.nan)
    res["n_preempted"] = np.nan_to_num(npre)
    if kv_steps is not None and len(kv_steps):
        kv = kv_steps.groupby(kv_steps["step"].to_numpy(dtype="float64", na_value=np.nan))[
            ["blocks_offloaded", "blocks_loaded"]
        ].sum()
        moved = (kv["blocks_offloaded"].astype("float64") + kv["blocks_loaded"].astype("float64")).reindex(
            res["step_id"].astype("float64")
        )
        res["offload_tokens"] = np.nan_to_num(moved.to_numpy(np.float64)) * float(block_size)
    ok = complete & np.isfinite(res["dt_us"].to_numpy()) & (res["dt_us"].to_numpy() > 0)
    counts.update(
        steps_with_snapshots=int(len(res)), steps_snapshots_incomplete=int((~complete).sum()), steps_exact=int(ok.sum())
    )
    out = res[ok].copy()
    out["y_ms"] = out["dt_us"] / 1e3
    return out[["step_id", "ts_start_ns", "y_ms", *F.STATS]].reset_index(drop=True), counts


#: why a journey request gives no alpha row, in the order they are checked (:func:`_alpha_delays`)
ALPHA_MISS_REASONS = ("error", "no ARRIVED / QUEUED", "no FIRST_TOKEN / FIRST_RESPONSE", "no prompt tokens", "negative delay")


def _alpha_delays(j: pd.DataFrame):
    """Of journey rows ``j``: the ARRIVED -> QUEUED and FIRST_TOKEN -> FIRST_RESPONSE delays (ms)
    and, per row, the first of :data:`ALPHA_MISS_REASONS` that keeps it from an alpha row ("" for
    none)."""
    v = lambda c: j[c].to_numpy(dtype="float64", na_value=np.nan)  # noqa: E731
    a1 = (v("queued_ns") - v("arrival_ns")) / 1e6
    a2 = (v("first_response_ns") - v("first_token_ns")) / 1e6
    with np.errstate(invalid="ignore"):
        why = np.select(
            [
                j["has_error"].fillna(False).to_numpy(bool),
                ~np.isfinite(a1),
                ~np.isfinite(a2),
                j["input_tokens"].isna().to_numpy(),
                (a1 < 0) | (a2 < 0),
            ],
            list(ALPHA_MISS_REASONS),
            "",
        )
    return a1, a2, why


def journey_alpha_rows(req: pd.DataFrame) -> pd.DataFrame:
    """Alpha-only rows (kind 3) of one run from journey requests: y = (QUEUED - ARRIVED) +
    (FIRST_RESPONSE - FIRST_TOKEN) in ms, i.e. all of the TTFT that is not spent waiting for or
    computing scheduler steps (the simulator's alpha: arrival -> wait queue, API and streaming
    overheads included; the same quantity the TTFT rows attribute to alpha). Queue depth at
    arrival = requests of the run queued and not yet finished at the arrival time (running +
    waiting, as in the simulator). Successful requests with all four times only; rows with a
    negative component (clock trouble) are dropped (:func:`journey_alpha_misses` counts why).
    ``request``: position among the run's journey rows (as in :func:`run_obs`); ``t_us``: after
    the run's first journey arrival."""
    j = req[req["source"] == "journey"]
    cols = ("arrival_ns", "queued_ns", "finished_ns", "departed_ns")
    v = {c: j[c].to_numpy(dtype="float64", na_value=np.nan) for c in cols}
    end = np.where(np.isnan(v["finished_ns"]), v["departed_ns"], v["finished_ns"])
    q = v["queued_ns"]
    have = ~np.isnan(q) & ~np.isnan(end)
    qs, es = np.sort(q[have]), np.sort(end[have])
    arr = v["arrival_ns"]
    depth = np.searchsorted(qs, arr, side="right") - np.searchsorted(es, arr, side="right")
    a1, a2, why = _alpha_delays(j)
    ok = why == ""
    t0 = np.nanmin(arr) if np.isfinite(arr).any() else 0.0
    return pd.DataFrame(
        {
            "request": np.arange(len(j))[ok],
            "y_ms": (a1 + a2)[ok],
            "prompt": j["input_tokens"].to_numpy(dtype="float64", na_value=np.nan)[ok],
            "queue_depth": np.maximum(depth, 0)[ok].astype(np.float64),
            "t_us": (arr[ok] - t0) / 1e3,
        }
    )


def journey_alpha_misses(req: pd.DataFrame) -> dict:
    """Why journey requests give no alpha row (:func:`journey_alpha_rows`): counts by reason
    (:data:`ALPHA_MISS_REASONS`, the first that applies). Empty when every request has a row."""
    why = _alpha_delays(req[req["source"] == "journey"])[2]
    r, n = np.unique(why[why != ""], return_counts=True)
    return {str(k): int(c) for k, c in zip(r, n)}


def alpha_table(al: pd.DataFrame, ctx, t_end: float, run: str, hardware: str, model_class: str) -> ObsTable:
    """The alpha rows :func:`journey_alpha_rows` gives as an ObsTable (kind 3, alpha features only)."""
    A = F.alpha_features(al["prompt"].to_numpy(), al["queue_depth"].to_numpy(), F.multiproc(ctx))
    return _rows_table(
        R.KIND_ALPHA,
        al["y_ms"].to_numpy(),
        np.zeros((len(al), len(F.REGIMES), F.N_BETA)),
        A,
        np.zeros(len(al)),
        al["request"].to_numpy(),
        al["t_us"].to_numpy(),
        t_end,
        run,
        hardware,
        model_class,
    )


def exact_step_table(ex: pd.DataFrame, ctx, t_us, t_end: float, run: str, hardware: str, model_class: str) -> ObsTable:
    """The exact one-step rows :func:`exact_step_rows` gives as an ObsTable (kind 0, one step each),
    at run positions ``t_us``."""
    return _rows_table(
        R.KIND_STEP,
        ex["y_ms"].to_numpy(),
        _per_regime(ex[list(F.STATS)].to_numpy(), ctx),
        np.zeros((len(ex), F.N_ALPHA)),
        np.ones(len(ex)),
        np.full(len(ex), -1),
        t_us,
        t_end,
        run,
        hardware,
        model_class,
    )


def journey_offset_us(lf: pd.DataFrame) -> float:
    """The step records' clock offset (``t_client_us = ts_ns / 1000 - offset``) from a journey
    lifecycle frame (:func:`_lifecycle_frame`): exact, the journey's monotonic clock is theirs."""
    i0 = int(np.nanargmin(lf["arrival_ns"].to_numpy()))
    return float(lf["arrival_ns"].iloc[i0]) / 1e3 - float(lf["arrival_us"].iloc[i0]) + float(lf["arrival_us"].min())


def journey_idle_gaps(req: pd.DataFrame) -> np.ndarray:
    """The times the server held no request, from journey requests (server monotonic clock, ns):
    (m, 2) [start, end) gaps between the union of the requests' [QUEUED (else ARRIVED), FINISHED
    (else DEPARTED)] intervals. Empty without journey rows."""
    j = req[req["source"] == "journey"]
    if not len(j):
        return np.zeros((0, 2))
    v = lambda c: j[c].to_numpy(dtype="float64", na_value=np.nan)  # noqa: E731
    a = np.where(np.isnan(v("queued_ns")), v("arrival_ns"), v("queued_ns"))
    b = np.where(np.isnan(v("finished_ns")), v("departed_ns"), v("finished_ns"))
    ok = np.isfinite(a) & np.isfinite(b) & (b >= a)
    a, b = a[ok], b[ok]
    if not len(a):
        return np.zeros((0, 2))
    o = np.argsort(a, kind="stable")
    a, b = a[o], np.maximum.accumulate(b[o])  # b: the latest end of the requests queued so far
    gap = a[1:] > b[:-1]
    return np.stack([b[:-1][gap], a[1:][gap]], axis=1)


def idle_overlap(t0_ns, y_ms, gaps: np.ndarray) -> np.ndarray:
    """Whether each span [t0, t0 + y) (server clock, ns and ms) overlaps an idle gap of the server
    (:func:`journey_idle_gaps`): a step row whose y would time the wait for the next arrival, not
    steps (exact step rows, and sampled pairs the reconstruction's own idle steps miss when its
    estimated step times shift a gap)."""
    t0 = np.asarray(t0_ns, dtype=np.float64)
    if not len(t0) or not len(gaps):
        return np.zeros(len(t0), bool)
    i = np.searchsorted(gaps[:, 1], t0, side="right")  # the first gap ending after the span's start
    return (i < len(gaps)) & (gaps[np.minimum(i, len(gaps) - 1), 0] < t0 + np.asarray(y_ms, dtype=np.float64) * 1e6)


def _rows_table(kind, y, X, A, n_steps, request, t_us, t_end, run, hardware, model_class) -> ObsTable:
    n = len(y)
    return ObsTable(
        kind=np.full(n, kind, dtype=np.int64),
        y=np.asarray(y, np.float64),
        X=X,
        A=A,
        n_steps=np.asarray(n_steps, np.float64),
        hw=np.zeros(n, np.int64),
        cls=np.zeros(n, np.int64),
        run=np.full(n, run, dtype=object).astype(str),
        request=np.asarray(request, np.int64),
        t_frac=np.clip(np.asarray(t_us, np.float64) / max(t_end, 1.0), 0.0, 1.0),
        hardware_levels=(hardware,),
        class_levels=(model_class,),
        meta={"runs": [run]},
    )
