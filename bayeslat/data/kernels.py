"""Real per-kernel timings of vLLM's own kernels on several GPUs (the bundled ``kernels.parquet``)
and their roofline physics: the data that fits the hardware level (:mod:`bayeslat.model.hardware`).

Source: NVIDIA aiconfigurator's kernel databases (Apache-2.0), staged in
``shared/data/kernels/aiconfigurator`` (its README gives the collection method): one kernel call
on one GPU, timed with CUDA events after warm-up, mean in ms. :func:`compact` turns the staged
CSVs into one long table of the five kernel families a vLLM step is made of:

========== ===================================================== ===============================
family     shape columns (``s0``...)                              maps onto the step features
========== ===================================================== ===============================
gemm       m (tokens), n, k                                       linear compute, weight loading
prefill    batch, seq_len, heads, kv_heads, head_dim (per GPU)    prefill attention
decode     batch, kv_len, heads, kv_heads, head_dim (per GPU)     decode attention (KV reads)
moe        tokens, hidden, inter, topk, experts, moe_tp, moe_ep   fused MoE (routing + experts)
allreduce  gpus, elements (bf16), vLLM custom all-reduce, graph   TP all-reduce
========== ===================================================== ===============================

Repeated keys (repeated collection runs, the MHA rows measured twice) are averaged. Versions are
kept as ``major.minor`` (``0.14``, ``0.19``): the kernels change between vLLM releases about as
much as between GPU generations, so the version is a column of its own, never folded into the GPU.

:func:`kernel_physics` gives each row its roofline inputs from a GPU datasheet: FLOP time at
the dense BF16 peak, byte time at the DRAM (or, for the all-reduce, link) bandwidth. A byte
working set that fits in the datasheet's L2 (``memory.l2_cache_mb``) is not DRAM traffic in a
benchmark loop that replays the same call, so its byte time is 0 there; in a real step the
weights streaming through L2 evict it, which is why the efficiency that transfers is the DRAM one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from bayeslat.config.hardware import HardwareSpec, load_hardware
from bayeslat.errors import SpecError

FAMILIES = ("gemm", "prefill", "decode", "moe", "allreduce")
SHAPES = {
    "gemm": ("m", "n", "k"),
    "prefill": ("batch", "seq_len", "heads", "kv_heads", "head_dim"),
    "decode": ("batch", "kv_len", "heads", "kv_heads", "head_dim"),
    "moe": ("tokens", "hidden", "inter", "topk", "experts", "moe_tp", "moe_ep"),
    "allreduce": ("gpus", "elements"),
}
N_SHAPE = max(len(v) for v in SHAPES.values())
SHAPE_COLS = tuple(f"s{i}" for i in range(N_SHAPE))
# aiconfigurator's system names -> the bundled datasheets
GPU_DATASHEETS = {
    "a100_sxm": "a100-sxm-80gb",
    "l40s": "l40s",
    "h100_sxm": "h100-sxm",
    "h200_sxm": "h200-sxm",
    "b200_sxm": "b200-sxm",
}
BF16 = 2.0
FILE = "kernels.parquet"
_SOURCES = {
    "gemm": ("gemm_bf16_vllm.csv.gz", ("m", "n", "k")),
    "prefill": ("context_attention_bf16_vllm.csv.gz", ("batch_size", "seq_len", "num_heads", "num_kv_heads", "head_dim")),
    "decode": ("generation_attention_bf16_vllm.csv.gz", ("batch_size", "kv_len", "num_heads", "num_kv_heads", "head_dim")),
    "moe": (
        "moe_bf16_vllm.csv.gz",
        ("num_tokens", "hidden_size", "inter_size", "topk", "num_experts", "moe_tp_size", "moe_ep_size"),
    ),
    "allreduce": ("allreduce_vllm_custom.csv.gz", ("num_gpus", "message_elems")),
}


def _version(v) -> str:
    parts = str(v).split(".")
    if len(parts) < 2 or not parts[0].isdigit() or not parts[1].isdigit():
        raise SpecError(f"not a vLLM version: {v!r}", field="vllm_version")
    return f"{int(parts[0])}.{int(parts[1])}"


def compact(src: str | Path) -> tuple[pd.DataFrame, dict]:
    """The staged aiconfigurator CSVs in ``src`` as one long table (columns ``gpu``, ``version``,
    ``family``, ``s0``..``s6``, ``latency_ms``) and a report of what was left out and why.

    Kept: the vLLM BF16 tables of the GPUs with a bundled datasheet (:data:`GPU_DATASHEETS`);
    the all-reduce in CUDA-graph mode (how a decode step runs it); for MoE, both router skews
    (averaged: the table's ``distribution`` is synthetic, not a real router). Left out, counted in
    the report: rows of other GPUs, eager-mode all-reduce, rows with a non-positive latency."""
    src = Path(src)
    parts, report = [], {}
    for fam, (fname, cols) in _SOURCES.items():
        path = src / fname
        if not path.is_file():
            raise SpecError("kernel table missing", file=str(path))
        df = pd.read_csv(path)
        need = {"gpu", "vllm_version", "latency_ms", *cols}
        missing = sorted(need - set(df.columns))
        if missing:
            raise SpecError(f"columns missing: {missing}", file=str(path), field=missing[0])
        skipped = {}
        if fam == "allreduce":
            eager = df["mode"] != "vllm_graph"
            skipped["eager mode (a decode step replays a CUDA graph)"] = int(eager.sum())
            df = df[~eager]
        other = ~df["gpu"].isin(list(GPU_DATASHEETS))
        skipped["GPU without a bundled datasheet"] = int(other.sum())
        df = df[~other]
        bad = ~(df["latency_ms"] > 0) | ~np.isfinite(df["latency_ms"])
        skipped["latency not a positive number"] = int(bad.sum())
        df = df[~bad]
        out = pd.DataFrame({"gpu": df["gpu"].astype(str), "version": df["vllm_version"].map(_version), "family": fam})
        for i, c in enumerate(cols):
            out[f"s{i}"] = df[c].astype(np.float64).to_numpy()
        for i in range(len(cols), N_SHAPE):
            out[f"s{i}"] = 0.0
        out["latency_ms"] = df["latency_ms"].astype(np.float64).to_numpy()
        n_raw = len(out)
        out = out.groupby(["gpu", "version", "family", *SHAPE_COLS], as_index=False, sort=True)["latency_ms"].mean()
        report[fam] = {"file": fname, "rows_in": int(n_raw + sum(skipped.values())), "rows_out": len(out)}
        report[fam]["skipped"] = {k: v for k, v in skipped.items() if v}
        report[fam]["repeated keys averaged"] = int(n_raw - len(out))
        parts.append(out)
    table = pd.concat(parts, ignore_index=True)
    for c in SHAPE_COLS:
        table[c] = table[c].astype(np.float32)
    table["latency_ms"] = table["latency_ms"].astype(np.float32)
    return table, report


def build(src: str | Path, out: str | Path | None = None) -> dict:
    """Write the compacted table to ``out`` (default: the package's ``data/kernels.parquet``);
    return the :func:`compact` report."""
    table, report = compact(src)
    out = Path(out) if out is not None else Path(__file__).parent / FILE
    table.to_parquet(out, index=False, compression="zstd")
    return report


def load(path: str | Path | None = None) -> pd.DataFrame:
    """The bundled kernel table (or one written by :func:`build`)."""
    p = Path(path) if path is not None else Path(__file__).parent / FILE
    if not p.is_file():
        raise SpecError("kernel table not found", file=str(p))
    df = pd.read_parquet(p)
    need = {"gpu", "version", "family", "latency_ms", *SHAPE_COLS}
    missing = sorted(need - set(df.columns))
    if missing:
        raise SpecError(f"columns missing: {missing}", file=str(p), field=missing[0])
    unknown = sorted(set(df["family"]) - set(FAMILIES))
    if unknown:
        raise SpecError(f"unknown kernel families {unknown}; known: {list(FAMILIES)}", file=str(p), field="family")
    return df


def serving_shapes(df: pd.DataFrame) -> pd.DataFrame:
    """The rows whose shapes a vLLM step of a real model runs: GEMMs with n and k >= 256 (a 4k
    hidden size split 8 ways is 512), prefill chunks of >= 16 tokens, decode attention over >= 256
    KV tokens in all; every MoE and all-reduce row. The tables also time toy shapes (n = 32), whose
    launch-bound behaviour would otherwise weigh as much as the shapes that matter."""
    fam = df["family"].to_numpy()
    s0, s1, s2 = (df[c].to_numpy(np.float64) for c in SHAPE_COLS[:3])
    keep = np.ones(len(df), dtype=bool)
    keep &= ~((fam == "gemm") & ((s1 < 256) | (s2 < 256)))
    keep &= ~((fam == "prefill") & (s1 < 16))
    keep &= ~((fam == "decode") & (s0 * s1 < 256))
    return df[keep].reset_index(drop=True)


def table_hash(df: pd.DataFrame) -> str:
    """A short hash of a kernel table's content (recorded in a hardware fit's attrs)."""
    h = hashlib.sha256(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def datasheet(gpu: str) -> HardwareSpec:
    """The datasheet of a kernel table's GPU name (:data:`GPU_DATASHEETS`) or of any datasheet key."""
    return load_hardware(GPU_DATASHEETS.get(gpu, gpu))


def kernel_physics(df: pd.DataFrame, hw: HardwareSpec, benchmark_loop: bool = True) -> dict[str, np.ndarray]:
    """Roofline inputs of kernel rows on GPU ``hw``: ``flop_ms`` (FLOPs / dense BF16 peak),
    ``byte_ms`` (DRAM bytes / bandwidth; all-reduce: ring bytes / link bandwidth), ``flops`` and
    ``bytes`` (the raw counts). Rows of any family, any GPU column: only the shape columns are
    read. ``benchmark_loop``: the call is replayed on the same data (the tables), so a working set
    within L2 costs no DRAM time; False for a call inside a real step, where the weights of the
    other layers have evicted it."""
    fam = df["family"].to_numpy()
    s = [df[c].to_numpy(np.float64) for c in SHAPE_COLS]
    n = len(df)
    flops, nbytes = np.zeros(n), np.zeros(n)
    m = fam == "gemm"
    mm, nn, kk = s[0][m], s[1][m], s[2][m]
    flops[m] = 2.0 * mm * nn * kk
    nbytes[m] = BF16 * (mm * kk + kk * nn + mm * nn)
    for name in ("prefill", "decode"):
        m = fam == name
        b, L, H, KVH, hd = (v[m] for v in s[:5])
        if name == "prefill":
            pairs = b * L * (L + 1) / 2.0  # causal
            tokens = b * L
            # Q and O per token, K and V per token (read once by a flash kernel)
            nbytes[m] = BF16 * tokens * hd * (2.0 * H + 2.0 * KVH)
        else:
            pairs = b * L
            nbytes[m] = BF16 * hd * (2.0 * KVH * b * L + 2.0 * H * b)
        flops[m] = 4.0 * pairs * H * hd  # QK^T and PV
    m = fam == "moe"
    T, D, inter, topk, E, tp, ep = (v[m] for v in s[:7])
    local = E / np.maximum(ep, 1.0)
    width = inter / np.maximum(tp, 1.0)
    # expected local experts touched by T tokens each routing to topk of E (uniform router)
    touched = local * (1.0 - (1.0 - topk / E) ** T)
    pairs = T * topk / np.maximum(ep, 1.0)  # token-expert pairs this GPU computes
    flops[m] = 2.0 * pairs * 3.0 * D * width  # gate, up, down
    nbytes[m] = BF16 * (touched * 3.0 * D * width + 2.0 * T * D)
    m = fam == "allreduce"
    g, elems = s[0][m], s[1][m]
    nbytes[m] = BF16 * elems * 2.0 * (g - 1.0) / g  # ring: reduce-scatter + all-gather
    byte_bw = np.where(fam == "allreduce", hw.link_bandwidth, hw.hbm_bandwidth)
    l2 = hw.l2_bytes if benchmark_loop else 0.0
    dram = np.where((fam != "allreduce") & (nbytes <= l2), 0.0, nbytes)
    return {
        "flops": flops,
        "bytes": nbytes,
        "flop_ms": flops / hw.bf16_flops * 1e3,
        "byte_ms": dram / byte_bw * 1e3,
    }


def interpolate(df: pd.DataFrame, family: str, gpu: str, version: str, query: dict[str, np.ndarray]) -> np.ndarray:
    """Measured latency (ms) of ``family`` kernels on ``gpu`` / ``version`` at the shapes in
    ``query`` ({shape column name of :data:`SHAPES`: values}), interpolated linearly in log-log
    space between grid points and along the last segment beyond the grid's ends.
    Columns the query gives as one value that is on the grid are matched exactly; the others are
    interpolated, each over the grid's values of that column."""
    from scipy.interpolate import RegularGridInterpolator

    names = SHAPES[family]
    unknown = sorted(set(query) - set(names))
    if unknown:
        raise SpecError(f"unknown shape columns {unknown} of {family}; known: {list(names)}", field=unknown[0])
    d = df[(df["family"] == family) & (df["gpu"] == gpu) & (df["version"] == version)]
    if d.empty:
        raise SpecError(f"no {family} rows of {gpu} at vLLM {version}", field="gpu")
    q = {k: np.atleast_1d(np.asarray(v, dtype=np.float64)) for k, v in query.items()}
    n = max(len(v) for v in q.values())
    col = {name: f"s{i}" for i, name in enumerate(names)}
    for k, v in q.items():
        if v.size == 1 and np.isin(v[0], d[col[k]].unique()):
            d = d[d[col[k]] == v[0]]
    free = [k for k in names if k in q and d[col[k]].nunique() > 1]
    fixed_other = [k for k in names if k not in q and d[col[k]].nunique() > 1]
    if fixed_other:
        raise SpecError(f"{family} rows vary in {fixed_other}: give them in the query", field=fixed_other[0])
    if not free:
        return np.full(n, float(d["latency_ms"].mean()))
    grids = [np.log(np.sort(d[col[k]].unique())) for k in free]
    table = d.groupby([col[k] for k in free])["latency_ms"].mean()
    full = np.full([len(g) for g in grids], np.nan)
    idx = tuple(np.searchsorted(g, np.log(table.index.get_level_values(i).to_numpy(np.float64))) for i, g in enumerate(grids))
    full[idx] = np.log(table.to_numpy(np.float64))
    for ax in range(full.ndim):  # missing grid cells (shapes the collector skipped): extrapolated
        if np.isnan(full).any():
            full = np.moveaxis(_fill_axis0(np.moveaxis(full, ax, 0), grids[ax]), 0, ax)
    pts = np.column_stack([np.log(np.broadcast_to(q[k], (n,))) for k in free])
    if any(len(g) < 2 for g in grids):
        raise SpecError(f"{family}: a shape column has a single grid value; give it exactly", field="query")
    return np.exp(RegularGridInterpolator(grids, full, bounds_error=False, fill_value=None)(pts))


def _fill_axis0(a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Fill NaNs of ``a`` along its first axis (grid ``x``, log scale): linear in log-log between
    measured points, and beyond them along the line through the two nearest (a kernel past the
    grid's largest batch keeps its per-token slope instead of going flat)."""
    flat = a.reshape(a.shape[0], -1).copy()
    for j in range(flat.shape[1]):
        col = flat[:, j]
        ok = ~np.isnan(col)
        if ok.all() or ok.sum() == 0:
            continue
        xi, yi = x[ok], col[ok]
        out = np.interp(x, xi, yi)
        if ok.sum() >= 2:
            lo, hi = x < xi[0], x > xi[-1]
            out[lo] = yi[0] + (x[lo] - xi[0]) * (yi[1] - yi[0]) / (xi[1] - xi[0])
            out[hi] = yi[-1] + (x[hi] - xi[-1]) * (yi[-1] - yi[-2]) / (xi[-1] - xi[-2])
        col[~ok] = out[~ok]
    return flat.reshape(a.shape)


def decode_step_calls(model, tp: int, batch: float, context: float) -> list[tuple[str, tuple, float]]:
    """The kernel calls of one decode step of ``model`` (a ``ModelSpec``) at TP ``tp``: ``batch``
    sequences of ``context`` KV tokens each, as ``(family, shape, calls per step)`` in the shape
    columns of :data:`SHAPES` (per GPU). Per layer: the QKV and output GEMMs, the gate/up and down
    GEMMs (a MoE layer: one fused-MoE call instead), decode attention, two all-reduces at TP > 1;
    once: the lm_head GEMM. Norms, RoPE, sampling and the host are not kernels of the tables (the
    step model's overhead terms)."""
    m, b, c = model, float(batch), float(context)
    H, KVH, hd, D, L = m.num_heads, m.num_kv_heads, m.head_dim, m.hidden_size, m.num_layers
    n_moe = m.num_moe_layers if m.num_experts else 0
    out = [
        ("gemm", (b, (H + 2 * KVH) * hd / tp, D), L),
        ("gemm", (b, D, H * hd / tp), L),
        ("gemm", (b, m.vocab_size / tp, D), 1),
        ("decode", (b, c, H / tp, max(KVH / tp, 1.0), hd), L),
    ]
    if L - n_moe:
        inter = m.intermediate_size / tp
        out += [("gemm", (b, 2 * inter, D), L - n_moe), ("gemm", (b, D, inter), L - n_moe)]
    if n_moe:
        inter = m.moe_intermediate_size or m.intermediate_size
        out.append(("moe", (b, D, inter, m.experts_per_token, m.num_experts, tp, 1), n_moe))
    if tp > 1:
        out.append(("allreduce", (tp, b * D), 2 * L))
    return [(fam, tuple(float(v) for v in shape), float(n)) for fam, shape, n in out]


def decode_step_sum(df: pd.DataFrame, model, gpu: str, version: str, tp: int, batch, context: float) -> dict[str, np.ndarray]:
    """Kernel-sum time (ms) of one decode step (:func:`decode_step_calls`) of ``model`` at TP
    ``tp`` on ``gpu``, for each ``batch`` (array) of sequences of ``context`` KV tokens, from the
    measured kernels (:func:`interpolate`). Returns the parts (``gemm``, ``moe``, ``attention``,
    ``allreduce``) and their ``total``. Multi-head (not grouped) attention with more KV heads per
    GPU than the grid's 8 is timed as the same KV bytes: ``batch x (kv_heads / 8)`` sequences of 8
    heads."""
    b = np.atleast_1d(np.asarray(batch, dtype=np.float64))
    part = {"gemm": "gemm", "moe": "moe", "decode": "attention", "allreduce": "allreduce"}
    out = {k: np.zeros_like(b) for k in ("gemm", "moe", "attention", "allreduce")}
    for i, bi in enumerate(b):
        for fam, shape, n in decode_step_calls(model, tp, bi, context):
            if fam == "decode":
                widen = max(shape[3] / 8.0, 1.0)
                shape = (shape[0] * widen, shape[1], shape[2] / widen, shape[3] / widen, shape[4])
            q = dict(zip(SHAPES[fam], shape))
            out[part[fam]][i] += n * interpolate(df, fam, gpu, version, q)[0]
    out["total"] = out["gemm"] + out["moe"] + out["attention"] + out["allreduce"]
    return out
