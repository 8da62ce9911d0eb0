"""``bayeslat calibrate MODEL.nc``: the probe-calibration stage of the fit pipeline."""

from __future__ import annotations

import json
import sys

from bayeslat import model as M
from bayeslat import pipeline
from bayeslat import probe as P
from bayeslat.simulate.extrapolation import discrepancy_calibration


def run(args) -> int:
    idata = M.load(args.model)
    fk = {k: v for k, v in (("draws", args.draws), ("tune", args.tune)) if v is not None}
    pipeline.calibrate(
        idata,
        probe_n=args.probe_n,
        seed=args.seed,
        design_name=args.probe_design,
        fit_dir=args.fit_dir,
        fit_kwargs=fk or None,
        log=lambda s: print(s, file=sys.stderr, flush=True),
        workload=not args.no_workload,
    )
    path = M.save(idata, args.out or args.model)
    rec = json.loads(idata.attrs[P.oos_attr(args.probe_design)])
    print(f"wrote {path}: {len(rec['errors'])} out-of-sample probe errors ({rec['n_requests']} requests per probe)")
    cal = discrepancy_calibration(idata)
    if cal and not args.no_workload:
        print(
            f"workload discrepancy from {cal['runs']} held-out runs: tau0 {cal['tau0_mean']:.3f}, tau1 {cal['tau1_mean']:.3f} "
            "(log step time; tau^2 = tau0^2 + tau1^2 g^2, g: the share of steps outside the training range)"
        )
    return 0
