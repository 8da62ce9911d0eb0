"""Model architecture: :class:`ModelSpec` from a HuggingFace ``config.json`` (:func:`load_model`).

Dense, GQA/MQA, MoE (Mixtral, Qwen-MoE, DeepSeek, Llama-4 interleaved, shared experts, first dense
layers), MLA (DeepSeek-V2/V3, GLM), FP8 / int4 ``quantization_config``; ``text_config`` nesting.
A bare key (``"llama-2-7b-hf"``) resolves under the bundled ``bayeslat/data/specs/models``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from bayeslat.config.files import DTYPE_BYTES, _read_json, _resolve
from bayeslat.errors import SpecError


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
    intermediate_size: int  # dense-MLP width (dense layers of MoE models included)
    vocab_size: int
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    # MoE
    num_experts: int = 0  # routed experts per MoE layer
    experts_per_token: int = 0  # top-k
    moe_intermediate_size: int = 0  # width of one routed expert
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
    act_bytes: float = 2.0  # activations / non-quantized weights (torch_dtype)
    weight_bytes: float = 2.0  # bytes per quantized linear-layer weight (1 FP8, 0.5 int4)
    attn_weight_bytes: float = 2.0  # attention projections (kept in dtype when the quant ignores them)
    quantization: str | None = None
    extra_params: int = 0  # params outside the decoder (e.g. vision tower), in act_bytes
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
            kv = (
                h * (self.kv_lora_rank + self.qk_rope_head_dim)
                + self.kv_lora_rank
                + self.kv_lora_rank * nh * (self.qk_nope_head_dim + self.v_head_dim)
            )
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
            raise SpecError(f"cannot infer weight bits of quant_method {method!r}", file=file, field="quantization_config")
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
        raise SpecError(
            f"num_attention_heads={nh} is not a multiple of num_key_value_heads={nkv}",
            file=file,
            field=pre + "num_key_value_heads",
        )
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
        mla.update(
            q_lora_rank=_int_field(cfg, "q_lora_rank", file, default=0),
            qk_rope_head_dim=_int_field(cfg, "qk_rope_head_dim", file, minimum=1),
            qk_nope_head_dim=_int_field(cfg, "qk_nope_head_dim", file, minimum=1),
            v_head_dim=_int_field(cfg, "v_head_dim", file, minimum=1),
        )

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
        model_type=mtype,
        hidden_size=h,
        num_layers=L,
        num_heads=nh,
        num_kv_heads=nkv,
        head_dim=head_dim,
        intermediate_size=dense_i,
        vocab_size=vocab,
        tie_word_embeddings=bool(tie),
        qkv_bias=bool(cfg.get("attention_bias", mtype in ("qwen2", "qwen2_moe"))),
        num_experts=E,
        experts_per_token=k,
        moe_intermediate_size=moe_i,
        shared_intermediate_size=shared_i,
        num_moe_layers=n_moe,
        dtype=dtype,
        act_bytes=act,
        weight_bytes=wb,
        attn_weight_bytes=ab,
        quantization=quant,
        extra_params=extra,
        max_position_embeddings=int(cfg.get("max_position_embeddings") or 0),
        source=file,
        **mla,
    )


def load_model(path_or_key: str | Path) -> ModelSpec:
    """Load a HuggingFace ``config.json`` (path, folder, or key under ``specs/models``)."""
    p = _resolve(path_or_key, "models", "config.json", (".json",))
    cfg = _read_json(p, "config.json")
    name = p.parent.name if p.name == "config.json" else p.stem
    return model_from_config(cfg, file=str(p), name=name)
