"""Fit the same ObsTable with each available NUTS backend; compare wall time and ESS per second.

    python benchmarks/fit_backends.py [--data synthetic|bundled] [--draws 300 --tune 300 --chains 2]
        [--out benchmarks/out/fit_backends.json]

Wall time includes model compilation (numba for nutpie, C for pymc): that is what a user waits
for. ESS is the minimum bulk ESS over the diagnosed (non-offset) variables.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="synthetic", help="synthetic | bundled")
    ap.add_argument("--rows", type=int, default=500, help="synthetic rows (split 50/40/10 over 3 groups)")
    ap.add_argument("--rows-per-run-kind", type=int, default=40, help="bundled: rows per (run, kind), as the default fit")
    ap.add_argument("--target-accept", type=float, default=None)
    ap.add_argument("--draws", type=int, default=300)
    ap.add_argument("--tune", type=int, default=300)
    ap.add_argument("--chains", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backends", nargs="*", default=None)
    ap.add_argument("--out", default="benchmarks/out/fit_backends.json")
    ap.add_argument("--deployment-level", default="off", choices=["off", "spread", "fit"],
                    help="off (default): time the main posterior only, not the second (spread) fit")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    import arviz as az

    from bayeslat import model as M
    from bayeslat.diagnose import diagnostic_vars

    if args.data == "bundled":
        from bayeslat.design import bundled_obs, subsample

        obs = subsample(bundled_obs(seed=0), args.rows_per_run_kind, seed=0)
    else:
        n = args.rows
        obs, _ = M.simulate_obs(seed=args.seed, rows={("H100 SXM", "dense"): n // 2, ("H100 SXM", "moe"): 2 * n // 5,
                                                      ("A100 SXM", "dense"): n - n // 2 - 2 * n // 5})
    backends = args.backends or M.available_backends()
    results = []
    for be in ("nutpie", "pymc", "numpyro"):
        if be not in backends:
            results.append({"backend": be, "available": False})
            continue
        t0 = time.perf_counter()
        idata = M.fit(obs, backend=be, draws=args.draws, tune=args.tune, chains=args.chains, seed=args.seed, progressbar=False,
                      target_accept=args.target_accept, priors={"deployment_level": args.deployment_level})
        wall = time.perf_counter() - t0
        names = diagnostic_vars(idata)
        ess = az.ess(idata, var_names=names)
        min_ess = float(min(np.nanmin(ess[v].values) for v in names))
        rhat = az.rhat(idata, var_names=names)
        max_rhat = float(max(np.nanmax(rhat[v].values) for v in names))
        ss = idata.sample_stats
        steps = "n_steps" if "n_steps" in ss else "tree_depth"
        results.append({"backend": be, "available": True, "wall_s": wall, "sampling_s": float(idata.attrs["sampling_seconds"]),
                        "min_ess_bulk": min_ess, "ess_per_s": min_ess / wall, "max_rhat": max_rhat,
                        "divergences": int(ss["diverging"].sum()), "mean_leapfrog_or_depth": float(ss[steps].mean()),
                        "rows": int(len(obs.y))})
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"config": vars(args), "results": results, "partial": True}, indent=2))
        print(f"{be}: {results[-1]}", flush=True)
    print(f"{'backend':<9}{'wall s':>8}{'min ESS':>9}{'ESS/s':>8}{'R-hat':>7}{'div':>5}")
    for r in results:
        if not r["available"]:
            print(f"{r['backend']:<9}  (not installed)")
            continue
        print(f"{r['backend']:<9}{r['wall_s']:>8.1f}{r['min_ess_bulk']:>9.0f}{r['ess_per_s']:>8.2f}{r['max_rhat']:>7.3f}{r['divergences']:>5}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": vars(args), "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
