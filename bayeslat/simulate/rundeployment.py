"""A bundled or ingested run's deployment as the simulator takes it (:class:`RunDeployment`)."""

from __future__ import annotations

from dataclasses import dataclass

from bayeslat.deployment import resolve


@dataclass(frozen=True)
class RunDeployment:
    """A validation case's deployment: the spec keys it was named by, the hardware level's name, the
    simulator's server settings and the kernel constants (from ``bayeslat.deployment.resolve``)."""

    name: str
    model_spec: str
    hardware_spec: str
    hardware: str
    model_class: str
    server: dict
    ctx: object
    kv_blocks: int


def deployment(model_spec: str, hardware_spec: str, server: dict, name: str = "") -> RunDeployment:
    """Build a :class:`RunDeployment` from spec keys (or paths) and a server dict; ``server['kv_blocks']``
    and ``server['cpu_kv_blocks']`` are the capacities vLLM reported for the run."""
    dep = resolve(
        model_spec,
        hardware_spec,
        server,
        name=name,
        kv_blocks=server.get("kv_blocks"),
        cpu_kv_blocks=int(server.get("cpu_kv_blocks") or 0),
        file=name or None,
    )
    return RunDeployment(
        name or model_spec,
        model_spec,
        hardware_spec,
        dep.hardware.name,
        dep.model_class,
        dep.sim_server(),
        dep.ctx,
        int(dep.kv_blocks),
    )
