"""Prior and structure variants of the coefficient model against the default, on the real bundled
rows: the sparsity prior of the population coefficients, BetaPrime (the default, ``betaprime``)
against the regularised horseshoe (``horseshoe``, priors ``ard_prior``), and regimes nested under
model class (``regime_by_class``, priors ``regime_by_class``).

    python benchmarks/prior_comparison.py [--priors betaprime horseshoe regime_by_class] [--draws 2000] [--tune 1000]
        [--cv-draws 1000] [--cv-tune 500] [--pred-draws 40] [--fit-dir benchmarks/out/cv_fits]
        [--cv-suites lomo [lowo]] [--out benchmarks/out/prior_comparison.json]

Per prior:

- the fit of the default's rows (``pipeline.training_obs()``: every row in bin means, seed 0,
  ``--draws`` / ``--tune``; the coefficient stage only): wall time, min bulk / tail ESS and the
  variable it comes from, max R-hat, divergences, max Pareto k, ARD kept features;
- PSIS-LOO of those fits, compared (``arviz.compare``: elpd difference and its standard error);
- cross-validation: the ``--cv-suites`` of ``bayeslat.validate`` (default ``lomo``,
  leave-one-model-out; ``lowo``, leave-one-workload-out) with folds of ``--cv-draws`` draws after
  ``--cv-tune`` (cached in ``--fit-dir`` like every other fold fit), ``--pred-draws`` simulated
  draws per run: median |error| of mean TTFT / ITL / E2E and the 90% coverage.

The kernel-level leave-one-GPU-out (``kernel_transfer.py``) is not part of it: the hardware
level's efficiencies have no sparsity prior (every GPU has every kernel family).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

#: variant -> the priors it changes from the default (``betaprime`` is the default itself)
VARIANTS = {
    "betaprime": {},
    "horseshoe": {"ard_prior": "horseshoe"},
    "regime_by_class": {"regime_by_class": True},
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--priors", nargs="+", default=["betaprime", "horseshoe"], choices=list(VARIANTS))
    ap.add_argument("--draws", type=int, default=2000)
    ap.add_argument("--tune", type=int, default=1000)
    ap.add_argument("--cv-draws", type=int, default=1000)
    ap.add_argument("--cv-tune", type=int, default=500)
    ap.add_argument("--pred-draws", type=int, default=40)
    ap.add_argument("--fit-dir", default="benchmarks/out/cv_fits")
    ap.add_argument("--no-cv", action="store_true", help="skip the cross-validation suites")
    ap.add_argument("--cv-suites", nargs="+", default=["lomo"], choices=["lomo", "lowo"])
    ap.add_argument(
        "--reuse-default",
        action="store_true",
        help="BetaPrime: read the coefficient stage of models/default.nc (the same fit: same rows, seed and sampler)",
    )
    ap.add_argument("--out", default="benchmarks/out/prior_comparison.json")
    a = ap.parse_args(argv)

    import arviz as az

    from bayeslat import evaluate, pipeline
    from bayeslat import model as M
    from bayeslat.model.diagnose import diagnose

    obs = pipeline.training_obs()
    res: dict = {"rows": len(obs.y), "sampler": {"draws": a.draws, "tune": a.tune}, "priors": {}}
    fits = {}
    for prior in a.priors:
        t0 = time.perf_counter()
        if prior == "betaprime" and a.reuse_default:
            idata = M.load_default()
            same = (
                idata.attrs["data_hash"] == M.data_hash(M.check_obs(obs))
                and json.loads(idata.attrs["sampler"])["draws"] == a.draws
            )
            if not same:
                raise SystemExit("--reuse-default: models/default.nc is not the fit of these rows and draws")
        else:
            idata = M.fit(obs, seed=0, draws=a.draws, tune=a.tune, progressbar=False, priors=VARIANTS[prior])
        wall = time.perf_counter() - t0
        d = diagnose(idata)
        fits[prior] = idata
        r = {
            "wall_s": wall,
            "sampling_s": float(idata.attrs["sampling_seconds"]),
            "reused_default": prior == "betaprime" and a.reuse_default,
            **{k: d.get(k) for k in ("max_rhat", "min_ess_bulk", "min_ess_tail", "divergences", "max_pareto_k")},
            "worst": d.get("worst"),
            "passed_coefficient_checks": all(d["checks"].values()),
            "features_kept": d["features_kept"],
            "ess_bulk_per_sampling_s": (d.get("min_ess_bulk") or 0.0) / float(idata.attrs["sampling_seconds"]),
        }
        for suite in [] if a.no_cv else a.cv_suites:
            t0 = time.perf_counter()
            fk = {"draws": a.cv_draws, "tune": a.cv_tune} | ({"priors": VARIANTS[prior]} if VARIANTS[prior] else {})
            # the coefficient models compared as they are: no workload discrepancy (it would need
            # leave-one-workload-out folds of each prior too)
            df, summ = evaluate.validate(suite, draws=a.pred_draws, fit_kwargs=fk, fit_dir=a.fit_dir, workload_discrepancy=False)
            s = summ["all"]
            r[suite] = {
                "seconds": time.perf_counter() - t0,
                "runs": len(df),
                **{k: s[k] for k in s if k.endswith(("_mean_median_abs_err_pct", "_mean_coverage90"))},
            }
        res["priors"][prior] = r
        print(json.dumps({prior: r}, indent=1, default=str), file=sys.stderr)
    if len(fits) > 1:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cmp = az.compare({k: v for k, v in fits.items()}, ic="loo")
        res["loo_compare"] = json.loads(cmp[["rank", "elpd_loo", "p_loo", "elpd_diff", "dse", "weight"]].to_json(orient="index"))
    print(f"{len(obs.y)} real rows, {a.draws} draws x 2 chains after {a.tune} tuning steps")
    print(
        f"{'prior':10s} {'wall s':>7s} {'min bulk ESS':>13s} {'(of)':>22s} {'R-hat':>6s} {'div':>4s} {'Pareto k':>8s} {'ESS/s':>6s}"
    )
    for p, r in res["priors"].items():
        worst = (r.get("worst") or {}).get("min_ess_bulk") or ""
        print(
            f"{p:10s} {r['sampling_s']:10.0f} {r['min_ess_bulk']:13.0f} {worst:>22s} {r['max_rhat']:6.3f} {r['divergences']:4d} "
            f"{r['max_pareto_k']:8.2f} {r['ess_bulk_per_sampling_s']:6.2f}"
        )
    if "loo_compare" in res:
        print(
            "PSIS-LOO:",
            ", ".join(
                f"{k} elpd {v['elpd_loo']:.1f} (diff {v['elpd_diff']:.1f} +- {v['dse']:.1f})"
                for k, v in res["loo_compare"].items()
            ),
        )
    names = {"lomo": "leave-one-model-out", "lowo": "leave-one-workload-out"}
    for p, r in res["priors"].items():
        for suite in [k for k in names if k in r]:
            lo = r[suite]
            print(
                f"{names[suite]} {p}: median |err| E2E {lo.get('e2e_mean_median_abs_err_pct', float('nan')):.1f}% "
                f"TTFT {lo.get('ttft_mean_median_abs_err_pct', float('nan')):.1f}% ITL {lo.get('itl_mean_median_abs_err_pct', float('nan')):.1f}%; "
                f"90% coverage E2E {lo.get('e2e_mean_coverage90', float('nan')):.2f} TTFT {lo.get('ttft_mean_coverage90', float('nan')):.2f} "
                f"ITL {lo.get('itl_mean_coverage90', float('nan')):.2f}"
            )
        print(f"kept by {p}: {', '.join(r['features_kept'])}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1, default=str))
    print("written", a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
