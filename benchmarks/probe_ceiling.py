"""The ceiling of a probe update: what a perfect estimate of a held-out run's factors would do.

    python benchmarks/probe_ceiling.py --fit-dir benchmarks/out/cv_fits [--pred-draws 40] [--hold-out model]
        [--out benchmarks/out/probe_ceiling.json]

For every bundled run with per-request data, under the fold fit that did not see its model (or
workload), the run's own step-time and CPU-time factors are fitted to its whole run
(``probe.whole_run_update``: all its rows, no slice error, a flat factor prior, no draw
weights; what ``probe.run_factor_error`` reads per deployment), and the whole run is predicted
again (replayed arrivals, ``--pred-draws`` draws). A probe update can at best reach this: its
factors are estimated from the first 200 requests instead. The second part measures how well three
statistics of the probe's TTFT rows tell the whole run's TTFT level (log observed / predicted
under the fold fit, factors at 1): the pooled sum the update uses (``probe.POOLED_PROBE_KINDS``),
the rows' median and a 10%-trimmed mean of the ratios. Per statistic: the probe's value minus the
whole run's (the slice error; its SD over runs is what the update must allow for) and the
correlation of the probe's value with the fitted CPU factor. Prints tables, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np


def ttft_levels(t, mu) -> dict:
    """TTFT-level statistics of ObsTable ``t`` against predicted row means ``mu``."""
    k = (t.kind == 2) & (t.y > 0) & (mu > 0)
    r = np.sort(t.y[k] / mu[k])
    n = len(r)
    return {
        "sum": float(np.log(t.y[k].sum() / mu[k].sum())),
        "median": float(np.median(np.log(r))),
        "trimmed": float(np.log(np.mean(r[int(0.1 * n) : int(0.9 * n)]))),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fit-dir", default="benchmarks/out/cv_fits")
    ap.add_argument("--pred-draws", type=int, default=40)
    ap.add_argument("--probe-n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hold-out", default="model", choices=("model", "workload"))
    ap.add_argument("--out", default="benchmarks/out/probe_ceiling.json")
    a = ap.parse_args(argv)
    warnings.filterwarnings("ignore")

    from bayeslat import evaluate as validate
    from bayeslat import model as M
    from bayeslat import probe
    from bayeslat.probe.calibrate import _whole_run_rows
    from bayeslat.simulate.spec import spec_for_run

    t_start = time.time()
    cases = validate.replay_cases(None)
    groups: dict = {}
    for c in cases:
        groups.setdefault(c[a.hold_out], []).append(c)
    full = validate.cv_rows(a.seed)  # built only if a fold is not cached
    rows = []
    for key, group in groups.items():
        idata = validate.cv_fit(full, {c["run"] for c in group}, seed=a.seed, fit_dir=a.fit_dir)
        for c in group:
            res = probe.whole_run_update(idata, c["run"], seed=a.seed)
            if res is None:
                print(f"skipped {c['run']}: the bundled reconstruction skips it", file=sys.stderr)
                continue
            new, info, _ = res
            b = validate.compare(c, validate.predict_case(c, idata, a.pred_draws, a.seed))
            f = validate.compare(c, validate.predict_case(c, new, a.pred_draws, a.seed))
            r = {
                "run": c["run"],
                "held_out": {a.hold_out: key},
                "step_factor": info["step_factor"]["mean"],
                "cpu_factor": info["cpu_factor"]["mean"],
            }
            for m in ("e2e", "ttft", "itl"):
                r[m] = {
                    "obs": c["observed"].get(f"{m}_mean"),
                    "before_pct": b[f"{m}_mean_err_pct"],
                    "after_pct": f[f"{m}_mean_err_pct"],
                    "in90_before": bool(b[f"{m}_mean_in90"]),
                    "in90_after": bool(f[f"{m}_mean_in90"]),
                    "interval90_before": [b[f"{m}_mean_lo90"], b[f"{m}_mean_hi90"]],
                    "interval90_after": [f[f"{m}_mean_lo90"], f[f"{m}_mean_hi90"]],
                }
            spec = spec_for_run(c["run"], workload=c["workload_obj"])
            pobs, _ = probe.probe_obs(spec, probe.bundled_probe(c["run"], a.probe_n))
            full_rows = _whole_run_rows([c["run"]], n_per_run_kind=None)
            lv = {
                tag: ttft_levels(t, M.predict_mean(idata, t, n=100, seed=a.seed).mean(axis=0))
                for tag, t in (("probe", pobs), ("whole", full_rows))
            }
            r["ttft_level"] = lv
            rows.append(r)
            print(
                f"{c['run'][16:]:42s} step x{r['step_factor']:.3f} cpu x{r['cpu_factor']:.3f}  E2E {r['e2e']['before_pct']:+6.1f} -> "
                f"{r['e2e']['after_pct']:+6.1f}%  TTFT {r['ttft']['before_pct']:+6.1f} -> {r['ttft']['after_pct']:+6.1f}%  ITL "
                f"{r['itl']['before_pct']:+6.1f} -> {r['itl']['after_pct']:+6.1f}%  TTFT level probe/whole: sum {lv['probe']['sum']:+.3f}/"
                f"{lv['whole']['sum']:+.3f} median {lv['probe']['median']:+.3f}/{lv['whole']['median']:+.3f}",
                file=sys.stderr,
                flush=True,
            )
    summary = summarize(rows)
    rep = {"config": vars(a), "rows": rows, "summary": summary, "wall_s": time.time() - t_start}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rep, indent=1))
    print_tables(summary)
    print(f"wrote {a.out} ({rep['wall_s']:.0f} s)")
    return 0


def summarize(rows) -> dict:
    from scipy.stats import wilcoxon

    from bayeslat.evaluate import interval_score

    out = {"runs": len(rows), "metrics": {}, "ttft_level": {}}
    for m in ("e2e", "ttft", "itl"):
        b = np.array([abs(r[m]["before_pct"]) for r in rows])
        f = np.array([abs(r[m]["after_pct"]) for r in rows])
        ib = np.array([interval_score(*r[m]["interval90_before"], r[m]["obs"]) for r in rows])
        ia = np.array([interval_score(*r[m]["interval90_after"], r[m]["obs"]) for r in rows])
        out["metrics"][m] = {
            "median_abs_before_pct": float(np.median(b)),
            "median_abs_after_pct": float(np.median(f)),
            "improved_runs": int((f < b).sum()),
            "p_point": float(wilcoxon(f, b, alternative="less").pvalue),
            "median_iscore_before": float(np.median(ib)),
            "median_iscore_after": float(np.median(ia)),
            "p_iscore": float(wilcoxon(ia, ib, alternative="less").pvalue),
            "coverage90_after": float(np.mean([r[m]["in90_after"] for r in rows])),
        }
    for subset, sel in (("all", lambda r: True), ("without reasoning", lambda r: "reasoning" not in r["run"])):
        rs = [r for r in rows if sel(r)]
        cpu = np.log([r["cpu_factor"] for r in rs])
        out["ttft_level"][subset] = {"runs": len(rs)}
        for st in ("sum", "median", "trimmed"):
            d = np.array([r["ttft_level"]["probe"][st] - r["ttft_level"]["whole"][st] for r in rs])
            p = np.array([r["ttft_level"]["probe"][st] for r in rs])
            out["ttft_level"][subset][st] = {
                "slice_error_mean": float(d.mean()),
                "slice_error_sd": float(d.std(ddof=1)),
                "corr_probe_level_cpu_factor": float(np.corrcoef(p, cpu)[0, 1]),
            }
    return out


def print_tables(s) -> None:
    print(f"whole-run factors (the ceiling of a probe update), {s['runs']} runs:")
    print(
        "| metric | median abs error before -> after | runs better | p (point) | interval score before -> after | p | 90% coverage after |"
    )
    print("|---|---|---|---|---|---|---|")
    for m, v in s["metrics"].items():
        print(
            f"| {m.upper()} | {v['median_abs_before_pct']:.1f}% -> {v['median_abs_after_pct']:.1f}% | {v['improved_runs']} | {v['p_point']:.3f} | "
            f"{v['median_iscore_before']:.2f} -> {v['median_iscore_after']:.2f} | {v['p_iscore']:.3f} | {100 * v['coverage90_after']:.0f}% |"
        )
    print("probe TTFT level statistics (probe minus whole run; correlation of the probe's level with the whole-run CPU factor):")
    print("| runs | statistic | slice error mean | slice error SD | corr with CPU factor |")
    print("|---|---|---|---|---|")
    for subset, v in s["ttft_level"].items():
        for st in ("sum", "median", "trimmed"):
            e = v[st]
            print(
                f"| {subset} ({v['runs']}) | {st} | {e['slice_error_mean']:+.3f} | {e['slice_error_sd']:.3f} | {e['corr_probe_level_cpu_factor']:.2f} |"
            )


if __name__ == "__main__":
    sys.exit(main())
