"""``bayeslat calibrate MODEL.nc``: the probe-calibration stage of the fit pipeline."""

from __future__ import annotations

import json
import sys

from bayeslat import model as M
from bayeslat import pipeline
from bayeslat import probe as P


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
    )
    path = M.save(idata, args.out or args.model)
    rec = json.loads(idata.attrs[P.oos_attr(args.probe_design)])
    print(f"wrote {path}: {len(rec['errors'])} out-of-sample probe errors ({rec['n_requests']} requests per probe)")
    return 0
