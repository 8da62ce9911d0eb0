"""``bayeslat predict SPEC.yaml``: the posterior predictive of a SPEC's workload, printed."""

from __future__ import annotations

import json
import sys

from bayeslat import pipeline
from bayeslat.simulate import METRICS, NEW_LEVEL_DRAWS


def run(args) -> int:
    pred = pipeline.predict(args.spec, args.model, draws=int(args.draws), seed=int(args.seed))
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
    if new_levels and int(args.draws) < NEW_LEVEL_DRAWS:
        print(
            f"note: {int(args.draws)} draws of a configuration with new levels: its point and interval move by "
            f"10-20% between seeds (benchmarks/hardware_transfer.py); --draws {NEW_LEVEL_DRAWS} for a steadier "
            "estimate",
            file=sys.stderr,
        )
    return 0
