"""Deployment specs: model config x GPU datasheet x server config, and what follows from them.

Three frozen dataclasses, each built by a validating loader that raises
:class:`bayeslat.errors.SpecError` naming the file and the field:

- :class:`ModelSpec` from a HuggingFace ``config.json`` (:func:`load_model`; :mod:`.model`).
- :class:`HardwareSpec` from a GPU datasheet JSON (:func:`load_hardware`; :mod:`.hardware`).
- :class:`ServerConfig` from a YAML file or a dict (:func:`load_server`; :mod:`.server`), vLLM
  v0.15 defaults (schema: ``specs/servers/SCHEMA.md``).

A bare key (``"llama-2-7b-hf"``, ``"h100-sxm"``, ``"llama-2-7b-tp1"``) resolves under the bundled
``bayeslat/data/specs/{models,hardware,servers}`` (:mod:`.files`).

Derived quantities (:mod:`.derived`; all per GPU after TP / EP sharding unless the name says
``total``): parameters, weight bytes, KV bytes per token, step FLOPs / bytes / communication and
the GPU / CPU KV-cache capacity in blocks, computed the way vLLM v0.15 profiles memory.

Units: bytes, FLOPs (multiply-add = 2 FLOPs), FLOP/s, bytes/s, tokens. ``GiB = 2**30``.
"""

from bayeslat.config.derived import (
    ACT_ELEMS_PER_TOKEN_H,
    ACT_ELEMS_PER_TOKEN_QKV,
    RESERVE_BYTES,
    RESERVE_TP_BYTES,
    SAMPLER_COPIES,
    activation_bytes,
    allreduce_bytes,
    allreduce_bytes_per_token,
    attn_flops_per_pair,
    cpu_kv_blocks,
    derived_quantities,
    dispatch_bytes,
    dispatch_bytes_per_token,
    expected_experts_touched,
    kv_blocks,
    kv_bytes_per_token,
    kv_dtype_bytes,
    kv_memory_bytes,
    linear_flops_per_token,
    lm_head_flops_per_seq,
    offload_bytes,
    param_counts,
    require_kv_blocks,
    reserve_bytes,
    step_bytes,
    step_flops,
    weight_bytes_per_gpu,
)
from bayeslat.config.files import DTYPE_BYTES, GiB, specs_dir
from bayeslat.config.hardware import (
    AMBIGUOUS_GPUS,
    BLIS_HARDWARE_KEYS,
    HARDWARE_ALIASES,
    HARDWARE_REQUIRED,
    HARDWARE_SCHEMA,
    VISIBLE_FRACTION,
    HardwareSpec,
    hardware_from_blis,
    hardware_from_dict,
    hardware_key,
    load_hardware,
    match_bundled_hardware,
)
from bayeslat.config.model import ModelSpec, load_model, model_from_config
from bayeslat.config.server import (
    SERVER_ALIASES,
    ServerConfig,
    load_server,
    release_distance,
    server_from_dict,
    validate_deployment,
    vllm_release,
)

__all__ = [
    # files
    "GiB",
    "DTYPE_BYTES",
    "specs_dir",
    # model
    "ModelSpec",
    "model_from_config",
    "load_model",
    # hardware
    "HARDWARE_SCHEMA",
    "HARDWARE_REQUIRED",
    "VISIBLE_FRACTION",
    "HARDWARE_ALIASES",
    "AMBIGUOUS_GPUS",
    "BLIS_HARDWARE_KEYS",
    "HardwareSpec",
    "hardware_from_dict",
    "hardware_key",
    "match_bundled_hardware",
    "hardware_from_blis",
    "load_hardware",
    # server
    "ServerConfig",
    "SERVER_ALIASES",
    "server_from_dict",
    "load_server",
    "release_distance",
    "vllm_release",
    "validate_deployment",
    # derived quantities
    "param_counts",
    "weight_bytes_per_gpu",
    "kv_dtype_bytes",
    "kv_bytes_per_token",
    "linear_flops_per_token",
    "attn_flops_per_pair",
    "lm_head_flops_per_seq",
    "step_flops",
    "expected_experts_touched",
    "step_bytes",
    "allreduce_bytes_per_token",
    "allreduce_bytes",
    "dispatch_bytes_per_token",
    "dispatch_bytes",
    "offload_bytes",
    "ACT_ELEMS_PER_TOKEN_H",
    "ACT_ELEMS_PER_TOKEN_QKV",
    "SAMPLER_COPIES",
    "RESERVE_BYTES",
    "RESERVE_TP_BYTES",
    "activation_bytes",
    "reserve_bytes",
    "kv_memory_bytes",
    "kv_blocks",
    "require_kv_blocks",
    "cpu_kv_blocks",
    "derived_quantities",
]
