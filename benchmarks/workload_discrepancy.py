"""Nested leave-one-workload-out of the workload discrepancy: intervals that widen with the
distance from the training rows, calibrated without the workload they are scored on.

For each workload W of the bundled runs (the outer fold):
1. the fit without W (the leave-one-workload-out refit, cached in --fit-dir) predicts W's runs;
2. the discrepancy (tau0, tau1) is calibrated on the *other* three workloads' held-out errors
   (each under its own fold; ``bayeslat.evaluate.discrepancy``), never on W's;
3. W's runs are predicted again with that discrepancy, and both predictions are scored.
The calibration on all four workloads (what ``bayeslat calibrate`` ships) is reported too, with the
coverage it would have in-sample (not held out: for reference only).

    python benchmarks/workload_discrepancy.py [--draws 40] [--fit-draws 1000 --tune 500]

Prints a table and writes benchmarks/results/workload_discrepancy.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bayeslat.evaluate import compare
from bayeslat.evaluate import discrepancy as D
from bayeslat.evaluate.crossval import _cv_groups, cv_fit, cv_rows
from bayeslat.evaluate.suites import _lowo_step_errors, _with_nested_discrepancy
from bayeslat.simulate import predict_case, replay_cases

OUT = Path(__file__).parent / "results" / "workload_discrepancy.json"
METRICS = ("ttft", "itl", "e2e")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=40, help="posterior draws simulated per held-out run")
    ap.add_argument("--fit-draws", type=int, default=1000)
    ap.add_argument("--tune", type=int, default=500)
    ap.add_argument("--fit-dir", default="benchmarks/out/cv_fits")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    t_start = time.time()
    fit_kwargs = {"draws": args.fit_draws, "tune": args.tune}
    cases = replay_cases(None)
    groups = _cv_groups(cases, "lowo")
    full = cv_rows(args.seed)
    folds = {
        w: cv_fit(full, {c["run"] for c in g}, seed=args.seed, fit_kwargs=fit_kwargs, fit_dir=args.fit_dir)
        for w, g in groups.items()
    }

    def refit(exclude, held, what="lowo"):  # the folds above, not loaded again
        return folds[held]

    errors = _lowo_step_errors(cases, refit, args.seed, print)
    keep = ("_mean_err_pct", "_mean_in90", "_mean_lo90", "_mean_hi90", "_mean_pred", "_mean_obs", "_mean_iscore90")
    rows, cal_of = [], {}
    for w, g in groups.items():
        fit = _with_nested_discrepancy(folds[w], errors, {w}, "workload", args.seed, w)
        cal_of[w] = json.loads(fit.attrs[D.WORKLOAD_DISCREPANCY_ATTR])
        for c in g:
            t0 = time.time()
            base = compare(c, predict_case(c, folds[w], args.draws, args.seed, workload_discrepancy=False))
            pred = predict_case(c, fit, args.draws, args.seed)
            wide = compare(c, pred)
            wd = pred["workload_discrepancy"]
            rows.append(
                {"run": c["run"], "held_out": w, "distance": wd["distance"], "tau": wd["tau"]}
                | {f"base_{k}": v for k, v in base.items() if k.endswith(keep)}
                | {f"wide_{k}": v for k, v in wide.items() if k.endswith(keep)}
            )
            print(
                f"{c['run']}: g {wd['distance']:.2f} tau {wd['tau']:.3f} ({time.time() - t0:.0f} s) "
                + " ".join(
                    f"{m} {base[f'{m}_mean_err_pct']:+.1f}% {'in' if base[f'{m}_mean_in90'] else 'OUT'}->{'in' if wide[f'{m}_mean_in90'] else 'OUT'}"
                    for m in METRICS
                ),
                flush=True,
            )
    df = pd.DataFrame(rows)
    allcal = D.calibrate_workload_discrepancy(
        errors,
        tau0_scale=D.tau0_prior_scale(folds[next(iter(folds))]),
        seed=args.seed,
        source="all four workloads",
    )

    def cov(prefix, m, sel=slice(None)):
        x = df.loc[sel, f"{prefix}_{m}_mean_in90"]
        return f"{int(x.sum())}/{len(x)}"

    def width(prefix, m, sel=slice(None)):
        d = df.loc[sel]
        return float(np.median((d[f"{prefix}_{m}_mean_hi90"] - d[f"{prefix}_{m}_mean_lo90"]) / d[f"{prefix}_{m}_mean_pred"]))

    table = []
    for w in list(groups) + ["all"]:
        sel = slice(None) if w == "all" else (df["held_out"] == w)
        c = cal_of.get(w)
        table.append(
            {
                "held_out": w,
                "tau0": c["tau0_mean"] if c else None,
                "tau1": c["tau1_mean"] if c else None,
                "distance": float(df.loc[sel, "distance"].median()),
                **{f"{m}_cov_before": cov("base", m, sel) for m in METRICS},
                **{f"{m}_cov_after": cov("wide", m, sel) for m in METRICS},
                **{f"{m}_width_before": width("base", m, sel) for m in METRICS},
                **{f"{m}_width_after": width("wide", m, sel) for m in METRICS},
                **{f"{m}_abs_err_before": float(df.loc[sel, f"base_{m}_mean_err_pct"].abs().median()) for m in METRICS},
                **{f"{m}_abs_err_after": float(df.loc[sel, f"wide_{m}_mean_err_pct"].abs().median()) for m in METRICS},
            }
        )
    print(
        f"\n{'held out':10s} {'tau0':>6s} {'tau1':>6s} {'g':>5s}  inside 90% before -> after (TTFT / ITL / E2E)   median rel. 90% width E2E before -> after"
    )
    for t in table:
        tau = f"{t['tau0']:6.3f} {t['tau1']:6.3f}" if t["tau0"] is not None else f"{'':6s} {'':6s}"
        print(
            f"{t['held_out']:10s} {tau} {t['distance']:5.2f}  "
            + " / ".join(f"{t[f'{m}_cov_before']}->{t[f'{m}_cov_after']}" for m in METRICS)
            + f"   {100 * t['e2e_width_before']:.0f}% -> {100 * t['e2e_width_after']:.0f}%"
        )
    print(
        f"calibration on all four workloads: tau0 {allcal['tau0_mean']:.3f} {allcal['tau0_interval90']}, tau1 {allcal['tau1_mean']:.3f} {allcal['tau1_interval90']}"
    )
    out = {
        "benchmark": "workload_discrepancy",
        "settings": vars(args),
        "table": table,
        "runs": rows,
        "nested_calibrations": {
            w: {k: v for k, v in c.items() if k not in ("tau0", "tau1", "errors")} for w, c in cal_of.items()
        },
        "all_calibration": {k: v for k, v in allcal.items() if k not in ("tau0", "tau1")},
        "seconds": time.time() - t_start,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=float))
    print(f"wrote {args.out} ({out['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
