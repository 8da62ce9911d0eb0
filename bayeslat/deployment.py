"""The one resolver of a deployment.

A deployment is a model config x a GPU datasheet x a vLLM server config. ``resolve`` turns the
three (spec keys, file paths or loaded objects) into a ``Deployment``: the kernel constants
(``bayeslat.features.FeatureContext``), the KV-cache capacity in blocks on the GPU and in CPU
memory, ``max_model_len`` and the simulator's server settings. Every place that needs a
FeatureContext from a spec goes through here, so prediction, validation, checks, probes and the
training-deployment records agree on what a deployment is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bayeslat import config as C
from bayeslat import features as F
from bayeslat.errors import SpecError

#: how the GPU KV-cache capacity is found: ``"require"`` raises a SpecError naming ``file`` when the
#: deployment leaves no room for the KV cache; ``"derive"`` returns the derived count (0 when none);
#: ``"optional"`` returns None when it cannot be derived (the deployment's features are still
#: wanted, e.g. for a training run's record)
KV_MODES = ("require", "derive", "optional")


@dataclass(frozen=True)
class Deployment:
    """A resolved deployment.

    Attributes
    ----------
    model, hardware, server
        The loaded ``bayeslat.config.ModelSpec``, ``bayeslat.config.HardwareSpec``
        and ``bayeslat.config.ServerConfig``.
    ctx
        The kernel constants per GPU after TP / EP sharding.
    kv_blocks
        GPU KV-cache capacity in blocks (None when it could not be derived, ``kv="optional"``).
    cpu_kv_blocks
        CPU (offload) KV capacity in blocks.
    name
        A label (the SPEC path, run id or ``model@hardware``).
    """

    model: Any
    hardware: Any
    server: Any
    ctx: F.FeatureContext
    kv_blocks: int | None
    cpu_kv_blocks: int
    name: str = ""

    @property
    def model_class(self) -> str:
        return self.model.model_class

    @property
    def max_model_len(self) -> int:
        """The longest sequence the deployment serves (``served_max_model_len``)."""
        return served_max_model_len(self.model, self.server)

    @property
    def key(self) -> str:
        """The deployment key the fit stores (``bayeslat.features.deployment_key``)."""
        return F.deployment_key(self.ctx, self.hardware.name)

    def sim_server(self) -> dict:
        """The simulator's server settings (``sim_server``)."""
        return sim_server(self.server, self.kv_blocks or 0, self.cpu_kv_blocks)

    def spec(self, workload=None, spec_path: str | None = None) -> dict:
        """The resolved-spec dict that ``predict``, ``check`` and ``update`` pass around: {model,
        hardware, server, workload, ctx, kv_blocks, cpu_kv_blocks, spec_path}."""
        return {
            "model": self.model,
            "hardware": self.hardware,
            "server": self.server,
            "workload": workload,
            "ctx": self.ctx,
            "kv_blocks": self.kv_blocks,
            "cpu_kv_blocks": self.cpu_kv_blocks,
            "spec_path": spec_path if spec_path is not None else self.name,
        }


def sim_server(server, kv_blocks: int, cpu_kv_blocks: int = 0) -> dict:
    """The simulator's server settings from a ``ServerConfig`` and the KV capacities in blocks; only
    a configured ``max_model_len`` rejects requests in the simulator."""
    return {
        "max_num_seqs": server.max_num_seqs,
        "max_num_batched_tokens": server.max_num_batched_tokens,
        "block_size": server.block_size,
        "kv_blocks": int(kv_blocks),
        "cpu_kv_blocks": int(cpu_kv_blocks),
        "chunked_prefill": server.chunked_prefill,
        "prefix_caching": server.prefix_caching,
        "max_model_len": server.max_model_len,
    }


def served_max_model_len(model, server) -> int:
    """``max_model_len`` of the server config, else the model's ``max_position_embeddings`` (what vLLM
    serves when it is not set), else 4096."""
    L = getattr(server, "max_model_len", None) or getattr(model, "max_position_embeddings", 0) or 4096
    return int(L)


def _load(value, loader, cls):
    return value if isinstance(value, cls) else loader(value)


def resolve(
    model,
    hardware,
    server=None,
    *,
    name: str = "",
    kv: str = "require",
    kv_blocks: int | None = None,
    cpu_kv_blocks: int | None = None,
    file: str | None = None,
) -> Deployment:
    """Resolve a deployment.

    Parameters
    ----------
    model, hardware
        A spec key, a file path or an already loaded ``ModelSpec`` / ``HardwareSpec``.
    server
        A server dict, YAML path, spec key, ``ServerConfig`` or None (vLLM's defaults).
    name
        A label for the deployment (default ``model@hardware``).
    kv
        How the GPU KV capacity is found, one of ``KV_MODES``.
    kv_blocks, cpu_kv_blocks
        Measured capacities that replace the derived ones (e.g. what vLLM reported for a run).
    file
        The file named in a SpecError about the KV capacity.

    Returns
    -------
    Deployment

    Raises
    ------
    SpecError
        When a spec cannot be loaded, TP cannot shard the model, or (``kv="require"``) the
        deployment leaves no room for the KV cache.

    Examples
    --------
    >>> from bayeslat.deployment import resolve
    >>> d = resolve("llama-2-7b-hf", "h100-sxm", {"tensor_parallel": 1})
    >>> d.model_class, d.kv_blocks > 0
    ('dense', True)
    """
    if kv not in KV_MODES:
        raise ValueError(f"kv must be one of {KV_MODES}, got {kv!r}")
    m = _load(model, C.load_model, C.ModelSpec)
    hw = _load(hardware, C.load_hardware, C.HardwareSpec)
    srv = server if isinstance(server, C.ServerConfig) else C.load_server(server)
    ctx = F.feature_context(m, hw, srv)
    if kv_blocks:
        kvb = int(kv_blocks)
    elif kv == "require":
        kvb = C.require_kv_blocks(m, hw, srv, file=file)
    elif kv == "derive":
        kvb = C.kv_blocks(m, hw, srv)
    else:
        try:
            kvb = C.kv_blocks(m, hw, srv)
        except (SpecError, ValueError, ZeroDivisionError):
            kvb = None
    cpub = int(cpu_kv_blocks) if cpu_kv_blocks is not None else C.cpu_kv_blocks(m, srv)
    return Deployment(m, hw, srv, ctx, kvb, cpub, name or f"{m.name}@{hw.name}")


def derived(model, hardware, server=None) -> dict[str, Any]:
    """Every derived quantity of a deployment as a JSON-able dict (what ``bayeslat specs`` prints)."""
    m = _load(model, C.load_model, C.ModelSpec)
    hw = _load(hardware, C.load_hardware, C.HardwareSpec)
    srv = server if isinstance(server, C.ServerConfig) else C.load_server(server)
    out = C.derived_quantities(m, hw, srv)
    return out | {"feature_context": resolve(m, hw, srv, kv="derive").ctx.to_dict()}


__all__ = ["Deployment", "KV_MODES", "derived", "resolve", "served_max_model_len", "sim_server"]
