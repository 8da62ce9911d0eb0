"""``bayeslat hardware``: fit the hardware level (:mod:`bayeslat.model.hardware`) to real kernel
timings, write it (``models/hardware.nc`` is the shipped one, which ``bayeslat fit`` attaches) and
print each GPU's efficiency per kernel family with its 90% interval."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bayeslat.data import kernels as K
from bayeslat.model import hardware as HW


def efficiency_table(idata) -> list[dict]:
    """Per GPU, family and term: the fraction of the datasheet roofline reached (1 / multiplier),
    posterior median and 90% interval, and the all-reduce's factor per doubling of GPUs (term
    ``x2gpu``); plus the population (``"new GPU"``: a GPU drawn from it)."""
    post = idata.posterior
    gpus = [str(g) for g in post.coords["gpu"].values]
    rows = []
    for g in [*gpus, "new GPU"]:
        a, _ = HW.efficiency_draws(idata, g if g in gpus else "__population__")
        for fi, fam in enumerate(K.FAMILIES):
            for ti, term in enumerate(HW.TERMS):
                if not HW.ACTIVE_MASK[fi, ti]:
                    continue
                v = np.exp(-a[:, fi, ti]) if term != "call" else np.exp(a[:, fi, ti]) * HW.CALL_MS * 1e3
                lo, med, hi = np.quantile(v, [0.05, 0.5, 0.95])
                rows.append({"gpu": g, "family": fam, "term": term, "median": med, "lo90": lo, "hi90": hi})
        if "tp_slope" in post:
            # the all-reduce's time factor per doubling of the GPUs its ring spans
            lo, med, hi = np.quantile(np.exp(HW.tp_slope_draws(idata, g if g in gpus else "__population__")), [0.05, 0.5, 0.95])
            rows.append({"gpu": g, "family": HW.TP_FAMILY, "term": "x2gpu", "median": med, "lo90": lo, "hi90": hi})
    return rows


def format_table(rows: list[dict], health: dict) -> str:
    lines = [
        "fraction of the datasheet roofline (flop, byte), launch floor in us (call) and the all-reduce's time factor per "
        "doubling of its GPUs (x2gpu), median [90% interval]",
        f"{'gpu':10s} {'family':10s} {'term':5s} {'median':>8s} {'90% interval':>18s}",
    ]
    for r in rows:
        lines.append(f"{r['gpu']:10s} {r['family']:10s} {r['term']:5s} {r['median']:8.3f} [{r['lo90']:7.3f}, {r['hi90']:7.3f}]")
    lines.append(
        f"sampler: {health.get('divergences')} divergences, max R-hat {health.get('max_r_hat', float('nan')):.3f}, "
        f"min bulk ESS {health.get('min_ess_bulk', float('nan')):.0f}, min tail ESS {health.get('min_ess_tail', float('nan')):.0f}"
    )
    return "\n".join(lines)


def run(args) -> int:
    src = args.kernels
    if src is None:
        table = K.load()
    elif Path(src).is_dir():
        table, report = K.compact(src)
        for fam, r in report.items():
            skipped = ", ".join(f"{v} {k}" for k, v in r["skipped"].items()) or "none"
            print(f"{r['file']}: {r['rows_in']} rows, {r['rows_out']} kept; skipped: {skipped}")
    else:
        table = K.load(src)
    idata = HW.fit_hardware(
        K.serving_shapes(table),
        per_family=args.per_family,
        draws=args.draws,
        tune=args.tune,
        chains=args.chains,
        seed=args.seed,
        progressbar=not args.no_progress,
    )
    health = HW.summarize_fit(idata)
    path = HW.save_hardware(idata, args.out)
    rows = efficiency_table(idata)
    if args.json:
        print(json.dumps({"health": health, "efficiency": rows}, indent=1))
    else:
        print(format_table(rows, health))
        print(f"wrote {path} ({idata.attrs['sampling_seconds']:.0f} s sampling)")
    ok = health["divergences"] == 0 and health["max_r_hat"] <= 1.01 and health["min_ess_bulk"] >= 400
    return 0 if ok else 1
