"""``bayeslat update MODEL --probe P... --spec SPEC --out OUT``: a fit updated with a probe
(:func:`bayeslat.probe.update`), written to OUT, and what the update did.
"""

from __future__ import annotations

import json

from bayeslat import model as M
from bayeslat.cli.check import _format_probes, _jsonable, _load_model
from bayeslat.probe import PSIS_K_MAX, probe_obs, update


def run(args) -> int:
    """``bayeslat update MODEL --probe P... --spec SPEC --out OUT``: the probe-gated update (the
    probe's deployment conditioned on its rows, or with ``--refit`` a refit), written and reported."""
    idata = _load_model(args.model)
    obs, infos = probe_obs(args.spec, args.probe)
    new = update(
        idata,
        obs,
        args.spec,
        probe_infos=infos,
        mode="refit" if getattr(args, "refit", False) else "deployment",
        when=getattr(args, "when", None) or "auto",
    )
    path = M.save(new, args.out)
    rep = json.loads(new.attrs["transfer_update"]) | {
        "out": str(path),
        "probes": [{k: v for k, v in i.items() if k != "frame"} for i in infos],
    }
    if args.json:
        print(json.dumps(_jsonable(rep), indent=1))
    else:
        pr = rep["probe_rows"]
        g = rep.get("gate") or {}
        if rep.get("applied", True):
            print(f"wrote {path}: {rep['rows_train']} training + {rep['rows_probe']} probe rows ({rep['mode']} update)")
        else:
            print(f"wrote {path}: the fit unchanged")
        if g:
            print(f"  probe check: {g['decision']} ({'; '.join(g['reasons'])}); {g['summary']}")
        for line in _format_probes(infos):
            print(line)
        du = rep.get("deployment_update") or {}
        if "step_factor" in du:
            fx = "".join(
                f", {p} part {du[p + '_factor']['mean']:.3f} [{du[p + '_factor']['q05']:.3f}, {du[p + '_factor']['q95']:.3f}]"
                for p in ("fixed", "load")
                if p + "_factor" in du
            )
            as_run = (du.get("level") or {}).get("p_run") is not None
            print(
                f"  {'probed run of deployment' if as_run else 'deployment'} {du['deployment']}: step-time factor {du['step_factor']['mean']:.3f} "
                f"[{du['step_factor']['q05']:.3f}, {du['step_factor']['q95']:.3f}]{fx}; CPU-time factor "
                f"{du['cpu_factor']['mean']:.3f} [{du['cpu_factor']['q05']:.3f}, {du['cpu_factor']['q95']:.3f}]"
            )
            fp = du.get("factor_prior_sd") or {}
            lv = du.get("level") or {}
            if fp and lv.get("p_run") is None:  # the deployment level's prior (a run's is printed below)
                fit, fl = fp.get("fit") or {}, fp.get("floor")
                src = f"the fit's deployment spread {fit.get('step', float('nan')):.3f} / {fit.get('cpu', float('nan')):.3f}" + (
                    f", floored at the out-of-sample spread of new deployments {fl['step']:.3f} / {fl['cpu']:.3f}" if fl else ""
                )
                print(f"  factor prior (log SD, median over draws): step {fp['step']:.3f}, CPU {fp['cpu']:.3f} ({src})")
            if du.get("trained_deployment") and lv.get("p_run") is not None:
                ch = lv.get("change_prior_sd")
                print(
                    f"  {du['deployment']} is a deployment of the fit (a training run had this model, GPU and "
                    f"parallelism): the probe reads as a new run of it with probability {lv['p_run']:.2f} (run-level "
                    f"factors, prior SD step {lv['run_prior_sd']['step']:.3f} / CPU {lv['run_prior_sd']['cpu']:.3f})"
                    + (
                        f", else as a changed deployment (what the deployment key does not see: vLLM version, chunk "
                        f"size, driver; change SD step {ch['step']:.3f} / CPU {ch['cpu']:.3f})"
                        if ch
                        else ""
                    )
                )
            dw = du.get("draw_weights")
            if dw and dw.get("applied", True):
                print(
                    f"  new level(s) {', '.join(dw.get('new_levels') or [])}: posterior draws reweighted by the probe's "
                    f"levels, effective sample size {100 * dw['ess_frac']:.0f}% (low: the probe rules out draws)"
                )
            elif dw and dw.get("new_levels"):
                print(
                    f"  new level(s) {', '.join(dw['new_levels'])}: the probe's weights of the posterior draws are not "
                    f"trusted (Pareto k {dw.get('pareto_k', float('nan')):.2f} > {PSIS_K_MAX}: a few draws would carry it); "
                    "the draws keep equal weights and the deployment factors alone carry the probe"
                )
            elif dw:
                print(
                    "  every level of the configuration is trained: the posterior draws keep equal weights "
                    f"(the {'run' if as_run else 'deployment'} factors alone carry the probe)"
                )
        applied = rep.get("applied", True)
        for tag in ("before", "after") if applied else ("before",):
            e = pr[tag]
            label = f"probe rows {tag:6s}" if applied else "probe rows"
            print(
                f"  {label}: median |err| {e['abs_err_pct_median']:.1f}%, rel 90% width "
                f"{100 * e['rel_width90_median']:.0f}%, coverage {100 * e['coverage90']:.0f}%"
            )
        if "probe_workload" in rep:
            pw = rep["probe_workload"]
            for m in ("ttft_ms", "e2e_ms"):
                b = f"{pw['before'][m]['mean']:.1f} ({pw['before'][m]['err_pct']:+.1f}%)"
                print(
                    f"  {m}: observed {pw['observed'][m]:.1f}, "
                    + (
                        f"before {b}, after {pw['after'][m]['mean']:.1f} ({pw['after'][m]['err_pct']:+.1f}%)"
                        if applied
                        else f"predicted {b}"
                    )
                )
    return 0
