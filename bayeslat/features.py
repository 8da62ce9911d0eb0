"""Physics features of a scheduler step (beta) and of a request (alpha).

A step is summarised by a small vector of *batch statistics* (``STATS``), sufficient for every
beta feature; a deployment (model config x GPU datasheet x server config) by a
:class:`FeatureContext` of per-GPU constants. The beta features are roofline times and overhead
counts computed from the two by :func:`step_features_kernel` (numba), which the simulator, the
trace reconstruction and the model share. Features are linear in the statistics except the MoE
weight-loading term (expected number of experts touched by ``T`` tokens), so windows of steps
are sums of per-step feature rows.

Units: raw time-like features are microseconds of roofline time; the model sees
``raw / FEATURE_SCALE`` so that every column is O(1) for 0-64k-token contexts and coefficients
are in milliseconds of step time per scaled unit (dimensionless efficiency multipliers for the
roofline terms).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields

import numba
import numpy as np

from bayeslat import config as _s

SPEC_VERSION = "bayeslat-features/3"  # /2: context_overhead (15 beta features); /3: alpha multiproc, ctx workers

# ---------------------------------------------------------------------------------------------
# Batch statistics of one step (float64 vector, in this order)
# ---------------------------------------------------------------------------------------------
STATS = (
    "n_prefill",  # requests with a prefill chunk in the step
    "n_decode",  # requests decoding one token in the step
    "prefill_tokens",  # sum_i t_i, new prompt tokens computed this step
    "prefill_attn_pairs",  # sum_i t_i * (c_i + (t_i + 1) / 2): causal query-key pairs of prefill chunks
    "prefill_ctx_tokens",  # sum_i (c_i + t_i): KV tokens touched (read + written) by prefill attention
    "decode_ctx_tokens",  # sum_j (c_j + 1): KV tokens read by decode attention (= query-key pairs)
    "offload_tokens",  # KV tokens moved between GPU and CPU this step (loads + stores)
    "n_preempted",  # requests preempted (recompute) this step
)
S = {name: i for i, name in enumerate(STATS)}
N_STATS = len(STATS)

# ---------------------------------------------------------------------------------------------
# Beta features (order fixed; raw unit, scale dividing raw into the model's O(1) column)
# ---------------------------------------------------------------------------------------------
BETA_FEATURES = (
    # name,               raw unit,  scale,  meaning
    ("prefill_compute", "us", 1000.0, "prefill FLOPs (linear layers + causal attention + lm_head) / peak dense FLOP/s"),
    ("decode_compute", "us", 1000.0, "decode FLOPs (linear layers + attention over contexts + lm_head) / peak"),
    ("weight_load", "us", 1000.0, "weight bytes one GPU reads per step (MoE: experts touched by the step's tokens) / HBM BW"),
    ("tp_comm", "us", 1000.0, "tensor-parallel ring all-reduce bytes per GPU / interconnect BW (0 at TP=1)"),
    ("prefill_kv", "us", 1000.0, "KV bytes read and written by prefill attention / HBM BW"),
    ("decode_kv", "us", 1000.0, "KV bytes read by decode attention / HBM BW"),
    ("moe_dispatch", "us", 1000.0, "expert-parallel all-to-all dispatch+combine bytes / interconnect BW (0 without EP)"),
    ("kv_offload", "us", 1000.0, "KV bytes moved GPU<->CPU / PCIe BW (0 without CPU offload)"),
    ("layer_overhead", "layers", 100.0, "number of decoder layers (kernel launches, norms per layer)"),
    ("request_overhead", "requests", 100.0, "requests in the batch (input prep, sampling, output processing)"),
    ("moe_layer_overhead", "layers", 100.0, "number of MoE layers (router, permute, grouped-GEMM launch)"),
    ("step_overhead", "steps", 1.0, "constant per step (scheduler, CUDA graph replay, sync)"),
    ("prefill_overhead", "requests", 10.0, "requests with a prefill chunk (varlen attention metadata, chunk bookkeeping)"),
    (
        "tp_sync_overhead",
        "collectives",
        100.0,
        "TP all-reduce calls per step (2 per layer at TP > 1): per-collective launch + synchronisation latency",
    ),
    (
        "context_overhead",
        "tokens",
        1e5,
        "KV tokens held by the batch's requests (prefill + decode contexts): per-token work that is not HBM traffic (block tables, slot mapping, attention metadata, paged-attention split overhead)",
    ),
)
BETA_NAMES = tuple(f[0] for f in BETA_FEATURES)
BETA_UNITS = tuple(f[1] for f in BETA_FEATURES)
BETA_SCALE = np.array([f[2] for f in BETA_FEATURES])
BETA_DOC = {f[0]: f[3] for f in BETA_FEATURES}
N_BETA = len(BETA_FEATURES)
B = {name: i for i, name in enumerate(BETA_NAMES)}
# The two parts of a step time that a probe update scales separately (probe.update_deployment):
# "fixed", what a step costs whatever its tokens and contexts (streaming the weights, per-layer
# and per-collective launches, the step constant), and "load", what grows with them (FLOPs, KV
# traffic, all-reduce bytes, per-request work). A model's deviation from the physics features can
# differ between the two: measured on held-out 7B (leave-one-model-out), its fixed part ran 1.5x
# the prediction and its load part 0.65x, so one factor fitted at one load level is wrong at others.
STEP_PARTS = ("fixed", "load")
FIXED_STEP_FEATURES = ("weight_load", "layer_overhead", "moe_layer_overhead", "step_overhead", "tp_sync_overhead")
FIXED_STEP_MASK = np.isin(np.asarray(BETA_NAMES), FIXED_STEP_FEATURES)

# Alpha features of one request: the delay from arrival to entering the wait queue.
ALPHA_FEATURES = (
    ("const", "1", 1.0, "constant API / ingest overhead"),
    ("prompt_tokens", "tokens", 1000.0, "prompt length (tokenisation, request validation)"),
    ("queue_depth", "requests", 100.0, "running + waiting requests at arrival (API server contention)"),
    (
        "multiproc",
        "requests",
        1.0,
        "1 when the engine drives multi-process GPU workers (TP > 1): per-request "
        "executor time a single in-process worker does not pay (new-request broadcast to the workers, output gather)",
    ),
)
ALPHA_NAMES = tuple(f[0] for f in ALPHA_FEATURES)
ALPHA_UNITS = tuple(f[1] for f in ALPHA_FEATURES)
ALPHA_SCALE = np.array([f[2] for f in ALPHA_FEATURES])
ALPHA_DOC = {f[0]: f[3] for f in ALPHA_FEATURES}
N_ALPHA = len(ALPHA_FEATURES)

REGIMES = ("decode", "mixed", "prefill_heavy", "kv_bound")
REGIME_DOC = {
    "decode": "no prefill tokens; weight loading dominates memory traffic",
    "mixed": "prefill tokens present but prefill compute <= weight loading + decode KV time",
    "prefill_heavy": "prefill compute exceeds weight loading + decode KV time (compute bound)",
    "kv_bound": "no prefill tokens; decode KV reads exceed weight loading (long contexts / big batches)",
}


@dataclass(frozen=True)
class FeatureContext:
    """Per-GPU constants of one deployment, consumed by :func:`step_features_kernel`.

    Built from specs by :func:`feature_context`. All quantities are per GPU after sharding.
    """

    peak_flops_per_us: float  # dense tensor-core FLOP per microsecond (FP8 peak for 1-byte weights)
    hbm_bytes_per_us: float  # HBM bandwidth, bytes / us
    link_bytes_per_us: float  # GPU-GPU interconnect (NVLink, else PCIe), bytes / us
    pcie_bytes_per_us: float  # host link, bytes / us
    linear_flops_per_token: float  # FLOPs of all linear layers for one token (active MoE experts), per GPU
    attn_flops_per_pair: float  # FLOPs per query-key pair summed over layers (QK^T + PV), per GPU
    lm_head_flops_per_seq: float  # FLOPs of the lm_head for one sampled sequence, per GPU
    dense_weight_bytes: float  # non-expert weight bytes per GPU read every step
    expert_weight_bytes: float  # bytes of all routed-expert weights held per GPU
    num_experts: float  # routed experts per MoE layer (0 for dense)
    experts_per_token: float  # top-k
    kv_bytes_per_token: float  # KV-cache bytes of one token over all layers, per GPU
    allreduce_bytes_per_token: float  # TP all-reduce bytes per token over all layers, per GPU (0 at TP=1)
    dispatch_bytes_per_token: float  # EP all-to-all bytes per token over all MoE layers, per GPU (0 w/o EP)
    num_layers: float
    num_moe_layers: float
    workers: float = 1.0  # GPU worker processes of one engine (TP degree); > 1: multi-process executor

    def to_array(self) -> np.ndarray:
        return np.array([getattr(self, f.name) for f in fields(self)], dtype=np.float64)

    def to_dict(self) -> dict:
        return asdict(self)


CONTEXT_FIELDS = tuple(f.name for f in fields(FeatureContext))


def deployment_key(ctx: FeatureContext, hardware: str) -> str:
    """Identity of a deployment (model x GPU x parallelism x dtype) for the model's deployment
    level: the hardware name and a short hash of the feature context (every per-GPU constant the
    features use, rounded to 6 significant digits). Two runs with equal keys have the same
    physics; a key the fit has not seen is a new deployment."""
    arr = np.array([float(f"{v:.6g}") for v in ctx.to_array()])
    return f"{hardware}|{hashlib.sha256(arr.tobytes()).hexdigest()[:10]}"


C = {name: i for i, name in enumerate(CONTEXT_FIELDS)}


@numba.njit(cache=True)
def step_features_kernel(stats, ctx, out):
    """Raw (unscaled) beta features of one step. ``stats``: STATS vector; ``ctx``:
    ``FeatureContext.to_array()``; ``out``: float64[N_BETA], overwritten."""
    n_pf = stats[0]
    n_dec = stats[1]
    pf_tok = stats[2]
    tokens = pf_tok + n_dec
    peak = ctx[0]
    hbm = ctx[1]
    link = ctx[2]
    pcie = ctx[3]
    out[0] = (pf_tok * ctx[4] + stats[3] * ctx[5] + n_pf * ctx[6]) / peak
    out[1] = (n_dec * ctx[4] + stats[5] * ctx[5] + n_dec * ctx[6]) / peak
    touched = 0.0
    if ctx[9] > 0.0 and tokens > 0.0:
        # expected fraction of experts hit by `tokens` tokens each choosing top-k of E
        touched = 1.0 - (1.0 - ctx[10] / ctx[9]) ** tokens
    out[2] = (ctx[7] + touched * ctx[8]) / hbm if tokens > 0.0 else 0.0
    out[3] = tokens * ctx[12] / link
    out[4] = stats[4] * ctx[11] / hbm
    out[5] = stats[5] * ctx[11] / hbm
    out[6] = tokens * ctx[13] / link
    out[7] = stats[6] * ctx[11] / pcie
    out[8] = ctx[14]
    out[9] = n_pf + n_dec
    out[10] = ctx[15]
    out[11] = 1.0
    out[12] = n_pf
    out[13] = 2.0 * ctx[14] if ctx[12] > 0.0 else 0.0
    out[14] = stats[4] + stats[5]


@numba.njit(cache=True)
def regime_kernel(raw):
    """Regime index (into REGIMES) of one step from its raw beta features."""
    if raw[0] <= 0.0:  # no prefill compute -> no prefill tokens
        if raw[5] > raw[2]:
            return 3
        return 0
    if raw[0] > raw[2] + raw[5]:
        return 2
    return 1


@numba.njit(cache=True)
def _features_rows(stats, ctx, out, regime):
    row = np.empty(out.shape[1])
    for i in range(stats.shape[0]):
        step_features_kernel(stats[i], ctx, row)
        out[i, :] = row
        regime[i] = regime_kernel(row)


def step_features(stats: np.ndarray, ctx: FeatureContext | np.ndarray, scaled: bool = True):
    """Beta features of many steps.

    Parameters
    ----------
    stats : array (n_steps, N_STATS)
    ctx : FeatureContext or its array
    scaled : divide by BETA_SCALE (the model's O(1) columns; default) or return raw units.

    Returns
    -------
    features : array (n_steps, N_BETA); regime : int array (n_steps,) indexing REGIMES.
    """
    stats = np.ascontiguousarray(np.atleast_2d(np.asarray(stats, dtype=np.float64)))
    if stats.shape[1] != N_STATS:
        raise ValueError(f"stats must have {N_STATS} columns {STATS}, got shape {stats.shape}")
    arr = ctx.to_array() if isinstance(ctx, FeatureContext) else np.asarray(ctx, dtype=np.float64)
    out = np.empty((stats.shape[0], N_BETA))
    regime = np.empty(stats.shape[0], dtype=np.int64)
    _features_rows(stats, arr, out, regime)
    if scaled:
        out /= BETA_SCALE
    return out, regime


def multiproc(ctx) -> float:
    """1.0 when the deployment runs multi-process GPU workers (FeatureContext ``workers`` > 1, or a
    context array's last entry), else 0.0: the value of the ``multiproc`` alpha feature."""
    w = ctx.workers if isinstance(ctx, FeatureContext) else np.asarray(ctx, dtype=np.float64)[CONTEXT_FIELDS.index("workers")]
    return 1.0 if float(w) > 1.0 else 0.0


def alpha_features(prompt_tokens, queue_depth, multiproc: float = 0.0, *, scaled: bool = True) -> np.ndarray:
    """Alpha features (n, N_ALPHA) of requests: const, prompt tokens, queue depth at arrival,
    multi-process executor (0 / 1, :func:`multiproc` of the deployment)."""
    prompt_tokens = np.asarray(prompt_tokens, dtype=np.float64)
    queue_depth = np.broadcast_to(np.asarray(queue_depth, dtype=np.float64), prompt_tokens.shape)
    mp = np.broadcast_to(np.asarray(multiproc, dtype=np.float64), prompt_tokens.shape)
    out = np.column_stack([np.ones_like(prompt_tokens), prompt_tokens, queue_depth, mp])
    return out / ALPHA_SCALE if scaled else out


def batch_stats(new_tokens, context_before, is_prefill, offload_tokens=0.0, n_preempted=0.0) -> np.ndarray:
    """STATS vector of one step from per-request arrays.

    new_tokens[i]: tokens computed for request i this step (1 for a decode);
    context_before[i]: tokens already in its KV cache (computed or prefix-cached) before the step;
    is_prefill[i]: whether the request is (still) in prefill.
    """
    t = np.asarray(new_tokens, dtype=np.float64)
    c = np.asarray(context_before, dtype=np.float64)
    p = np.asarray(is_prefill, dtype=bool)
    d = ~p
    out = np.zeros(N_STATS)
    out[0] = p.sum()
    out[1] = d.sum()
    out[2] = t[p].sum()
    out[3] = (t[p] * (c[p] + (t[p] + 1.0) / 2.0)).sum()
    out[4] = (c[p] + t[p]).sum()
    out[5] = (c[d] + 1.0).sum()
    out[6] = offload_tokens
    out[7] = n_preempted
    return out


# ---------------------------------------------------------------------------------------------
# Deployment constants from specs
# ---------------------------------------------------------------------------------------------
def feature_context(model, hw, server) -> FeatureContext:
    """The :class:`FeatureContext` of a deployment (``config.ModelSpec`` x ``config.HardwareSpec`` x
    ``config.ServerConfig``), per GPU after TP / EP sharding, in the units the kernel uses:

    - ``peak_flops_per_us``: dense tensor-core FLOP/us; the FP8 peak when linear weights are 1 byte.
    - ``hbm_bytes_per_us``, ``pcie_bytes_per_us``: datasheet bandwidths in bytes/us;
      ``link_bytes_per_us``: NVLink if the sheet lists it (> 0), else PCIe.
    - ``linear_flops_per_token``: 2 x active linear params / TP (top-k experts, no lm_head).
    - ``attn_flops_per_pair``: L x 2 x (qk_dim + v_dim) x heads / TP (QK^T + PV per query-key pair).
    - ``lm_head_flops_per_seq``: 2 x hidden x vocab / TP per sampled sequence.
    - ``dense_weight_bytes``: weight bytes read every step with tokens (all but routed experts and
      the input embedding table); ``expert_weight_bytes``: routed experts held by the GPU, of which
      the kernel charges the expected fraction touched ``1 - (1 - k/E)**tokens``.
    - ``kv_bytes_per_token``: KV bytes of one token over all layers on the GPU (model dtype, or 1
      byte for ``kv_cache_dtype: fp8*``; MLA: compressed latent).
    - ``allreduce_bytes_per_token``: ``2 (tp-1)/tp * hidden * act_bytes`` x 2 all-reduces x L.
    - ``dispatch_bytes_per_token``: EP all-to-all (dispatch + combine) bytes over the MoE layers,
      0 unless ``expert_parallel`` spreads experts over TP x DP > 1 GPUs.

    Raises SpecError (naming ``tensor_parallel``) when TP cannot shard the model.
    """
    _s.validate_deployment(model, server)
    tp, ep = server.tensor_parallel, server.ep_size
    w = _s.weight_bytes_per_gpu(model, tp, ep)
    kvb = _s.kv_dtype_bytes(model, server)
    link = hw.nvlink_bandwidth if hw.nvlink_bandwidth > 0 else hw.pcie_bandwidth
    return FeatureContext(
        peak_flops_per_us=hw.peak_flops(model.weight_bytes) / 1e6,
        hbm_bytes_per_us=hw.hbm_bandwidth / 1e6,
        link_bytes_per_us=link / 1e6,
        pcie_bytes_per_us=hw.pcie_bandwidth / 1e6,
        linear_flops_per_token=_s.linear_flops_per_token(model, tp),
        attn_flops_per_pair=_s.attn_flops_per_pair(model, tp),
        lm_head_flops_per_seq=_s.lm_head_flops_per_seq(model, tp),
        dense_weight_bytes=w["dense"],
        expert_weight_bytes=w["experts"],
        num_experts=float(model.num_experts if model.model_class == "moe" else 0),
        experts_per_token=float(model.experts_per_token if model.model_class == "moe" else 0),
        kv_bytes_per_token=_s.kv_bytes_per_token(model, tp, kvb),
        allreduce_bytes_per_token=_s.allreduce_bytes_per_token(model, tp),
        dispatch_bytes_per_token=_s.dispatch_bytes_per_token(model, ep),
        num_layers=float(model.num_layers),
        num_moe_layers=float(model.num_moe_layers),
        workers=float(tp),
    )
