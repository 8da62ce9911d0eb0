"""Model config, GPU datasheet and vLLM server config: loaders and derived quantities."""
from bayeslat.config.specs import (  # noqa: F401
    HardwareSpec,
    ModelSpec,
    ServerConfig,
    cpu_kv_blocks,
    derived_quantities,
    kv_blocks,
    load_hardware,
    load_model,
    load_server,
    require_kv_blocks,
)
