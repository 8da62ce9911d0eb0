"""Derived quantities of a deployment (all per GPU after TP / EP sharding unless the name says
``total``): parameters (:func:`param_counts`), weight bytes (:func:`weight_bytes_per_gpu`), KV
bytes per token (:func:`kv_bytes_per_token`), step FLOPs / bytes / communication
(:func:`step_flops`, :func:`step_bytes`, :func:`allreduce_bytes`, :func:`dispatch_bytes`,
:func:`offload_bytes`) and the GPU / CPU KV-cache capacity in blocks (:func:`kv_blocks`,
:func:`cpu_kv_blocks`), computed the way vLLM v0.15 profiles memory.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bayeslat.config.files import DTYPE_BYTES, GiB
from bayeslat.config.hardware import HardwareSpec
from bayeslat.config.model import ModelSpec
from bayeslat.config.server import ServerConfig, validate_deployment
from bayeslat.errors import SpecError


def param_counts(model: ModelSpec) -> dict[str, float]:
    """Parameter counts (elements, whole model, unsharded).

    Keys: ``embedding``, ``lm_head`` (0 if tied), ``attention``, ``dense_mlp``, ``routed_experts``
    (all experts), ``shared_experts``, ``router``, ``norms``, ``extra`` (vision tower etc.),
    ``total`` (decoder + embeddings, without ``extra``), ``active`` (per token: top-k experts).
    """
    h, L = model.hidden_size, model.num_layers
    emb = model.vocab_size * h
    head = 0 if model.tie_word_embeddings else emb
    attn = L * model.attn_params_per_layer()
    dense = model.num_dense_layers * model.dense_mlp_params()
    nm = model.num_moe_layers
    routed = nm * model.num_experts * model.expert_params()
    active_routed = nm * model.experts_per_token * model.expert_params()
    shared = nm * model.shared_params()
    router = nm * model.router_params()
    norms = (2 * L + 1) * h
    base = emb + head + attn + dense + shared + router + norms
    return {
        "embedding": emb,
        "lm_head": head,
        "attention": attn,
        "dense_mlp": dense,
        "routed_experts": routed,
        "shared_experts": shared,
        "router": router,
        "norms": norms,
        "extra": model.extra_params,
        "total": base + routed,
        "active": base + active_routed,
    }


def weight_bytes_per_gpu(model: ModelSpec, tp: int = 1, ep: int = 1) -> dict[str, float]:
    """Weight bytes held by one GPU.

    Attention, dense MLP, shared experts, embedding and lm_head are split over ``tp``; routed
    experts over ``ep`` GPUs with expert parallelism (whole experts), else over ``tp`` (each
    expert's width). Norms, router and the vision tower are replicated. Keys: ``dense`` (bytes
    read every step: everything but routed experts and the input embedding table), ``experts``,
    ``embedding``, ``replicated``, ``total``.
    """
    p = param_counts(model)
    ab, wb = model.act_bytes, model.weight_bytes
    attn = p["attention"] * model.attn_weight_bytes / tp
    mlp = (p["dense_mlp"] + p["shared_experts"]) * wb / tp
    experts = p["routed_experts"] * wb / (ep if ep > 1 else tp)
    emb = p["embedding"] * ab / tp
    head = p["lm_head"] * ab / tp
    repl = (p["norms"] + p["router"] + p["extra"]) * ab
    dense = attn + mlp + head + (p["norms"] + p["router"]) * ab + (emb if model.tie_word_embeddings else 0.0)
    return {
        "dense": dense,
        "experts": experts,
        "embedding": emb,
        "replicated": repl,
        "total": attn + mlp + experts + emb + head + repl,
    }


def kv_dtype_bytes(model: ModelSpec, server: ServerConfig | None = None) -> float:
    """Bytes per KV-cache element: the model dtype unless the server's kv_cache_dtype says fp8."""
    kd = (server.kv_cache_dtype if server else "auto") or "auto"
    if kd == "auto":
        return model.act_bytes
    if kd.startswith("fp8"):
        return 1.0
    if kd not in DTYPE_BYTES:
        raise SpecError(f"unknown kv_cache_dtype {kd!r}", file=server.source if server else None, field="kv_cache_dtype")
    return DTYPE_BYTES[kd]


def kv_bytes_per_token(model: ModelSpec, tp: int = 1, kv_bytes: float | None = None) -> float:
    """KV-cache bytes of one token over all layers on one GPU.

    Standard attention: ``L * 2 * ceil(kv_heads / tp) * head_dim * bytes`` (KV heads are
    replicated when kv_heads < tp). MLA: the compressed latent ``L * (kv_lora_rank +
    qk_rope_head_dim) * bytes``, replicated on every TP rank.
    """
    b = model.act_bytes if kv_bytes is None else kv_bytes
    if model.is_mla:
        return float(model.num_layers * (model.kv_lora_rank + model.qk_rope_head_dim) * b)
    heads = max(1, math.ceil(model.num_kv_heads / tp))
    return float(model.num_layers * 2 * heads * model.head_dim * b)


def linear_flops_per_token(model: ModelSpec, tp: int = 1) -> float:
    """FLOPs of the decoder's linear layers for one token on one GPU (2 per multiply-add):
    attention projections, dense MLPs, shared experts, router and the top-k routed experts,
    divided by ``tp`` (excludes the lm_head: :func:`lm_head_flops_per_seq`)."""
    p = param_counts(model)
    active_routed = model.num_moe_layers * model.experts_per_token * model.expert_params()
    lin = p["attention"] + p["dense_mlp"] + p["shared_experts"] + active_routed
    return 2.0 * lin / tp + 2.0 * p["router"]


def attn_flops_per_pair(model: ModelSpec, tp: int = 1) -> float:
    """FLOPs per query-key pair summed over layers on one GPU: QK^T (2*qk_dim) + PV (2*v_dim)
    per head, heads split over TP."""
    return float(model.num_layers * 2 * (model.qk_head_dim + model.o_head_dim) * model.num_heads / tp)


def lm_head_flops_per_seq(model: ModelSpec, tp: int = 1) -> float:
    """FLOPs of the lm_head for one sampled position on one GPU (vocab split over TP)."""
    return 2.0 * model.hidden_size * model.vocab_size / tp


def step_flops(model: ModelSpec, new_tokens, context_before, is_prefill, tp: int = 1) -> dict[str, float]:
    """FLOPs of one step on one GPU given its batch (per-request arrays, see
    ``features.batch_stats``): ``linear`` (all new tokens), ``attention`` (causal pairs of each
    prefill chunk ``t*(c+(t+1)/2)`` plus ``c+1`` pairs per decode), ``lm_head`` (one position
    per request), ``total``."""
    t = np.asarray(new_tokens, dtype=float)
    c = np.asarray(context_before, dtype=float)
    p = np.asarray(is_prefill, dtype=bool)
    pairs = float((t[p] * (c[p] + (t[p] + 1.0) / 2.0)).sum() + (c[~p] + 1.0).sum())
    lin = float(t[p].sum() + (~p).sum()) * linear_flops_per_token(model, tp)
    att = pairs * attn_flops_per_pair(model, tp)
    head = float(len(t)) * lm_head_flops_per_seq(model, tp)
    return {"linear": lin, "attention": att, "lm_head": head, "total": lin + att + head}


def expected_experts_touched(model: ModelSpec, tokens: float) -> float:
    """Expected fraction of routed experts hit when ``tokens`` tokens each pick top-k of E
    uniformly: ``1 - (1 - k/E)**tokens`` (0 for dense models or no tokens)."""
    if not model.num_experts or tokens <= 0:
        return 0.0
    return 1.0 - (1.0 - model.experts_per_token / model.num_experts) ** tokens


def step_bytes(
    model: ModelSpec, new_tokens, context_before, is_prefill, tp: int = 1, ep: int = 1, kv_bytes: float | None = None
) -> dict[str, float]:
    """HBM bytes one GPU moves in one step: ``weights`` (dense weights + routed experts touched),
    ``kv_read`` (prefill reads its context ``c``, decode ``c+1``... counted as in the features:
    prefill touches ``c+t`` tokens, decode reads ``c+1``), ``kv_write`` (new tokens), ``total``."""
    t = np.asarray(new_tokens, dtype=float)
    c = np.asarray(context_before, dtype=float)
    p = np.asarray(is_prefill, dtype=bool)
    tokens = float(t[p].sum() + (~p).sum())
    w = weight_bytes_per_gpu(model, tp, ep)
    weights = (w["dense"] + expected_experts_touched(model, tokens) * w["experts"]) if tokens > 0 else 0.0
    kvt = kv_bytes_per_token(model, tp, kv_bytes)
    kv_read = float(c[p].sum() + (c[~p] + 1.0).sum()) * kvt
    kv_write = tokens * kvt
    return {"weights": weights, "kv_read": kv_read, "kv_write": kv_write, "total": weights + kv_read + kv_write}


def allreduce_bytes_per_token(model: ModelSpec, tp: int = 1) -> float:
    """Ring all-reduce bytes one GPU sends per token over all layers:
    ``2*(tp-1)/tp * hidden * act_bytes`` per all-reduce, 2 all-reduces per layer (attention out,
    MLP out). 0 at TP=1."""
    if tp <= 1:
        return 0.0
    return 2.0 * (tp - 1) / tp * model.hidden_size * model.act_bytes * 2.0 * model.num_layers


def allreduce_bytes(model: ModelSpec, tokens: float, tp: int = 1) -> float:
    """TP all-reduce bytes per GPU of a step computing ``tokens`` tokens."""
    return tokens * allreduce_bytes_per_token(model, tp)


def dispatch_bytes_per_token(model: ModelSpec, ep: int = 1) -> float:
    """Expert-parallel all-to-all bytes per token over all MoE layers, per GPU: dispatch + combine
    of ``top-k`` hidden vectors, the ``(ep-1)/ep`` share of which leaves the GPU. 0 without EP."""
    if ep <= 1 or not model.num_experts:
        return 0.0
    return 2.0 * model.experts_per_token * model.hidden_size * model.act_bytes * (ep - 1) / ep * model.num_moe_layers


def dispatch_bytes(model: ModelSpec, tokens: float, ep: int = 1) -> float:
    """MoE dispatch+combine bytes per GPU of a step computing ``tokens`` tokens."""
    return tokens * dispatch_bytes_per_token(model, ep)


def offload_bytes(model: ModelSpec, tokens: float, tp: int = 1, kv_bytes: float | None = None) -> float:
    """PCIe bytes per GPU to move ``tokens`` tokens of KV cache between GPU and CPU."""
    return tokens * kv_bytes_per_token(model, tp, kv_bytes)


# ---- KV-cache capacity (vLLM v0.15 memory profiling) ----------------------------------------
# vLLM: available_kv = total_memory * gpu_memory_utilization - (weights + peak torch activation
# of a max_num_batched_tokens dummy forward + sampler + non-torch memory); num_blocks =
# available_kv // (block_size * kv_bytes_per_token). The constants below were calibrated on the
# four H100 runs with known KV blocks (see tests/test_specs.py).
ACT_ELEMS_PER_TOKEN_H = 2.0  # live hidden-size tensors per token at the peak (hidden + residual)
ACT_ELEMS_PER_TOKEN_QKV = 1.0  # + the qkv projection output (per GPU); MLP intermediates are
#   fused / freed by torch.compile (slope checked on Llama-3.1-70B
#   and Qwen2.5-7B runs at 1024 / 2048 / 8192 batched tokens)
SAMPLER_COPIES = 12.0  # float32 max_num_seqs x vocab tensors live in the dummy sampler
#   run (logits, softmax, log-softmax, sort values + int64 indices)
RESERVE_BYTES = 0.18 * GiB  # non-torch memory at TP=1: cuBLAS workspaces, allocator slack
RESERVE_TP_BYTES = 0.46 * GiB  # extra non-torch memory at TP>1: NCCL + custom all-reduce buffers


def activation_bytes(model: ModelSpec, server: ServerConfig) -> float:
    """Peak activation bytes per GPU of vLLM's profiling forward (``max_num_batched_tokens``
    tokens x (2 hidden + qkv/tp) x act_bytes) and dummy sampler run (``SAMPLER_COPIES`` float32
    tensors of ``max_num_seqs`` x vocab)."""
    tp = server.tensor_parallel
    T = server.max_num_batched_tokens
    if model.is_mla:
        qkv = model.num_heads * model.qk_head_dim / tp + model.kv_lora_rank + model.qk_rope_head_dim
    else:
        qkv = model.num_heads * model.head_dim / tp + 2 * max(1, math.ceil(model.num_kv_heads / tp)) * model.head_dim
    per_tok = ACT_ELEMS_PER_TOKEN_H * model.hidden_size + ACT_ELEMS_PER_TOKEN_QKV * qkv
    sampler = SAMPLER_COPIES * min(server.max_num_seqs, T) * model.vocab_size * 4.0
    return T * per_tok * model.act_bytes + sampler


def reserve_bytes(server: ServerConfig) -> float:
    """Non-torch memory per GPU (CUDA context share, cuBLAS workspaces, NCCL buffers at TP>1)."""
    return RESERVE_BYTES + (RESERVE_TP_BYTES if server.tensor_parallel * server.data_parallel > 1 else 0.0)


def kv_memory_bytes(model: ModelSpec, hw: HardwareSpec, server: ServerConfig) -> float:
    """Bytes per GPU left for the KV cache: visible memory * gpu_memory_utilization - weights -
    peak activations - reserve."""
    w = weight_bytes_per_gpu(model, server.tensor_parallel, server.ep_size)["total"]
    return hw.visible_memory_bytes * server.gpu_memory_utilization - w - activation_bytes(model, server) - reserve_bytes(server)


def kv_blocks(model: ModelSpec, hw: HardwareSpec, server: ServerConfig) -> int:
    """GPU KV-cache capacity in blocks of ``block_size`` tokens (``server.kv_blocks`` if set)."""
    if server.kv_blocks is not None:
        return int(server.kv_blocks)
    block = server.block_size * kv_bytes_per_token(model, server.tensor_parallel, kv_dtype_bytes(model, server))
    return max(0, int(kv_memory_bytes(model, hw, server) // block))


def require_kv_blocks(model: ModelSpec, hw: HardwareSpec, server: ServerConfig, file: str | None = None) -> int:
    """:func:`kv_blocks`, or a SpecError that says why none is left (the memory accounting)."""
    n = kv_blocks(model, hw, server)
    if n >= 1:
        return n
    if server.kv_blocks is not None:
        raise SpecError(f"must be >= 1, got {server.kv_blocks}", file=file, field="server.kv_blocks")
    w = weight_bytes_per_gpu(model, server.tensor_parallel, server.ep_size)["total"]
    raise SpecError(
        f"{model.name} at TP{server.tensor_parallel} does not fit on {hw.name}: {w / GiB:.1f} GiB of weights + "
        f"{(activation_bytes(model, server) + reserve_bytes(server)) / GiB:.1f} GiB activations / reserve per GPU, "
        f"against {hw.visible_memory_bytes * server.gpu_memory_utilization / GiB:.1f} GiB usable "
        f"(gpu_memory_utilization {server.gpu_memory_utilization}): no KV cache is left. Raise tensor_parallel, "
        "lower max_num_batched_tokens or quantize",
        file=file,
        field="server.tensor_parallel",
    )


def cpu_kv_blocks(model: ModelSpec, server: ServerConfig) -> int:
    """CPU KV-offload capacity in blocks per GPU: ``server.cpu_kv_blocks`` if set, else
    ``cpu_offload_gb`` GiB / block bytes (vLLM rounds an exact fit down by one block)."""
    if server.cpu_kv_blocks is not None:
        return int(server.cpu_kv_blocks)
    if server.cpu_offload_gb <= 0:
        return 0
    block = server.block_size * kv_bytes_per_token(model, server.tensor_parallel, kv_dtype_bytes(model, server))
    return max(0, int((server.cpu_offload_gb * GiB - 1) // block))


def derived_quantities(model: ModelSpec, hw: HardwareSpec, server: ServerConfig) -> dict[str, Any]:
    """The derived quantities of a deployment as a JSON-able dict (params, bytes, FLOPs, KV capacity);
    :func:`bayeslat.deployment.derived` adds the kernel constants."""
    validate_deployment(model, server)
    tp, ep = server.tensor_parallel, server.ep_size
    p = param_counts(model)
    w = weight_bytes_per_gpu(model, tp, ep)
    kvb = kv_dtype_bytes(model, server)
    return {
        "model": model.name,
        "model_class": model.model_class,
        "hardware": hw.name,
        "tensor_parallel": tp,
        "data_parallel": server.data_parallel,
        "expert_parallel": server.expert_parallel,
        "params_total": p["total"],
        "params_active": p["active"],
        "params": p,
        "weight_bytes_per_gpu": w["total"],
        "weight_bytes": w,
        "kv_bytes_per_token_per_gpu": kv_bytes_per_token(model, tp, kvb),
        "activation_bytes": activation_bytes(model, server),
        "reserve_bytes": reserve_bytes(server),
        "kv_memory_bytes": kv_memory_bytes(model, hw, server),
        "kv_blocks": kv_blocks(model, hw, server),
        "cpu_kv_blocks": cpu_kv_blocks(model, server),
        "block_size": server.block_size,
        "peak_flops": hw.peak_flops(model.weight_bytes),
        "hbm_bandwidth": hw.hbm_bandwidth,
    }
