"""vLLM server settings: :class:`ServerConfig` from a YAML file or a dict (:func:`load_server`,
vLLM v0.15 defaults, schema ``specs/servers/SCHEMA.md``), and the check that a model shards over
the server's tensor parallelism (:func:`validate_deployment`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bayeslat.config.files import _resolve
from bayeslat.config.model import ModelSpec
from bayeslat.errors import SpecError, read_yaml


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
    vllm_version: str | None = None
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


_SERVER_TYPES = {
    "tensor_parallel": int,
    "data_parallel": int,
    "expert_parallel": bool,
    "max_num_batched_tokens": int,
    "max_num_seqs": int,
    "max_model_len": int,
    "block_size": int,
    "gpu_memory_utilization": float,
    "kv_blocks": int,
    "cpu_offload_gb": float,
    "cpu_kv_blocks": int,
    "prefix_caching": bool,
    "chunked_prefill": bool,
    "dtype": str,
    "kv_cache_dtype": str,
    "quantization": str,
    "vllm_version": str,
    "name": str,
    "model": str,
    "hardware": str,
}
SERVER_ALIASES = {
    "tensor_parallel_size": "tensor_parallel",
    "tp": "tensor_parallel",
    "data_parallel_size": "data_parallel",
    "dp": "data_parallel",
    "enable_expert_parallel": "expert_parallel",
    "enable_prefix_caching": "prefix_caching",
    "enable_chunked_prefill": "chunked_prefill",
    "num_gpu_blocks_override": "kv_blocks",
    "kv_offloading_size": "cpu_offload_gb",
}


def server_from_dict(d: Mapping | None, file: str = "<dict>") -> ServerConfig:
    """Validate a server-config dict (keys of :class:`ServerConfig` or vLLM's own names)."""
    d = dict(d or {})
    if isinstance(d.get("server"), Mapping):  # experiment files nest the server config
        d = dict(d["server"])
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = SERVER_ALIASES.get(str(k).replace("-", "_"), str(k).replace("-", "_"))
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
    if out.get("vllm_version") is not None:
        out["vllm_version"] = vllm_release(out["vllm_version"], file=file)
    out = {k: v for k, v in out.items() if v is not None or k in ("max_model_len", "kv_blocks", "cpu_kv_blocks", "quantization")}
    return ServerConfig(**out, source=file)


_RELEASE = re.compile(r"[vV]?(\d+)\.(\d+)(?:\.(\d+))?(?=$|[.+\-]|rc|a\d|b\d|dev|post)")


def vllm_release(v, file: str | None = None) -> str:
    """A vLLM version as ``"MAJOR.MINOR.PATCH"`` (``"v0.15.1"``, ``"0.15"`` -> ``"0.15.0"``, a local or
    dev suffix such as ``"0.14.1.dev1+gd68209402"`` dropped); SpecError (field ``vllm_version``) for
    anything else."""
    m = _RELEASE.match(str(v).strip())
    if m is None:
        raise SpecError(f"not a vLLM version (MAJOR.MINOR[.PATCH]): {v!r}", file=file, field="vllm_version")
    return f"{int(m[1])}.{int(m[2])}.{int(m[3] or 0)}"


def release_distance(a: str, b: str) -> int:
    """Minor releases between two :func:`vllm_release` versions (a major step counts as 100): the
    distance the version discrepancy grows with; patch releases of one minor line are distance 0."""
    (ma, na, _), (mb, nb, _) = (tuple(int(x) for x in vllm_release(v).split(".")) for v in (a, b))
    return abs((100 * ma + na) - (100 * mb + nb))


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
        raise SpecError(
            f"{tp} does not divide num_attention_heads={model.num_heads} of {model.name}", file=file, field="tensor_parallel"
        )
    if not model.is_mla:
        kv = model.num_kv_heads
        if (kv >= tp and kv % tp) or (kv < tp and tp % kv):
            raise SpecError(f"{tp} does not divide num_key_value_heads={kv} of {model.name}", file=file, field="tensor_parallel")
    if model.num_experts and model.num_experts < server.ep_size:
        raise SpecError(
            f"expert-parallel size {server.ep_size} exceeds {model.num_experts} experts", file=file, field="expert_parallel"
        )
