"""``bayeslat predict SPEC.yaml``: the posterior predictive of a SPEC's workload, printed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bayeslat import pipeline
from bayeslat.simulate import METRICS, NEW_LEVEL_DRAWS
from bayeslat.simulate.extrapolation import version_note


def run(args) -> int:
    if len(args.spec) > 1:
        return _run_many(args)
    pred = pipeline.predict(args.spec[0], args.model, draws=int(args.draws), seed=int(args.seed))
    spec, res, new_levels = pred.pop("spec"), pred.pop("result"), pred.pop("new_levels")
    out = pred
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"{spec['spec_path']}: {out['requests']} requests, {res['draws']} posterior draws, "
            f"{res['n_failed']:.0f} failed per draw (mean)"
        )
        print(f"{'metric':8s} {'mean':>10s} {'p90':>10s} {'p99':>10s}   mean 90% interval")
        for m in METRICS:
            e = out[m]
            lo, hi = e["mean_interval90"]
            print(f"{m:8s} {e['mean']:10.2f} {e['p90']:10.2f} {e['p99']:10.2f}   [{lo:.2f}, {hi:.2f}]")
        drawn = [lv for lv in new_levels if lv != "hardware_cpu"]
        if "hardware_cpu" in new_levels:
            print("note: the GPU's kernels were fitted (hardware level); its CPU-side terms are drawn from the population")
        if drawn:
            print(f"note: {', '.join(drawn)} not in the fit: drawn from the population (wider intervals)")
        wd = out.get("workload_discrepancy")
        if wd:
            print(
                f"note: {100 * wd['distance']:.0f}% of the simulated steps lie outside the training range "
                f"({wd['feature']}): the draws carry a step-time discrepancy of sd {wd['tau']:.3f} (log scale)"
            )
        vd = out.get("version_discrepancy")
        if vd:
            print(f"note: {version_note(vd)}")
    if new_levels and int(args.draws) < NEW_LEVEL_DRAWS:
        print(
            f"note: {int(args.draws)} draws of a configuration with new levels: its point and interval move by "
            f"10-20% between seeds (benchmarks/hardware_transfer.py); --draws {NEW_LEVEL_DRAWS} for a steadier "
            "estimate",
            file=sys.stderr,
        )
    return 0


def _run_many(args) -> int:
    """Several SPECs: one Dask task each (``pipeline.predict_many``); a table, or JSON lines."""
    from bayeslat import cluster

    progress = None if args.no_progress else cluster.stderr_progress("predict: specs")
    out = pipeline.predict_many(
        args.spec,
        args.model,
        draws=int(args.draws),
        seed=int(args.seed),
        workers=args.workers,
        scheduler=args.scheduler,
        progress=progress,
    )
    if args.json:
        for o in out:
            print(json.dumps(o))
        return 0
    print(f"{'spec':40s} {'TTFT mean':>10s} {'ITL mean':>9s} {'E2E mean':>10s}   E2E mean 90% interval  new levels")
    for o in out:
        lo, hi = o["e2e_ms"]["mean_interval90"]
        print(
            f"{Path(o['spec']).name[-40:]:40s} {o['ttft_ms']['mean']:10.2f} {o['itl_ms']['mean']:9.2f} {o['e2e_ms']['mean']:10.2f}   "
            f"[{lo:.2f}, {hi:.2f}]  {', '.join(o['new_levels']) or '-'}"
        )
    return 0
