"""A bundled or ingested run's deployment as the simulator takes it (:class:`RunDeployment`)."""

from __future__ import annotations

from dataclasses import dataclass

from bayeslat.deployment import resolve
from bayeslat.features import deployment_key
from bayeslat.model import coefficient_draws


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

    @property
    def tensor_parallel(self) -> int:
        """The TP degree (the feature context's GPU worker processes)."""
        return int(self.ctx.workers)

    def coefficient_draws(self, idata, n: int | None, seed: int = 0):
        """:func:`bayeslat.model.coefficient_draws` of this deployment (its hardware, class,
        deployment key and TP degree): the draws a prediction of one of its runs takes."""
        return coefficient_draws(
            idata,
            self.hardware,
            self.model_class,
            n=n,
            seed=seed,
            deployment=deployment_key(self.ctx, self.hardware),
            tensor_parallel=self.tensor_parallel,
        )


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
