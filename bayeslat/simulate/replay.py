"""Replay cases: the bundled per-request runs as (deployment, workload, observed) cases, and the
posterior predictive of a case under a fit (what validation and the simulator discrepancy score)."""

from __future__ import annotations

from dataclasses import dataclass

from bayeslat import model
from bayeslat.data import datasets, workload
from bayeslat.deployment import resolve
from bayeslat.features import deployment_key
from bayeslat.simulate.predictive import posterior_predictive

#: run-level metrics, as the observed keys name them ("ttft_mean", "e2e_p99", ...)
METRICS = ("ttft", "itl", "e2e")


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


def replay_cases(runs: list[str] | None):
    out = []
    for info in datasets.runs().to_dict("records"):
        if runs and not any(r in info["run"] for r in runs):
            continue
        dep = deployment(info["model_spec"], info["hardware_spec"], info["server"], info["run"])
        wl = workload.from_run(info["run"])
        obs = info["observed"]["all"]
        observed = {f"{m}_{q}": obs[f"{m}_{q}"] for m in METRICS for q in ("mean", "p90", "p99")}
        out.append(
            dict(
                run=info["run"],
                model=info["model"],
                workload=info["workload"],
                kind="replay",
                itl_definition="server",
                deployment=dep,
                workload_obj=wl,
                observed=observed,
                stress=info["workload"] == "reasoning",
            )
        )
    return out


def predict_case(case: dict, idata, draws: int, seed: int, *, discrepancy: bool = True) -> dict:
    """Posterior predictive of one case; returns the prediction dict of :func:`posterior_predictive`.
    ``discrepancy=False``: without the fit's simulator discrepancy (what
    :func:`bayeslat.simulate.discrepancy.sim_discrepancy` measures)."""
    dep = case["deployment"]
    cd = model.coefficient_draws(
        idata, dep.hardware, dep.model_class, n=draws, seed=seed, deployment=deployment_key(dep.ctx, dep.hardware)
    )
    if not discrepancy:
        cd.sim_sd = None
    return posterior_predictive(case["workload_obj"], dep.ctx, dep.server, cd, n_draws=draws, seed=seed)
