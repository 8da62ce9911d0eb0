"""The simulator's Python API: server parameters and kernel inputs checked and prepared,
:func:`simulate` (one run of a workload under one set of coefficients) and its :class:`SimResult`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bayeslat import features as F
from bayeslat.errors import SpecError
from bayeslat.simulate.kernel import COUNTERS, ST_DONE, _sim_kernel

METRICS = ("ttft_ms", "itl_ms", "e2e_ms")


def discrepancy_key(metric: str, stat: str) -> str:
    """Key of a simulator-discrepancy SD (``draws.sim_sd``, :func:`bayeslat.simulate.discrepancy.sim_discrepancy`): the metric
    ("e2e", no unit) for its mean, else "e2e_p90" / "e2e_p99"."""
    return metric if stat == "mean" else f"{metric}_{stat}"


TRACE_COLUMNS = ("t_us", *F.STATS, "regime", "dt_ms", "n_running", "n_waiting", "kv_used", "kv_cached", "n_tokens")

_SERVER_KEYS = (
    "max_num_seqs",
    "max_num_batched_tokens",
    "block_size",
    "kv_blocks",
    "cpu_kv_blocks",
    "chunked_prefill",
    "prefix_caching",
    "max_model_len",
)
_SERVER_DEFAULTS = {
    "max_num_seqs": 1024,
    "max_num_batched_tokens": 8192,
    "block_size": 16,
    "cpu_kv_blocks": 0,
    "chunked_prefill": True,
    "prefix_caching": True,
    "max_model_len": None,
}


@dataclass
class SimResult:
    """Per-request outputs (``requests``), run summary and optional per-step ``trace``."""

    requests: pd.DataFrame
    summary: dict
    trace: pd.DataFrame | None = None
    counters: dict = field(default_factory=dict)


def _server_params(server) -> dict:
    out = {}
    for k in _SERVER_KEYS:
        if isinstance(server, dict):
            v = server.get(k, None)
        else:
            v = getattr(server, k, None)
        if v is None:
            if k == "kv_blocks":
                raise SpecError("kv_blocks (GPU KV-cache capacity in blocks) is required by the simulator", field="kv_blocks")
            v = _SERVER_DEFAULTS[k]
        out[k] = v
    for k in ("max_num_seqs", "max_num_batched_tokens", "block_size"):
        if int(out[k]) < 1:
            raise SpecError(f"must be >= 1, got {out[k]}", field=k)
    if int(out["kv_blocks"]) < 1:
        raise SpecError(f"must be >= 1, got {out['kv_blocks']}", field="kv_blocks")
    return out


def _ctx_array(ctx) -> np.ndarray:
    arr = ctx.to_array() if isinstance(ctx, F.FeatureContext) else np.asarray(ctx, dtype=np.float64)
    if arr.shape != (len(F.CONTEXT_FIELDS),):
        raise SpecError(f"feature context must have {len(F.CONTEXT_FIELDS)} entries, got {arr.shape}", field="ctx")
    return np.ascontiguousarray(arr, dtype=np.float64)


def _beta_array(beta) -> np.ndarray:
    b = np.asarray(beta, dtype=np.float64)
    if b.shape == (F.N_BETA,):
        b = np.broadcast_to(b, (len(F.REGIMES), F.N_BETA))
    if b.shape != (len(F.REGIMES), F.N_BETA):
        raise SpecError(f"beta must have shape ({len(F.REGIMES)}, {F.N_BETA}) or ({F.N_BETA},), got {b.shape}", field="beta")
    return np.ascontiguousarray(b)


def _prepare(workload, srv: dict) -> dict:
    """Kernel inputs that depend on the workload and server only (reused across draws)."""
    w = workload
    n = len(w)
    arrival = w.arrival_us.astype(np.float64)
    timeout = w.timeout_us
    deadline = np.where(timeout >= 0, arrival + timeout.astype(np.float64), np.inf)
    dorder = np.argsort(deadline, kind="stable").astype(np.int64)
    bs = int(srv["block_size"])
    need_blocks = -(-(w.input_tokens + w.output_tokens - 1) // bs)
    reject = need_blocks > int(srv["kv_blocks"])
    if srv.get("max_model_len"):
        reject |= (w.input_tokens + w.output_tokens) > int(srv["max_model_len"])
    # remap prefix groups to 0..G-1; group block count = min over members of prefix_length // bs
    grp = np.full(n, -1, dtype=np.int64)
    has = w.prefix_group >= 0
    if has.any():
        uniq, inv = np.unique(w.prefix_group[has], return_inverse=True)
        grp[has] = inv
        gnb = np.full(len(uniq), np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(gnb, inv, w.prefix_length[has] // bs)
    else:
        gnb = np.zeros(0, dtype=np.int64)
    return {
        "arrival": arrival,
        "prompt": w.input_tokens,
        "outlen": w.output_tokens,
        "grp": grp,
        "deadline": deadline,
        "dorder": dorder,
        "reject": reject,
        "gnb": gnb,
    }


def _run_kernel(prep, srv, ctx_arr, beta, alpha, step_noise, seed, record):
    return _sim_kernel(
        prep["arrival"],
        prep["prompt"],
        prep["outlen"],
        prep["grp"],
        prep["deadline"],
        prep["dorder"],
        prep["reject"],
        prep["gnb"],
        int(srv["max_num_seqs"]),
        int(srv["max_num_batched_tokens"]),
        int(srv["block_size"]),
        int(srv["kv_blocks"]),
        int(srv["cpu_kv_blocks"] or 0),
        bool(srv["chunked_prefill"]),
        bool(srv["prefix_caching"]),
        ctx_arr,
        beta,
        np.asarray(alpha, dtype=np.float64),
        float(step_noise),
        int(seed),
        bool(record),
        1.0 / F.BETA_SCALE,
    )


def _q(v: np.ndarray) -> dict:
    if len(v) == 0:
        return {"mean": float("nan"), "p90": float("nan"), "p99": float("nan")}
    return {"mean": float(v.mean()), "p90": float(np.quantile(v, 0.9)), "p99": float(np.quantile(v, 0.99))}


def _metric_arrays(prep, out):
    state, tq, ts, tf, tfin = out[:5]
    arr = prep["arrival"]
    ok = state == ST_DONE
    ttft = (tf - arr) / 1e3
    e2e = (tfin - arr) / 1e3
    n = prep["outlen"]
    with np.errstate(invalid="ignore", divide="ignore"):
        itl = np.where(n > 1, (e2e - ttft) / (n - 1), np.nan)
    return ok, ttft, itl, e2e


def simulate(
    workload, ctx, server, beta, alpha, *, step_noise: float = 0.0, seed: int = 0, record_steps: bool = False
) -> SimResult:
    """Simulate ``workload`` (:class:`bayeslat.data.workload.Workload`) on one vLLM instance.

    ``ctx``: FeatureContext (or its array); ``server``: dict or ServerConfig-like with
    max_num_seqs, max_num_batched_tokens, block_size, kv_blocks (required), cpu_kv_blocks,
    chunked_prefill, prefix_caching (optional max_model_len); ``beta`` (N_REGIMES, N_BETA) or
    (N_BETA,) ms per scaled unit; ``alpha`` (N_ALPHA,) ms per scaled unit; ``step_noise`` relative
    sd of each step time. Returns a :class:`SimResult`.
    """
    srv = _server_params(server)
    prep = _prepare(workload, srv)
    ctx_arr = _ctx_array(ctx)
    b = _beta_array(beta)
    a = np.asarray(alpha, dtype=np.float64).reshape(-1)
    if a.shape != (F.N_ALPHA,):
        raise SpecError(f"alpha must have {F.N_ALPHA} entries, got {a.shape}", field="alpha")
    if len(workload) == 0:
        raise SpecError("empty workload", field="workload")
    t0 = time.perf_counter()
    out = _run_kernel(prep, srv, ctx_arr, b, a, step_noise, seed, record_steps)
    wall = time.perf_counter() - t0
    state, tq, ts, tf, tfin, npre, cached, computed, loaded, qd, counters, trace = out
    ok, ttft, itl, e2e = _metric_arrays(prep, out)
    arr = prep["arrival"]
    df = pd.DataFrame(
        {
            "arrival_us": workload.arrival_us,
            "input_tokens": workload.input_tokens,
            "output_tokens": workload.output_tokens,
            "prefix_group": workload.prefix_group,
            "queued_us": tq,
            "scheduled_us": ts,
            "first_token_us": tf,
            "finish_us": tfin,
            "ttft_ms": np.where(ok, ttft, np.nan),
            "e2e_ms": np.where(ok, e2e, np.nan),
            "itl_ms": np.where(ok, itl, np.nan),
            "alpha_ms": (tq - arr) / 1e3,
            "queue_depth": qd,
            "preemptions": npre,
            "cached_tokens": cached,
            "computed_tokens": computed,
            "loaded_tokens": loaded,
            "failed": state != ST_DONE,
        }
    )
    c = dict(zip(COUNTERS, counters.tolist()))
    for k in ("steps", "preemptions", "max_kv_used", "max_running", "max_batch_tokens", "prefill_tokens", "decode_tokens"):
        c[k] = int(c[k])
    summary = {m: _q(v[ok & np.isfinite(v)]) for m, v in (("ttft_ms", ttft), ("itl_ms", itl), ("e2e_ms", e2e))}
    summary.update(
        {
            "requests": int(len(df)),
            "n_success": int(ok.sum()),
            "n_failed": int((~ok).sum()),
            "steps": c["steps"],
            "preemptions": c["preemptions"],
            "sim_wall_s": wall,
            "sim_time_s": (c["end_us"] - arr[0]) / 1e6,
        }
    )
    tr = None
    if record_steps:
        tr = pd.DataFrame(trace[:, :16], columns=list(TRACE_COLUMNS))
        tr["kv_free"] = trace[:, 16]
        tr["regime"] = tr["regime"].astype(np.int64)
    return SimResult(requests=df, summary=summary, trace=tr, counters=c)
