"""Deployment specs: model config x GPU datasheet x server config, and what follows from them.

Three frozen dataclasses, each built by a validating loader that raises
:class:`bayeslat.errors.SpecError` naming the file and the field:

- :class:`ModelSpec` from a HuggingFace ``config.json`` (:func:`load_model`): dense, GQA/MQA,
  MoE (Mixtral, Qwen-MoE, DeepSeek, Llama-4 interleaved, shared experts, first dense layers),
  MLA (DeepSeek-V2/V3, GLM), FP8 / int4 ``quantization_config``; ``text_config`` nesting.
- :class:`HardwareSpec` from a GPU datasheet JSON (:func:`load_hardware`), strict schema.
- :class:`ServerConfig` from a YAML file or a dict (:func:`load_server`), vLLM v0.15 defaults
  (schema: ``specs/servers/SCHEMA.md``).

A bare key (``"llama-2-7b-hf"``, ``"h100-sxm"``, ``"llama-2-7b-tp1"``) resolves under the bundled
``bayeslat/data/specs/{models,hardware,servers}``.

Derived quantities (all per GPU after TP / EP sharding unless the name says ``total``):
parameters (:func:`param_counts`), weight bytes (:func:`weight_bytes_per_gpu`), KV bytes per
token (:func:`kv_bytes_per_token`), step FLOPs / bytes / communication
(:func:`step_flops`, :func:`step_bytes`, :func:`allreduce_bytes`, :func:`dispatch_bytes`,
:func:`offload_bytes`) and the GPU / CPU KV-cache capacity in blocks (:func:`kv_blocks`,
:func:`cpu_kv_blocks`), computed the way vLLM v0.15 profiles memory.

Units: bytes, FLOPs (multiply-add = 2 FLOPs), FLOP/s, bytes/s, tokens. ``GiB = 2**30``.
"""
from __future__ import annotations

import json
import math
import re
import sys
import warnings
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from bayeslat.errors import SpecError, read_text, read_yaml

GiB = 2**30
DTYPE_BYTES = {"float32": 4.0, "float": 4.0, "bfloat16": 2.0, "float16": 2.0, "half": 2.0,
               "fp8": 1.0, "fp8_e4m3": 1.0, "fp8_e5m2": 1.0, "int8": 1.0, "int4": 0.5}


def specs_dir() -> Path:
    """The bundled spec directory ``bayeslat/data/specs`` (a symlink to the repo's ``specs/``)."""
    return Path(str(resources.files("bayeslat") / "data" / "specs"))


def _read_json(p: Path, field: str):
    try:
        return json.loads(read_text(p))
    except json.JSONDecodeError as e:
        raise SpecError(f"invalid JSON: {e.msg}", file=str(p), line=e.lineno, field=field) from None


def _resolve(path_or_key: str | Path, kind: str, filename: str | None, suffixes: tuple[str, ...]) -> Path:
    """A path if it exists, else a key under ``specs_dir()/kind`` (folder with ``filename`` or a file)."""
    p = Path(path_or_key)
    if p.is_file():
        return p
    if p.is_dir() and filename and (p / filename).is_file():
        return p / filename
    base = specs_dir() / kind
    key = str(path_or_key)
    cands = []
    if filename:
        cands.append(base / key / filename)
    cands += [base / (key + s) for s in suffixes] + [base / key]
    for c in cands:
        if c.is_file():
            return c
    raise SpecError(f"no such file, nor a bundled {kind} key (looked in {base})", file=str(path_or_key))


# =============================================================================================
# Model
# =============================================================================================
@dataclass(frozen=True)
class ModelSpec:
    """Architecture of a decoder-only transformer, from a HuggingFace ``config.json``.

    Sizes are element counts; ``*_bytes`` are bytes per element. Expert fields are 0 for dense
    models; MLA fields are 0 without multi-head latent attention.
    """

    name: str
    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int            # dense-MLP width (dense layers of MoE models included)
    vocab_size: int
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    # MoE
    num_experts: int = 0              # routed experts per MoE layer
    experts_per_token: int = 0        # top-k
    moe_intermediate_size: int = 0    # width of one routed expert
    shared_intermediate_size: int = 0  # total width of the shared expert(s) of a MoE layer
    num_moe_layers: int = 0
    # MLA
    kv_lora_rank: int = 0
    q_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0
    # precision
    dtype: str = "bfloat16"
    act_bytes: float = 2.0            # activations / non-quantized weights (torch_dtype)
    weight_bytes: float = 2.0         # bytes per quantized linear-layer weight (1 FP8, 0.5 int4)
    attn_weight_bytes: float = 2.0    # attention projections (kept in dtype when the quant ignores them)
    quantization: str | None = None
    extra_params: int = 0             # params outside the decoder (e.g. vision tower), in act_bytes
    max_position_embeddings: int = 0
    source: str | None = None

    # ---- properties -------------------------------------------------------------------------
    @property
    def model_class(self) -> str:
        """``"moe"`` if any layer has routed experts, else ``"dense"``."""
        return "moe" if self.num_experts > 0 and self.num_moe_layers > 0 else "dense"

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def num_dense_layers(self) -> int:
        return self.num_layers - self.num_moe_layers

    @property
    def qk_head_dim(self) -> int:
        """Query/key head dimension used by the attention scores."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim if self.is_mla else self.head_dim

    @property
    def o_head_dim(self) -> int:
        """Value / output head dimension."""
        return self.v_head_dim if self.is_mla else self.head_dim

    # ---- per-layer parameter counts (elements, unsharded) -----------------------------------
    def attn_params_per_layer(self) -> int:
        """Attention projection parameters of one layer (q, k, v, o; MLA down/up projections)."""
        h, nh = self.hidden_size, self.num_heads
        if self.is_mla:
            qd = nh * (self.qk_nope_head_dim + self.qk_rope_head_dim)
            q = h * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * qd if self.q_lora_rank else h * qd
            kv = h * (self.kv_lora_rank + self.qk_rope_head_dim) + self.kv_lora_rank \
                + self.kv_lora_rank * nh * (self.qk_nope_head_dim + self.v_head_dim)
            return q + kv + nh * self.v_head_dim * h
        qkv = h * (nh + 2 * self.num_kv_heads) * self.head_dim
        bias = (nh + 2 * self.num_kv_heads) * self.head_dim if self.qkv_bias else 0
        return qkv + bias + nh * self.head_dim * h

    def dense_mlp_params(self) -> int:
        """Gated MLP (gate, up, down) of one dense layer."""
        return 3 * self.hidden_size * self.intermediate_size

    def expert_params(self) -> int:
        """One routed expert (gate, up, down)."""
        return 3 * self.hidden_size * self.moe_intermediate_size

    def shared_params(self) -> int:
        """The shared expert(s) of one MoE layer."""
        return 3 * self.hidden_size * self.shared_intermediate_size

    def router_params(self) -> int:
        return self.hidden_size * self.num_experts

    def kv_dim(self) -> int:
        """KV-cache elements per token per layer (unsharded): 2*kv_heads*head_dim; MLA: latent+rope."""
        if self.is_mla:
            return self.kv_lora_rank + self.qk_rope_head_dim
        return 2 * self.num_kv_heads * self.head_dim

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model_class"] = self.model_class
        return d


def _get(cfg: Mapping, keys, default=None):
    for k in keys if isinstance(keys, (list, tuple)) else (keys,):
        if k in cfg and cfg[k] is not None:
            return cfg[k]
    return default


def _int_field(cfg: Mapping, keys, file: str, default=None, minimum: int = 0) -> int:
    v = _get(cfg, keys, default)
    name = keys[0] if isinstance(keys, (list, tuple)) else keys
    if v is None:
        raise SpecError("required field is missing", file=file, field=name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or float(v) != int(v):
        raise SpecError(f"must be an integer, got {v!r}", file=file, field=name)
    if int(v) < minimum:
        raise SpecError(f"must be >= {minimum}, got {v!r}", file=file, field=name)
    return int(v)


def _quant_bytes(q: Mapping, file: str) -> tuple[float, str]:
    """Bytes per quantized weight and a method label from a ``quantization_config``."""
    method = str(q.get("quant_method", "")).lower()
    bits = q.get("bits", q.get("w_bit", q.get("weight_bits")))
    if bits is None and isinstance(q.get("config_groups"), Mapping):
        for g in q["config_groups"].values():
            w = g.get("weights") if isinstance(g, Mapping) else None
            if isinstance(w, Mapping) and w.get("num_bits") is not None:
                bits = w["num_bits"]
                break
    if bits is None:
        if "fp8" in method or str(q.get("fmt", "")).startswith("e4m3") or method in ("fbgemm_fp8", "modelopt"):
            bits = 8
        elif method in ("gptq", "awq", "marlin", "gptq_marlin", "awq_marlin", "bitsandbytes"):
            bits = 4
        elif "int4" in method or "w4" in method or "mxfp4" in method or "nvfp4" in method:
            bits = 4
        else:
            raise SpecError(f"cannot infer weight bits of quant_method {method!r}", file=file,
                            field="quantization_config")
    try:
        bits = float(bits)
    except (TypeError, ValueError):
        raise SpecError(f"bits must be a number, got {bits!r}", file=file, field="quantization_config.bits") from None
    if bits <= 0 or bits > 32:
        raise SpecError(f"bits out of range: {bits}", file=file, field="quantization_config.bits")
    label = method or "quantized"
    if bits == 8 and ("float" in str(q.get("format", "")) or "fp8" in method or q.get("fmt")):
        label = f"{method}:fp8" if method and "fp8" not in method else (method or "fp8")
    return bits / 8.0, label


def model_from_config(cfg: Mapping, file: str = "<dict>", name: str | None = None) -> ModelSpec:
    """Build a :class:`ModelSpec` from a parsed HuggingFace config (see :func:`load_model`)."""
    if not isinstance(cfg, Mapping):
        raise SpecError("config must be a JSON object", file=file)
    outer = cfg
    if isinstance(cfg.get("text_config"), Mapping):
        cfg = {**{k: v for k, v in outer.items() if k not in ("text_config", "vision_config")}, **outer["text_config"]}
        pre = "text_config."
    else:
        pre = ""
    f = lambda keys, **kw: _int_field(cfg, keys, file, **kw)  # noqa: E731
    try:
        h = f("hidden_size", minimum=1)
        L = f("num_hidden_layers", minimum=1)
        nh = f("num_attention_heads", minimum=1)
        nkv = f("num_key_value_heads", default=nh, minimum=1)
        vocab = f("vocab_size", minimum=1)
        inter = f("intermediate_size", default=4 * h, minimum=0)
    except SpecError as e:
        raise SpecError(e.reason, file=file, field=pre + (e.field or "")) from None
    if nh % nkv:
        raise SpecError(f"num_attention_heads={nh} is not a multiple of num_key_value_heads={nkv}",
                        file=file, field=pre + "num_key_value_heads")
    head_dim = _int_field(cfg, "head_dim", file, default=h // nh, minimum=1)
    mtype = str(cfg.get("model_type", outer.get("model_type", "unknown")))

    # ---- MoE ---------------------------------------------------------------------------------
    E = _int_field(cfg, ("num_local_experts", "num_experts", "n_routed_experts"), file, default=0)
    k = _int_field(cfg, ("num_experts_per_tok", "moe_topk", "top_k"), file, default=0) if E else 0
    if E and not k:
        raise SpecError("MoE config without num_experts_per_tok", file=file, field=pre + "num_experts_per_tok")
    if k > E:
        raise SpecError(f"top-k {k} exceeds the {E} experts", file=file, field=pre + "num_experts_per_tok")
    moe_i = shared_i = n_moe = 0
    dense_i = inter
    if E:
        moe_i = _int_field(cfg, "moe_intermediate_size", file, default=inter, minimum=1)
        n_shared = _int_field(cfg, ("n_shared_experts", "num_shared_experts"), file, default=0)
        shared_i = _int_field(cfg, "shared_expert_intermediate_size", file, default=n_shared * moe_i)
        if mtype.startswith("llama4"):
            shared_i = inter  # Llama-4: one shared expert of intermediate_size per MoE layer
            dense_i = _int_field(cfg, "intermediate_size_mlp", file, default=inter)
        first_dense = _int_field(cfg, "first_k_dense_replace", file, default=0)
        freq = _int_field(cfg, "moe_layer_freq", file, default=1, minimum=1)
        step = _int_field(cfg, ("interleave_moe_layer_step", "decoder_sparse_step"), file, default=1, minimum=1)
        mlp_only = set(cfg.get("mlp_only_layers") or [])
        for i in range(L):
            if i < first_dense or i % freq or (i + 1) % step or i in mlp_only:
                continue
            n_moe += 1

    # ---- MLA ---------------------------------------------------------------------------------
    kv_lora = _int_field(cfg, "kv_lora_rank", file, default=0)
    mla = dict(kv_lora_rank=kv_lora)
    if kv_lora:
        mla.update(q_lora_rank=_int_field(cfg, "q_lora_rank", file, default=0),
                   qk_rope_head_dim=_int_field(cfg, "qk_rope_head_dim", file, minimum=1),
                   qk_nope_head_dim=_int_field(cfg, "qk_nope_head_dim", file, minimum=1),
                   v_head_dim=_int_field(cfg, "v_head_dim", file, minimum=1))

    # ---- precision ---------------------------------------------------------------------------
    dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or outer.get("torch_dtype") or "bfloat16")
    if dtype not in DTYPE_BYTES:
        raise SpecError(f"unknown dtype {dtype!r}", file=file, field="torch_dtype")
    act = DTYPE_BYTES[dtype]
    wb, ab, quant = act, act, None
    q = outer.get("quantization_config") or cfg.get("quantization_config")
    if q is not None:
        if not isinstance(q, Mapping):
            raise SpecError("must be an object", file=file, field="quantization_config")
        wb, quant = _quant_bytes(q, file)
        ignore = q.get("ignore") or q.get("modules_to_not_convert") or []
        ab = act if any("self_attn" in str(s) or "attention" in str(s) for s in ignore) else wb

    extra = 0
    vc = outer.get("vision_config")
    if isinstance(vc, Mapping) and vc.get("hidden_size") and vc.get("num_hidden_layers"):
        vh, vl = int(vc["hidden_size"]), int(vc["num_hidden_layers"])
        vi = int(vc.get("intermediate_size") or 4 * vh)
        extra = vl * (4 * vh * vh + 2 * vh * vi)  # vision tower, kept in dtype
    tie = cfg.get("tie_word_embeddings", outer.get("tie_word_embeddings", False))
    return ModelSpec(
        name=name or str(cfg.get("_name_or_path") or Path(file).parent.name or "model"),
        model_type=mtype, hidden_size=h, num_layers=L, num_heads=nh, num_kv_heads=nkv, head_dim=head_dim,
        intermediate_size=dense_i, vocab_size=vocab, tie_word_embeddings=bool(tie),
        qkv_bias=bool(cfg.get("attention_bias", mtype in ("qwen2", "qwen2_moe"))),
        num_experts=E, experts_per_token=k, moe_intermediate_size=moe_i, shared_intermediate_size=shared_i,
        num_moe_layers=n_moe, dtype=dtype, act_bytes=act, weight_bytes=wb, attn_weight_bytes=ab,
        quantization=quant, extra_params=extra,
        max_position_embeddings=int(cfg.get("max_position_embeddings") or 0), source=file, **mla)


def load_model(path_or_key: str | Path) -> ModelSpec:
    """Load a HuggingFace ``config.json`` (path, folder, or key under ``specs/models``)."""
    p = _resolve(path_or_key, "models", "config.json", (".json",))
    cfg = _read_json(p, "config.json")
    name = p.parent.name if p.name == "config.json" else p.stem
    return model_from_config(cfg, file=str(p), name=name)


# =============================================================================================
# Hardware
# =============================================================================================
HARDWARE_SCHEMA: dict[str, Any] = {
    "name": str, "vendor": str, "architecture": str, "form_factor": str, "datasheet_id": str,
    "mig_partitions": int, "notes": str,
    "compute": {"fp64": float, "fp64_tensor_core": float, "fp32": float, "tf32_tensor_core": float,
                "bf16_tensor_core": float, "fp16_tensor_core": float, "fp8_tensor_core": float,
                "int8_tensor_core": float, "fp4_tensor_core": float, "int4_tensor_core": float,
                "with_sparsity": bool},
    "memory": {"capacity_gb": float, "bandwidth_tb_s": float, "visible_gib": float},
    "interconnect": {"nvlink_bandwidth_gb_s": float, "pcie_bandwidth_gb_s": float},
    "power": {"tdp_watts": float},
}
HARDWARE_REQUIRED = ("name", "compute.bf16_tensor_core", "memory.capacity_gb", "memory.bandwidth_tb_s")
VISIBLE_FRACTION = 0.99  # GiB visible to torch per marketed GB (H100 80GB -> 79.2 GiB)


@dataclass(frozen=True)
class HardwareSpec:
    """One GPU, from a datasheet JSON.

    Datasheet schema (strict: any other key, top level or nested, is a SpecError)::

        name: str (required, the hardware group, e.g. "H100 SXM")
        vendor, architecture, form_factor, datasheet_id, notes: str; mig_partitions: int
        compute:  TFLOP/s as printed: bf16_tensor_core (required), fp16_tensor_core,
                  fp8_tensor_core, int8_tensor_core, fp4/int4_tensor_core, tf32_tensor_core,
                  fp32, fp64, fp64_tensor_core; with_sparsity: bool (tensor-core figures are
                  2:4-sparse numbers; dense = half)
        memory:   capacity_gb (marketed GB), bandwidth_tb_s (TB/s), visible_gib (optional:
                  memory torch sees, default 0.99 GiB per marketed GB)
        interconnect: nvlink_bandwidth_gb_s (GB/s, 0 = none), pcie_bandwidth_gb_s (GB/s)
        power:    tdp_watts
    """

    name: str
    bf16_flops: float          # dense BF16 tensor-core FLOP/s
    fp8_flops: float           # dense FP8 FLOP/s (= bf16_flops when the GPU has no FP8)
    hbm_bandwidth: float       # bytes/s
    memory_bytes: float        # marketed capacity, bytes
    visible_memory_bytes: float  # memory torch reports (total_memory), bytes
    nvlink_bandwidth: float    # bytes/s (0 = no NVLink)
    pcie_bandwidth: float      # bytes/s
    source: str | None = None

    @property
    def link_bandwidth(self) -> float:
        """GPU-GPU bytes/s: NVLink if present, else PCIe."""
        return self.nvlink_bandwidth if self.nvlink_bandwidth > 0 else self.pcie_bandwidth

    def peak_flops(self, weight_bytes: float = 2.0) -> float:
        """Dense tensor-core FLOP/s for weights of ``weight_bytes`` bytes (FP8 peak for <= 1)."""
        return self.fp8_flops if weight_bytes <= 1.0 else self.bf16_flops

    def to_dict(self) -> dict:
        return asdict(self)


def _check_schema(d: Mapping, schema: Mapping, file: str, prefix: str = "") -> None:
    for k, v in d.items():
        path = prefix + k
        if k not in schema:
            raise SpecError(f"unknown field (allowed: {', '.join(sorted(schema))})", file=file, field=path)
        t = schema[k]
        if isinstance(t, dict):
            if not isinstance(v, Mapping):
                raise SpecError("must be an object", file=file, field=path)
            _check_schema(v, t, file, path + ".")
        elif t is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise SpecError(f"must be a non-negative number, got {v!r}", file=file, field=path)
        elif t is int:
            if isinstance(v, bool) or not isinstance(v, int):
                raise SpecError(f"must be an integer, got {v!r}", file=file, field=path)
        elif t is bool:
            if not isinstance(v, bool):
                raise SpecError(f"must be true/false, got {v!r}", file=file, field=path)
        elif t is str and not isinstance(v, (str, int)):
            raise SpecError(f"must be a string, got {v!r}", file=file, field=path)


def hardware_from_dict(d: Mapping, file: str = "<dict>") -> HardwareSpec:
    """Validate a datasheet dict against :data:`HARDWARE_SCHEMA` and build a :class:`HardwareSpec`."""
    if not isinstance(d, Mapping):
        raise SpecError("datasheet must be a JSON object", file=file)
    _check_schema(d, HARDWARE_SCHEMA, file)
    for req in HARDWARE_REQUIRED:
        node = d
        for part in req.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is None:
            raise SpecError("required field is missing", file=file, field=req)
    c, m, ic = d["compute"], d["memory"], d.get("interconnect", {})
    div = 2.0 if c.get("with_sparsity", False) else 1.0
    bf16 = float(c["bf16_tensor_core"]) * 1e12 / div
    if bf16 <= 0:
        raise SpecError("must be > 0", file=file, field="compute.bf16_tensor_core")
    fp8 = float(c["fp8_tensor_core"]) * 1e12 / div if c.get("fp8_tensor_core") else bf16
    bw = float(m["bandwidth_tb_s"]) * 1e12
    if bw <= 0:
        raise SpecError("must be > 0", file=file, field="memory.bandwidth_tb_s")
    cap = float(m["capacity_gb"])
    if cap <= 0:
        raise SpecError("must be > 0", file=file, field="memory.capacity_gb")
    visible = float(m.get("visible_gib", cap * VISIBLE_FRACTION)) * GiB
    return HardwareSpec(name=str(d["name"]), bf16_flops=bf16, fp8_flops=fp8, hbm_bandwidth=bw,
                        memory_bytes=cap * 1e9, visible_memory_bytes=visible,
                        nvlink_bandwidth=float(ic.get("nvlink_bandwidth_gb_s", 0.0)) * 1e9,
                        pcie_bandwidth=float(ic.get("pcie_bandwidth_gb_s", 64.0)) * 1e9, source=file)


# Other names of the bundled datasheets (normalised by _norm_gpu: lower case, alphanumerics only,
# without "nvidia"): BLIS's GPU names and what nvidia-smi prints. A bare "A100" is ambiguous (the
# 40 GB part has 1.56 TB/s, the bundled 80 GB one 2.04) and is refused.
HARDWARE_ALIASES = {
    "h100": "h100-sxm", "h100sxm5": "h100-sxm", "h10080gbhbm3": "h100-sxm", "h100sxm580gb": "h100-sxm",
    "h100sxm80gb": "h100-sxm", "h10094gbnvl": "h100-nvl", "h100nvl94gb": "h100-nvl",
    "h200": "h200-sxm", "h200sxm141gb": "h200-sxm", "h200141gbhbm3e": "h200-sxm",
    "a10080": "a100-sxm-80gb", "a10080gb": "a100-sxm-80gb", "a100sxm480gb": "a100-sxm-80gb",
    "a100sxm80": "a100-sxm-80gb", "a100sxm80gb": "a100-sxm-80gb", "a10080gbsxm": "a100-sxm-80gb",
}
AMBIGUOUS_GPUS = {"a100": "A100 40 GB or 80 GB", "a100sxm": "A100 SXM 40 GB or 80 GB", "a100sxm4": "A100 SXM4 40 GB or 80 GB"}
# BLIS's hardware_config.json entry (dense TFLOP/s, TB/s, GiB): accepted as a datasheet
BLIS_HARDWARE_KEYS = {"TFlopsPeak", "TFlopsFP8", "BwPeakTBs", "MemoryGiB"}


def _norm_gpu(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower()).replace("nvidia", "")


def _bundled_hardware() -> dict[str, Mapping]:
    out = {}
    for f in sorted((specs_dir() / "hardware").glob("*.json")):
        try:
            out[f.stem] = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
    return out


def _hardware_key(key: str) -> str | None:
    """The bundled datasheet key a GPU name stands for (file stem, datasheet ``name`` or alias)."""
    n = _norm_gpu(key)
    bundled = _bundled_hardware()
    for stem, d in bundled.items():
        if n in (_norm_gpu(stem), _norm_gpu(d.get("name", ""))):
            return stem
    if n in HARDWARE_ALIASES and HARDWARE_ALIASES[n] in bundled:
        return HARDWARE_ALIASES[n]
    if n in AMBIGUOUS_GPUS:
        raise SpecError(f"ambiguous GPU name ({AMBIGUOUS_GPUS[n]}?): name the part, e.g. 'a100-sxm-80gb', or give a "
                        f"datasheet JSON; bundled: {', '.join(sorted(bundled))}", file=str(key), field="hardware")
    return None


def match_bundled_hardware(hw: HardwareSpec, rtol: float = 0.03) -> HardwareSpec | None:
    """The bundled datasheet with the same dense BF16 FLOP/s, HBM bandwidth and memory as ``hw``
    (each within ``rtol``), else None: the GPU the fit knows under its bundled name."""
    for stem, d in _bundled_hardware().items():
        try:
            b = hardware_from_dict(d, file=stem)
        except SpecError:
            continue
        if all(abs(x - y) <= rtol * y for x, y in ((hw.bf16_flops, b.bf16_flops), (hw.hbm_bandwidth, b.hbm_bandwidth),
                                                    (hw.memory_bytes, b.memory_bytes))):
            return b
    return None


def hardware_from_blis(d: Mapping, file: str = "<dict>", name: str | None = None) -> HardwareSpec:
    """A BLIS ``hardware_config.json`` entry (``TFlopsPeak`` dense BF16, ``TFlopsFP8``,
    ``BwPeakTBs``, ``MemoryGiB``). It has no interconnect: a GPU matching a bundled datasheet
    (:func:`match_bundled_hardware`) takes that one's name and NVLink / PCIe bandwidths; any other
    gets PCIe 64 GB/s and no NVLink, with a warning (tensor-parallel communication then runs over PCIe)."""
    for k in ("TFlopsPeak", "BwPeakTBs", "MemoryGiB"):
        v = d.get(k)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise SpecError(f"must be a positive number, got {v!r}", file=file, field=k)
    bf16 = float(d["TFlopsPeak"]) * 1e12
    fp8 = float(d["TFlopsFP8"]) * 1e12 if d.get("TFlopsFP8") else bf16
    cap = float(d["MemoryGiB"])
    hw = HardwareSpec(name=str(name or d.get("name") or Path(file).stem), bf16_flops=bf16, fp8_flops=fp8,
                      hbm_bandwidth=float(d["BwPeakTBs"]) * 1e12, memory_bytes=cap * 1e9,
                      visible_memory_bytes=cap * VISIBLE_FRACTION * GiB, nvlink_bandwidth=0.0, pcie_bandwidth=64e9,
                      source=file)
    b = match_bundled_hardware(hw)
    if b is not None:
        return replace(hw, name=b.name, nvlink_bandwidth=b.nvlink_bandwidth, pcie_bandwidth=b.pcie_bandwidth)
    warnings.warn(f"{file}: BLIS datasheet '{hw.name}' has no interconnect and matches no bundled GPU: "
                  "assuming PCIe 64 GB/s and no NVLink", stacklevel=2)
    return hw


def load_hardware(path_or_key: str | Path) -> HardwareSpec:
    """Load a GPU datasheet JSON: a path, a key under ``specs/hardware`` (``"h100-sxm"``), or a GPU
    name (the datasheet's ``name``, BLIS's ``"H100"`` / ``"A100-80"`` / ``"L40S"``, nvidia-smi's
    ``"NVIDIA H100 80GB HBM3"``; see :data:`HARDWARE_ALIASES`).

    Also reads BLIS's ``hardware_config.json`` entries (:func:`hardware_from_blis`); for a file of
    several GPUs, choose one with ``path#NAME``. A datasheet whose name the fit does not know but
    whose FLOP/s, bandwidth and memory match a bundled one (within 3%) takes the bundled name, so it
    is the fitted hardware level, not a new one (a warning says so)."""
    key, _, pick = str(path_or_key).partition("#") if not Path(str(path_or_key)).exists() else (str(path_or_key), "", "")
    try:
        p = _resolve(key, "hardware", None, (".json",))
    except SpecError:
        alias = _hardware_key(key)
        if alias is None:
            raise SpecError(f"no such file, nor a bundled hardware key or GPU name (bundled: "
                            f"{', '.join(sorted(_bundled_hardware()))})", file=str(path_or_key), field="hardware") from None
        p = _resolve(alias, "hardware", None, (".json",))
    d = _read_json(p, "datasheet")
    if isinstance(d, Mapping) and not (BLIS_HARDWARE_KEYS & set(d)) and d and all(
            isinstance(v, Mapping) and BLIS_HARDWARE_KEYS & set(v) for v in d.values()):
        # BLIS's hardware_config.json: {gpu name: entry}
        names = list(d)
        if not pick and len(names) == 1:
            pick = names[0]
        if pick not in d:
            got = {_norm_gpu(n): n for n in names}.get(_norm_gpu(pick)) if pick else None
            if got is None:
                raise SpecError(f"several GPUs in this file: choose one with '{p}#NAME' ({', '.join(names)})"
                                if not pick else f"no GPU '{pick}' in this file ({', '.join(names)})",
                                file=str(p), field="hardware")
            pick = got
        return hardware_from_blis(d[pick], file=f"{p}#{pick}", name=pick)
    if isinstance(d, Mapping) and BLIS_HARDWARE_KEYS & set(d):
        return hardware_from_blis(d, file=str(p))
    hw = hardware_from_dict(d, file=str(p))
    if hw.name not in {str(b.get("name")) for b in _bundled_hardware().values()}:
        b = match_bundled_hardware(hw)
        if b is not None:
            warnings.warn(f"{p}: datasheet '{hw.name}' has the FLOP/s, bandwidth and memory of the bundled "
                          f"'{b.name}' (within 3%): using that hardware level", stacklevel=2)
            hw = replace(hw, name=b.name)
    return hw


# =============================================================================================
# Server
# =============================================================================================
@dataclass(frozen=True)
class ServerConfig:
    """vLLM server settings (defaults: ``vllm serve`` v0.15 on a >= 70 GiB GPU).

    See ``specs/servers/SCHEMA.md``. ``max_model_len=None`` means the model's
    ``max_position_embeddings``; ``kv_blocks`` overrides the computed GPU KV capacity;
    ``cpu_offload_gb`` (GiB of CPU KV cache per GPU) or ``cpu_kv_blocks`` enable CPU KV offload.
    """

    tensor_parallel: int = 1
    data_parallel: int = 1
    expert_parallel: bool = False
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 1024
    max_model_len: int | None = None
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    kv_blocks: int | None = None
    cpu_offload_gb: float = 0.0
    cpu_kv_blocks: int | None = None
    prefix_caching: bool = True
    chunked_prefill: bool = True
    dtype: str = "auto"
    kv_cache_dtype: str = "auto"
    quantization: str | None = None
    name: str | None = None
    model: str | None = None
    hardware: str | None = None
    source: str | None = None

    @property
    def ep_size(self) -> int:
        """GPUs the experts are spread over (TP*DP with expert_parallel, else 1)."""
        return self.tensor_parallel * self.data_parallel if self.expert_parallel else 1

    def to_dict(self) -> dict:
        return asdict(self)


_SERVER_TYPES = {"tensor_parallel": int, "data_parallel": int, "expert_parallel": bool,
                 "max_num_batched_tokens": int, "max_num_seqs": int, "max_model_len": int,
                 "block_size": int, "gpu_memory_utilization": float, "kv_blocks": int,
                 "cpu_offload_gb": float, "cpu_kv_blocks": int, "prefix_caching": bool,
                 "chunked_prefill": bool, "dtype": str, "kv_cache_dtype": str, "quantization": str,
                 "name": str, "model": str, "hardware": str}
_SERVER_ALIASES = {"tensor_parallel_size": "tensor_parallel", "tp": "tensor_parallel",
                   "data_parallel_size": "data_parallel", "dp": "data_parallel",
                   "enable_expert_parallel": "expert_parallel", "enable_prefix_caching": "prefix_caching",
                   "enable_chunked_prefill": "chunked_prefill", "num_gpu_blocks_override": "kv_blocks",
                   "kv_offloading_size": "cpu_offload_gb"}


def server_from_dict(d: Mapping | None, file: str = "<dict>") -> ServerConfig:
    """Validate a server-config dict (keys of :class:`ServerConfig` or vLLM's own names)."""
    d = dict(d or {})
    if isinstance(d.get("server"), Mapping):  # experiment files nest the server config
        d = dict(d["server"])
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = _SERVER_ALIASES.get(str(k).replace("-", "_"), str(k).replace("-", "_"))
        if key not in _SERVER_TYPES:
            raise SpecError(f"unknown field (allowed: {', '.join(sorted(_SERVER_TYPES))})", file=file, field=str(k))
        t = _SERVER_TYPES[key]
        if v is None:
            out[key] = None
            continue
        if t is bool and not isinstance(v, bool):
            raise SpecError(f"must be true/false, got {v!r}", file=file, field=str(k))
        if t is int and (isinstance(v, bool) or not isinstance(v, (int, float)) or float(v) != int(v)):
            raise SpecError(f"must be an integer, got {v!r}", file=file, field=str(k))
        if t is float and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise SpecError(f"must be a number, got {v!r}", file=file, field=str(k))
        out[key] = t(v) if t is not str else str(v)
    for key in ("tensor_parallel", "data_parallel", "max_num_batched_tokens", "max_num_seqs", "block_size"):
        if key in out and (out[key] is None or out[key] < 1):
            raise SpecError(f"must be >= 1, got {out[key]!r}", file=file, field=key)
    for key in ("max_model_len", "kv_blocks", "cpu_kv_blocks"):
        if out.get(key) is not None and out[key] < 0:
            raise SpecError(f"must be >= 0, got {out[key]!r}", file=file, field=key)
    g = out.get("gpu_memory_utilization")
    if g is not None and not 0.0 < g <= 1.0:
        raise SpecError(f"must be in (0, 1], got {g}", file=file, field="gpu_memory_utilization")
    if out.get("cpu_offload_gb") is not None and out["cpu_offload_gb"] < 0:
        raise SpecError("must be >= 0", file=file, field="cpu_offload_gb")
    out = {k: v for k, v in out.items() if v is not None or k in ("max_model_len", "kv_blocks", "cpu_kv_blocks", "quantization")}
    return ServerConfig(**out, source=file)


def load_server(path_or_dict: str | Path | Mapping | None) -> ServerConfig:
    """Server config from a YAML file, a key under ``specs/servers``, a dict, or None (defaults)."""
    if path_or_dict is None or isinstance(path_or_dict, Mapping):
        return server_from_dict(path_or_dict or {})
    p = _resolve(path_or_dict, "servers", None, (".yaml", ".yml"))
    d = read_yaml(p)
    if d is not None and not isinstance(d, Mapping):
        raise SpecError("server config must be a mapping", file=str(p))
    return server_from_dict(d, file=str(p))


def validate_deployment(model: ModelSpec, server: ServerConfig) -> None:
    """Raise SpecError (naming the server file and ``tensor_parallel``) if TP cannot shard the model:
    TP must divide the attention heads, and the KV heads when kv_heads >= TP (else TP must be a
    multiple of kv_heads: vLLM replicates them). MoE without EP: TP must divide the expert width."""
    tp = server.tensor_parallel
    file = server.source or model.source
    if model.num_heads % tp:
        raise SpecError(f"{tp} does not divide num_attention_heads={model.num_heads} of {model.name}",
                        file=file, field="tensor_parallel")
    if not model.is_mla:
        kv = model.num_kv_heads
        if (kv >= tp and kv % tp) or (kv < tp and tp % kv):
            raise SpecError(f"{tp} does not divide num_key_value_heads={kv} of {model.name}",
                            file=file, field="tensor_parallel")
    if model.num_experts and model.num_experts < server.ep_size:
        raise SpecError(f"expert-parallel size {server.ep_size} exceeds {model.num_experts} experts",
                        file=file, field="expert_parallel")


# =============================================================================================
# Derived quantities
# =============================================================================================
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
    return {"embedding": emb, "lm_head": head, "attention": attn, "dense_mlp": dense,
            "routed_experts": routed, "shared_experts": shared, "router": router, "norms": norms,
            "extra": model.extra_params, "total": base + routed, "active": base + active_routed}


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
    return {"dense": dense, "experts": experts, "embedding": emb, "replicated": repl,
            "total": attn + mlp + experts + emb + head + repl}


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


def step_bytes(model: ModelSpec, new_tokens, context_before, is_prefill, tp: int = 1, ep: int = 1,
               kv_bytes: float | None = None) -> dict[str, float]:
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
ACT_ELEMS_PER_TOKEN_H = 2.0        # live hidden-size tensors per token at the peak (hidden + residual)
ACT_ELEMS_PER_TOKEN_QKV = 1.0      # + the qkv projection output (per GPU); MLP intermediates are
                                   #   fused / freed by torch.compile (slope checked on Llama-3.1-70B
                                   #   and Qwen2.5-7B runs at 1024 / 2048 / 8192 batched tokens)
SAMPLER_COPIES = 12.0              # float32 max_num_seqs x vocab tensors live in the dummy sampler
                                   #   run (logits, softmax, log-softmax, sort values + int64 indices)
RESERVE_BYTES = 0.18 * GiB         # non-torch memory at TP=1: cuBLAS workspaces, allocator slack
RESERVE_TP_BYTES = 0.46 * GiB      # extra non-torch memory at TP>1: NCCL + custom all-reduce buffers


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
    return hw.visible_memory_bytes * server.gpu_memory_utilization - w - activation_bytes(model, server) \
        - reserve_bytes(server)


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
        "lower max_num_batched_tokens or quantize", file=file, field="server.tensor_parallel")


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
        "model": model.name, "model_class": model.model_class, "hardware": hw.name,
        "tensor_parallel": tp, "data_parallel": server.data_parallel, "expert_parallel": server.expert_parallel,
        "params_total": p["total"], "params_active": p["active"], "params": p,
        "weight_bytes_per_gpu": w["total"], "weight_bytes": w,
        "kv_bytes_per_token_per_gpu": kv_bytes_per_token(model, tp, kvb),
        "activation_bytes": activation_bytes(model, server), "reserve_bytes": reserve_bytes(server),
        "kv_memory_bytes": kv_memory_bytes(model, hw, server),
        "kv_blocks": kv_blocks(model, hw, server), "cpu_kv_blocks": cpu_kv_blocks(model, server),
        "block_size": server.block_size,
        "peak_flops": hw.peak_flops(model.weight_bytes), "hbm_bandwidth": hw.hbm_bandwidth,
    }


def cli_specs(args) -> int:
    """``bayeslat specs --model M --hardware H [--tp N] [--server S] [--json]``: print derived
    quantities (JSON with ``--json``, else a table). Exit 0; 2 on a SpecError (message on stderr)."""
    try:
        model = load_model(args.model)
        hw = load_hardware(args.hardware)
        server = load_server(args.server) if args.server else load_server(None)
        if getattr(args, "tp", None) is not None:
            if args.tp < 1:
                raise SpecError(f"must be >= 1, got {args.tp}", field="--tp")
            server = replace(server, tensor_parallel=int(args.tp))
        from bayeslat.deployment import derived

        out = derived(model, hw, server)
    except SpecError as e:
        print(f"bayeslat specs: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out, indent=2, default=float))
        return 0
    rows = [(k, v) for k, v in out.items() if not isinstance(v, dict)]
    rows += [(f"params.{k}", v) for k, v in out["params"].items()]
    rows += [(f"ctx.{k}", v) for k, v in out["feature_context"].items()]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        s = f"{v:,.6g}" if isinstance(v, float) else (f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v))
        print(f"{k:<{width}}  {s}")
    return 0
