"""The default fit before and after it used every row: the stratified subsample of 40 raw rows
per (run, kind) under its sampler (2 x (1000 tune + 4000 draws), target_accept 0.99) against the
bin means of every row (``bayeslat.data.design.collapse``) under today's default sampler, fitted one
after the other on the same machine.

Per fit: the rows the likelihood sees, the raw rows behind them per kind, wall time (compilation,
sampling and the cut stages of ``bayeslat.model.fit``), sampling time, the minimum bulk and tail
ESS and the maximum R-hat over the diagnosed parameters, bulk ESS per second of sampling and the
divergences.

    python benchmarks/fit_rows.py [--out benchmarks/out/fit_rows.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BEFORE_SAMPLER = {"draws": 4000, "tune": 1000, "target_accept": 0.99}


def _health(idata) -> dict:
    import arviz as az

    from bayeslat.model.diagnose import diagnostic_vars

    names = diagnostic_vars(idata)
    out = {}
    for key, method in (("min_ess_bulk", "bulk"), ("min_ess_tail", "tail")):
        e = az.ess(idata, var_names=names, method=method)
        out[key] = float(min(np.nanmin(e[v].values) for v in names))
    r = az.rhat(idata, var_names=names)
    out["max_rhat"] = float(max(np.nanmax(r[v].values) for v in names))
    out["divergences"] = int(idata.attrs.get("divergences_all_draws", int(idata.sample_stats["diverging"].sum())))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows-per-run-kind", type=int, default=40, help="the subsample of the 'before' fit")
    ap.add_argument("--only", choices=["before", "after"], default=None)
    ap.add_argument("--draws", type=int, default=None, help="override both fits' draws (a quick check)")
    ap.add_argument("--tune", type=int, default=None)
    ap.add_argument("--out", default=str(HERE / "out" / "fit_rows.json"))
    a = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    from bayeslat import model as M
    from bayeslat import pipeline
    from bayeslat.model.fitting import rows_used

    variants = {
        "before: 40 raw rows per (run, kind)": (pipeline.training_obs(rows_per_run_kind=a.rows_per_run_kind), BEFORE_SAMPLER),
        "after: every row, in bin means": (pipeline.training_obs(), {}),
    }
    if a.only:
        variants = {k: v for k, v in variants.items() if k.startswith(a.only)}
    res = {"command": "python benchmarks/fit_rows.py " + " ".join(argv or sys.argv[1:]), "fits": []}
    for name, (obs, sampler) in variants.items():
        kw = dict(sampler) | {k: v for k, v in (("draws", a.draws), ("tune", a.tune)) if v is not None}
        t0 = time.perf_counter()
        idata = M.fit(obs, seed=0, progressbar=False, **kw)
        wall = time.perf_counter() - t0
        cfg = json.loads(idata.attrs["sampler"])
        d = M.check_obs(obs)
        row = {
            "fit": name,
            "rows": int(len(obs.y)),
            "raw_rows": rows_used(d),
            "raw_rows_total": int(obs.n_rows.sum()),
            "sampler": cfg,
            "wall_s": round(wall, 1),
            "sampling_s": round(float(idata.attrs["sampling_seconds"]), 1),
            **_health(idata),
        }
        row["ess_bulk_per_s"] = row["min_ess_bulk"] / row["sampling_s"]
        res["fits"].append(row)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=1))
        print(json.dumps(row), flush=True)
    print(f"\n{'fit':<40}{'rows':>6}{'raw rows':>10}{'wall s':>8}{'ESS b/t':>11}{'ESS/s':>7}{'R-hat':>7}{'div':>5}")
    for r in res["fits"]:
        print(
            f"{r['fit']:<40}{r['rows']:>6}{r['raw_rows_total']:>10,}{r['wall_s']:>8.0f}"
            f"{r['min_ess_bulk']:>6.0f}/{r['min_ess_tail']:<4.0f}{r['ess_bulk_per_s']:>7.2f}{r['max_rhat']:>7.3f}{r['divergences']:>5}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
