"""Per-step and per-window accuracy on a held-out time slice of every run.

    python benchmarks/time_split_accuracy.py [--rows-per-run-kind 40] [--draws 1000 --tune 1000]
        [--out benchmarks/out/time_split_accuracy.json]

Train on the rows in the first 70% of each run's timeline (``design.time_split``), fit with the
default model, and score the rows of the last 30% (a stratified subsample of the same size per
run and kind, so no run dominates): MAPE of the posterior mean, and whether the 90% posterior
predictive interval (Student-t noise included) contains the observed duration. Kinds: step
(traced step gaps, 3 runs), window (a request's n-1 decode steps), ttft.
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
    ap.add_argument("--rows-per-run-kind", type=int, default=40)
    ap.add_argument("--test-rows-per-run-kind", type=int, default=100)
    ap.add_argument("--frac", type=float, default=0.7)
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--tune", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/out/time_split_accuracy.json")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    from bayeslat import model as M
    from bayeslat.data import design

    obs = design.bundled_obs(seed=args.seed)
    train, test = design.time_split(obs, args.frac)
    train = design.subsample(train, args.rows_per_run_kind, seed=args.seed)
    test = design.subsample(test, args.test_rows_per_run_kind, seed=args.seed + 1)
    t0 = time.perf_counter()
    idata = M.fit(train, draws=args.draws, tune=args.tune, seed=args.seed, progressbar=False)
    wall = time.perf_counter() - t0
    mu = M.predict_mean(idata, test, n=1000, seed=args.seed).mean(0)
    pp = M.posterior_predictive(idata, test, n=1000, seed=args.seed)
    lo, hi = np.quantile(pp, [0.05, 0.95], axis=0)
    ape = np.abs(mu - test.y) / np.abs(test.y)
    cov = (lo <= test.y) & (test.y <= hi)
    rows = []
    for run in sorted(set(test.run.tolist())):
        for k, kind in enumerate(M.KINDS[:3]):
            m = (test.run == run) & (test.kind == k)
            if m.sum() == 0:
                continue
            rows.append(
                {
                    "run": run,
                    "kind": kind,
                    "n_test": int(m.sum()),
                    "mape_pct": float(100 * ape[m].mean()),
                    "median_ape_pct": float(100 * np.median(ape[m])),
                    "coverage90_pct": float(100 * cov[m].mean()),
                }
            )
    summary = {}
    for kind in M.KINDS[:3]:
        r = [x for x in rows if x["kind"] == kind]
        if r:
            m = test.kind == M.KINDS.index(kind)
            summary[kind] = {
                "runs": len(r),
                "median_run_mape_pct": float(np.median([x["mape_pct"] for x in r])),
                "pooled_mape_pct": float(100 * ape[m].mean()),
                "pooled_coverage90_pct": float(100 * cov[m].mean()),
            }
    print(f"{'run':<48}{'kind':<8}{'n':>5}{'MAPE%':>8}{'medAPE%':>9}{'cov90%':>8}")
    for r in rows:
        print(
            f"{r['run'][-47:]:<48}{r['kind']:<8}{r['n_test']:>5}{r['mape_pct']:>8.1f}{r['median_ape_pct']:>9.1f}{r['coverage90_pct']:>8.0f}"
        )
    for kind, s in summary.items():
        print(
            f"ALL {kind:<8} runs {s['runs']:>2}  median run MAPE {s['median_run_mape_pct']:.1f}%  pooled MAPE "
            f"{s['pooled_mape_pct']:.1f}%  pooled 90% coverage {s['pooled_coverage90_pct']:.0f}%"
        )
    print(f"fit: {len(train.y)} train rows, {len(test.y)} test rows, {wall:.0f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "config": vars(args),
                "fit_seconds": wall,
                "train_rows": int(len(train.y)),
                "test_rows": int(len(test.y)),
                "rows": rows,
                "summary": summary,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
