"""Fit the same ObsTable with each available NUTS backend; compare wall time and ESS per second.

    python benchmarks/fit_backends.py [--data synthetic|bundled] [--draws 300 --tune 300 --chains 2]
        [--timeout SECONDS] [--out benchmarks/out/fit_backends.json]

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
    ap.add_argument(
        "--rows-per-run-kind",
        type=int,
        default=0,
        help="bundled: raw rows per (run, kind) (default 0: every row in bins, as the default fit)",
    )
    ap.add_argument("--target-accept", type=float, default=None)
    ap.add_argument("--draws", type=int, default=300)
    ap.add_argument("--tune", type=int, default=300)
    ap.add_argument("--chains", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backends", nargs="*", default=None)
    ap.add_argument("--out", default="benchmarks/out/fit_backends.json")
    ap.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds per backend: each runs in its own process and is stopped (reported as such) after this",
    )
    ap.add_argument(
        "--deployment-level",
        default="off",
        choices=["off", "spread", "fit"],
        help="off (default): time the main posterior only, not the second (spread) fit",
    )
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    import arviz as az

    from bayeslat import model as M
    from bayeslat.model.diagnose import diagnostic_vars

    if args.data == "bundled":
        from bayeslat import pipeline

        obs = pipeline.training_obs(rows_per_run_kind=args.rows_per_run_kind or None)
    else:
        n = args.rows
        obs, _ = M.simulate_obs(
            seed=args.seed,
            rows={("H100 SXM", "dense"): n // 2, ("H100 SXM", "moe"): 2 * n // 5, ("A100 SXM", "dense"): n - n // 2 - 2 * n // 5},
        )
    backends = args.backends or M.available_backends()
    results = []
    for be in ("nutpie", "pymc", "numpyro"):
        if be not in backends:
            results.append({"backend": be, "available": be in M.available_backends(), "skipped": True})
            continue
        if args.timeout:
            results.append(_run_isolated(argv, be, args.timeout))
            _write(args, results, partial=True)
            continue
        t0 = time.perf_counter()
        idata = M.fit(
            obs,
            backend=be,
            draws=args.draws,
            tune=args.tune,
            chains=args.chains,
            seed=args.seed,
            progressbar=False,
            target_accept=args.target_accept,
            priors={"deployment_level": args.deployment_level},
        )
        wall = time.perf_counter() - t0
        names = diagnostic_vars(idata)
        ess = az.ess(idata, var_names=names)
        min_ess = float(min(np.nanmin(ess[v].values) for v in names))
        ess_t = az.ess(idata, var_names=names, method="tail")
        min_tail = float(min(np.nanmin(ess_t[v].values) for v in names))
        rhat = az.rhat(idata, var_names=names)
        max_rhat = float(max(np.nanmax(rhat[v].values) for v in names))
        ss = idata.sample_stats
        steps = "n_steps" if "n_steps" in ss else "tree_depth"
        results.append(
            {
                "backend": be,
                "available": True,
                "wall_s": wall,
                "sampling_s": float(idata.attrs["sampling_seconds"]),
                "min_ess_bulk": min_ess,
                "min_ess_tail": min_tail,
                "ess_per_s": min_ess / wall,
                "ess_per_sampling_s": min_ess / float(idata.attrs["sampling_seconds"]),
                "max_rhat": max_rhat,
                "divergences": int(ss["diverging"].sum()),
                "mean_leapfrog_or_depth": float(ss[steps].mean()),
                "rows": int(len(obs.y)),
                "raw_rows": int(obs.n_rows.sum()),
            }
        )
        _write(args, results, partial=True)
        print(f"{be}: {results[-1]}", flush=True)
    print(f"{'backend':<9}{'wall s':>8}{'min ESS':>9}{'ESS/s':>8}{'R-hat':>7}{'div':>5}")
    for r in results:
        if r.get("skipped") or not r["available"]:
            print(f"{r['backend']:<9}  ({'not installed' if not r['available'] else 'not run'})")
        elif r.get("timed_out") or r.get("failed"):
            why = f"stopped after {r['wall_s']:.0f} s" if r.get("timed_out") else f"failed: {r['error'][-80:]}"
            print(f"{r['backend']:<9}  ({why})")
        else:
            print(
                f"{r['backend']:<9}{r['wall_s']:>8.1f}{r['min_ess_bulk']:>9.0f}{r['ess_per_s']:>8.2f}{r['max_rhat']:>7.3f}{r['divergences']:>5}"
            )
    print(f"wrote {_write(args, results, partial=False)}")


def _write(args, results, partial):
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": vars(args), "results": results} | ({"partial": True} if partial else {}), indent=2))
    return out


def _run_isolated(argv, backend, timeout):
    """Run one backend in a child process (this script, --backends BACKEND, no --timeout); a
    backend still sampling after ``timeout`` seconds is stopped and reported as timed out."""
    import subprocess
    import sys
    import tempfile

    argv = list(sys.argv[1:] if argv is None else argv)
    keep, skip = [], False
    for a in argv:  # drop --timeout / --backends / --out and their values
        if skip and not a.startswith("--"):
            continue
        skip = a.split("=")[0] in ("--timeout", "--backends", "--out")
        if not skip:
            keep.append(a)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "one.json"
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                [sys.executable, __file__, *keep, "--backends", backend, "--out", str(out)],
                timeout=timeout,
                capture_output=True,
                text=True,
            )
        except subprocess.TimeoutExpired:
            r = {"backend": backend, "available": True, "timed_out": True, "wall_s": time.perf_counter() - t0}
            print(f"{backend}: stopped after {timeout:.0f} s", flush=True)
            return r
        if proc.returncode != 0 or not out.exists():
            return {
                "backend": backend,
                "available": True,
                "failed": True,
                "wall_s": time.perf_counter() - t0,
                "error": (proc.stderr or proc.stdout)[-2000:],
            }
        r = next(x for x in json.loads(out.read_text())["results"] if x["backend"] == backend)
        print(f"{backend}: {r}", flush=True)
        return r


if __name__ == "__main__":
    main()
