"""``bayeslat validate``: a validation suite's per-run table and summary, printed or written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from bayeslat import cluster, model
from bayeslat.evaluate import validate


def format_table(df: pd.DataFrame) -> str:
    cols = [
        "run",
        "ttft_mean_obs",
        "ttft_mean_pred",
        "ttft_mean_err_pct",
        "itl_mean_obs",
        "itl_mean_pred",
        "itl_mean_err_pct",
        "e2e_mean_obs",
        "e2e_mean_pred",
        "e2e_mean_err_pct",
        "e2e_mean_in90",
    ]
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.float_format", "{:.1f}".format):
        return df[[c for c in cols if c in df]].to_string(index=False)


def run(args) -> int:
    idata = None
    if args.model:
        idata = model.load(args.model)
    suite = "external" if getattr(args, "external", None) and args.suite == "replay" else args.suite
    quiet = getattr(args, "no_progress", False) or not sys.stderr.isatty()
    df, summary = validate(
        suite,
        idata=idata,
        draws=args.draws,
        runs=args.runs,
        # what runs, one line each, and a done/total line with the time left (a terminal only)
        log=None if quiet else (lambda *a: print("\r" + " ".join(map(str, a)), file=sys.stderr)),
        progress=None if quiet else cluster.stderr_progress(f"validate {suite}: runs"),
        external=getattr(args, "external", None),
        hardware=getattr(args, "hardware", None),
        workload_discrepancy=not getattr(args, "no_workload_discrepancy", False),
    )
    report = {"suite": suite, "summary": summary, "runs": json.loads(df.to_json(orient="records"))}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(format_table(df))
        print(json.dumps(summary, indent=1))
    return 0
