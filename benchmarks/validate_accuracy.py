"""Workload-level accuracy against the real runs: per run, the signed % error of the predicted
mean / p90 / p99 TTFT, ITL and E2E, whether the 90% interval of the mean contains the observed
value, and the medians.

    python benchmarks/validate_accuracy.py --suites replay aggregate lomo --draws 8 --out benchmarks/out/accuracy.json

``replay`` / ``aggregate`` use the shipped default fit (in-sample for the 16 replay runs: they
are its training data); ``lomo`` / ``lowo`` / ``loro`` refit without the held-out runs (the
honest, held-out numbers). Refits use the default sampler unless ``--tune/--fit-draws`` say less.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bayeslat import evaluate as validate
from bayeslat.cli.validate import format_table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--suites", nargs="+", default=["replay", "aggregate"])
    ap.add_argument("--draws", type=int, default=8, help="posterior draws simulated per run")
    ap.add_argument("--tune", type=int, default=None, help="NUTS tuning steps of CV refits")
    ap.add_argument("--fit-draws", type=int, default=None, help="NUTS draws of CV refits")
    ap.add_argument("--target-accept", type=float, default=None, help="NUTS target acceptance of CV refits")
    ap.add_argument(
        "--n-per-run-kind", type=int, default=0, help="raw rows per run and kind in CV refits (default 0: every row in bins)"
    )
    ap.add_argument("--runs", nargs="*", default=None)
    ap.add_argument("--out", default="benchmarks/out/accuracy.json")
    ap.add_argument("--fit-dir", default=None, help="cache of the cross-validation refits (validate.cv_fit_path)")
    ap.add_argument("--no-workload-discrepancy", action="store_true", help="CV suites: without the nested workload discrepancy")
    args = ap.parse_args(argv)
    report = {}
    for suite in args.suites:
        t0 = time.time()
        fit_kwargs = {
            k: v
            for k, v in (("tune", args.tune), ("draws", args.fit_draws), ("target_accept", args.target_accept))
            if v is not None
        }
        df, summary = validate.validate(
            suite,
            draws=args.draws,
            runs=args.runs,
            fit_kwargs=fit_kwargs,
            n_per_run_kind=args.n_per_run_kind or None,
            fit_dir=args.fit_dir,
            log=lambda *a: print(*a, file=sys.stderr, flush=True),
            workload_discrepancy=not args.no_workload_discrepancy,
        )
        print(f"\n== {suite} ({time.time() - t0:.0f} s) ==")
        print(format_table(df))
        print(json.dumps(summary, indent=1))
        report[suite] = {"summary": summary, "seconds": time.time() - t0, "runs": json.loads(df.to_json(orient="records"))}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
