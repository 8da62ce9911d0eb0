"""The bundled real runs (:mod:`bayeslat.data.datasets`) as an :class:`~bayeslat.data.obs.ObsTable`:
lifecycle reconstruction of each run with its server config, the runs whose step clock does not
fit left out (:func:`skip_reason`), traced step rows added after the clock offset.
"""

from __future__ import annotations

from bayeslat.data import datasets
from bayeslat.data import reconstruct as R
from bayeslat.data import windows as RW
from bayeslat.data.obs import ObsTable, build_obs, concat, subsample
from bayeslat.data.training_specs import bundled_spec
from bayeslat.deployment import resolve
from bayeslat.errors import SpecError


def model_class_of(model_spec) -> str:
    mc = getattr(model_spec, "model_class", None)
    if isinstance(mc, str):
        return mc
    ne = getattr(model_spec, "num_experts", None) or getattr(model_spec, "num_local_experts", None) or 0
    return "moe" if ne else "dense"


def reconstruct_run(run: str):
    """Lifecycle reconstruction of one bundled run with its server config."""
    info = datasets.run_info(run)
    srv = info["server"]
    sp = info["profile"]["data"].get("shared_prefix", {})
    kv = srv.get("kv_blocks")
    return R.reconstruct_lifecycle(
        datasets.requests(info["run"]),
        run=info["run"],
        budget=srv["max_num_batched_tokens"],
        max_num_seqs=srv["max_num_seqs"],
        block_size=srv.get("block_size", 16),
        system_prompt_len=sp.get("system_prompt_len", 0),
        timeout_s=info.get("client_timeout_s", 300.0),
        kv_capacity_tokens=kv * srv.get("block_size", 16) if kv else None,
    )


def skip_reason(rec, max_resid_steps: float = 2.0) -> str | None:
    """Why a run's lifecycle reconstruction is not used (None: it is): its step clock does not
    fit the decode windows (median ``|K(fin) - K(ft) - (n - 1)|`` above ``max_resid_steps``),
    with the likely cause from the reconstruction's diagnostics (see
    :mod:`bayeslat.data.reconstruct`, "Where it fails")."""
    i = rec.info
    if i["resid_steps_mad"] <= max_resid_steps:
        return None
    why = f"step clock does not fit: median |K(fin) - K(ft) - (n - 1)| = {i['resid_steps_mad']:.1f} steps > {max_resid_steps}"
    causes = []
    if i.get("kv_demand_ratio_p95", 0.0) > 1.0:
        causes.append(
            f"the rebuilt batches need {i['kv_demand_ratio_p95']:.2f}x the KV cache (p95): vLLM preempted "
            "requests, so decode windows hold pauses"
        )
    if i.get("failed_frac", 0.0) > 0.2:
        causes.append(
            f"{100 * i['failed_frac']:.0f}% of the requests failed (client timeout) after an unknown share "
            "of service: the batches' composition is unknown"
        )
    return why + ("; " + "; ".join(causes) if causes else "")


def _context_for(info: dict):
    dep = resolve(info["model_spec"], info["hardware_spec"], info["server"], kv="optional")
    return dep.ctx, model_class_of(dep.model)


def bundled_obs(
    runs=None,
    exclude=None,
    seed: int = 0,
    n_per_run_kind: int | None = 300,
    step_rows: bool = True,
    max_gap: int = 32,
    contexts: dict | None = None,
    max_resid_steps: float = 2.0,
    bins: tuple[int, int] | None = None,
) -> ObsTable:
    """ObsTable of the bundled real runs (all 16 by default), subsampled per (run, kind), or, with
    ``bins`` (time slices, design bins), every row collapsed into bin means
    (:func:`bayeslat.data.obs.collapse`; no subsample).

    ``contexts``: optional {run: (FeatureContext, model_class)} (else from bayeslat.config).
    Step rows (kind 0) come from the 3 traced runs after the clock offset. Runs whose step clock
    does not fit (median |K(fin) - K(ft) - (n - 1)| > ``max_resid_steps``) are skipped and listed
    in ``meta["skipped"]``, with :func:`skip_reason` in ``meta["skip_reasons"]``: currently the
    overloaded Llama-2-7B reasoning run (KV cache exhausted: preemptions, 85% failed requests;
    see :mod:`bayeslat.data.reconstruct`, "Where it fails").

    ``max_gap`` (default 32): a step row spans the ``d <= max_gap`` steps between two consecutive
    sampled records (``n_steps = d``; y = server-clock time between their starts). The
    single-step ``cycle_time_us`` pairs (d = 1) disagree with the per-request ITL (median ~10 ms
    vs ~20 ms per token on Llama-2-70B) while the multi-step gaps agree with it and with the
    reconstruction to 1-2 % MAPE (benchmarks/reconstruct_agreement.py); use ``max_gap=1`` only
    for the contract's literal one-step rows."""
    all_runs = list(datasets.runs()["run"])
    sel = [r for r in all_runs if runs is None or any(r == x or r.endswith(x) or x in r for x in runs)]
    sel = [r for r in sel if not exclude or not any(r == x or x in r for x in exclude)]
    if not sel:
        raise SpecError(f"no bundled run matches runs={runs} exclude={exclude}", field="runs")
    trace = datasets.steps()
    tables, skipped, reasons = [], [], {}
    for run in sel:
        info = datasets.run_info(run)
        rec = reconstruct_run(run)
        why = skip_reason(rec, max_resid_steps)
        if why is not None:
            skipped.append(run)
            reasons[run] = why
            continue
        ctx, cls = contexts[run] if contexts and run in contexts else _context_for(info)
        rows = None
        tr = trace[trace["experiment_id"] == run]
        if step_rows and len(tr):
            off = RW.estimate_offset(rec, tr, seed=seed)
            rows = RW.trace_step_windows(rec, tr, off["offset_us"], max_gap=max_gap)
        t = build_obs(rec, ctx, info["hardware"], cls, trace_rows=rows, bins=bins)
        if not (contexts and run in contexts):  # a given context is not the bundled specs' deployment
            t.meta["specs"] = {run: bundled_spec(run)}
        tables.append(subsample(t, n_per_run_kind, seed) if n_per_run_kind and not bins else t)
    if not tables:
        raise SpecError(f"no usable run among {sel} (skipped: {skipped})", field="runs")
    out = concat(tables)
    out.meta["skipped"] = skipped
    out.meta["skip_reasons"] = reasons
    return out
