"""The probe workflow as a user runs it: ``bayeslat check SPEC --probe`` first, ``bayeslat update``
only where the check says the transfer is not ok.

    python benchmarks/probe_gate.py benchmarks/results/probe_update.json --variant lowo [--out JSON]

Reads a result of benchmarks/probe_update.py (``--variant``: one of the variants of a file
benchmarks/run_all.py merged; its held-out runs, fold fits, suite options), scores
each run's probe against its fold's fit exactly as ``bayeslat check --probe`` does
(``probe.score_probe``: decision transfer-ok / update / refit), and reports the prediction a user
ends with: the one before the update where the decision is transfer-ok, the updated one otherwise
(refit too: the benchmark has no refit, the update stands in for it). Per metric: median |error|,
runs improved, 90% coverage, interval score, Wilcoxon signed-rank p (one-sided, better after),
for "always update" (the result file's after) and "gated". Seconds per run (scoring only).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_update import case_spec  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("result", help="a benchmarks/probe_update.py result JSON")
    ap.add_argument("--variant", default=None, help="the variant of a merged result file (benchmarks/results/probe_update.json)")
    ap.add_argument("--draws", type=int, default=400, help="posterior predictive draws of the score (bayeslat check's)")
    ap.add_argument("--out", default=None, help="default: benchmarks/out/<result stem>[_<variant>]_gate.json")
    a = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    from bayeslat import evaluate as validate
    from bayeslat import probe
    from bayeslat.cli.check import _jsonable
    from bayeslat.data import design

    rep = json.loads(Path(a.result).read_text())
    if "variants" in rep:
        if a.variant not in rep["variants"]:
            ap.error(f"--variant: one of {', '.join(rep['variants'])}")
        rep = rep["variants"][a.variant]["result"]
    cfg = rep["config"]
    rows = {r["run"]: r for r in rep["rows"]}
    cases = [c for c in validate.replay_cases(None) if c["run"] in rows]
    hold = cfg.get("hold_out", "model")
    groups: dict = {}
    for c in cases:
        groups.setdefault(c[hold], []).append(c)
    full = None
    out_rows = []
    t_start = time.time()
    for key, group in groups.items():
        excl = {c["run"] for c in group}
        fk = {k: v for k, v in (("draws", cfg.get("fit_draws")), ("tune", cfg.get("fit_tune"))) if v is not None}
        if full is None:
            import functools

            full = functools.cache(lambda: design.bundled_obs(seed=cfg.get("seed", 0)))
        idata = validate.cv_fit(full, excl, seed=cfg.get("seed", 0), fit_dir=cfg["fit_dir"], fit_kwargs=fk)
        for c in group:
            t0 = time.time()
            c, spec = case_spec(c, cfg.get("as_new_gpu"), cfg.get("datasheet"))
            src = probe.bundled_probe(c["run"], cfg.get("probe_n", 200), cfg.get("probe_design", "first"))
            sc = probe.score_probe(spec, idata, src, draws=a.draws, seed=cfg.get("seed", 0))
            r = rows[c["run"]]
            g = {
                "run": c["run"],
                "held_out": {hold: key},
                "decision": sc["decision"],
                "reasons": sc["reasons"],
                "score_s": time.time() - t0,
            }
            for m in ("e2e", "ttft", "itl"):
                use = "before" if sc["decision"] == "transfer-ok" else "after"
                g[m] = dict(
                    r[m], gated_pct=r[m][f"{use}_pct"], in90_gated=r[m][f"in90_{use}"], interval90_gated=r[m][f"interval90_{use}"]
                )
            out_rows.append(g)
            print(
                f"{c['run'][16:]:40s} {sc['decision']:12s} E2E {r['e2e']['before_pct']:+6.1f} -> {g['e2e']['gated_pct']:+6.1f}%  "
                f"TTFT {r['ttft']['before_pct']:+6.1f} -> {g['ttft']['gated_pct']:+6.1f}%  ({g['score_s']:.0f} s)  "
                + "; ".join(sc["reasons"]),
                file=sys.stderr,
                flush=True,
            )
    summary = summarize(out_rows)
    out = Path(a.out or f"benchmarks/out/{Path(a.result).stem}{'_' + a.variant if a.variant else ''}_gate.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            _jsonable(
                {"config": vars(a) | {"suite": cfg}, "rows": out_rows, "summary": summary, "wall_s": time.time() - t_start}
            ),
            indent=1,
        )
    )
    print_summary(summary)
    print(f"wrote {out}")
    return 0


def summarize(rows) -> dict:
    """Per metric and for 'before', 'after' (always update) and 'gated': median |error|, runs
    better than before, 90% coverage, median interval score; Wilcoxon p (one-sided, better than
    before) of |error| and of the interval score."""
    from scipy.stats import wilcoxon

    from bayeslat import evaluate as validate

    dec = [r["decision"] for r in rows]
    out = {"runs": len(rows), "decisions": {d: dec.count(d) for d in sorted(set(dec))}}
    for m in ("e2e", "ttft", "itl"):
        err = {t: np.array([abs(r[m][f"{t}_pct"]) for r in rows]) for t in ("before", "after", "gated")}
        isc = {
            t: np.array([validate.interval_score(*r[m][f"interval90_{t}"], r[m]["obs"]) for r in rows])
            for t in ("before", "after", "gated")
        }
        out[m] = {}
        for t in ("before", "after", "gated"):
            e = {
                "median_abs_pct": float(np.median(err[t])),
                "coverage90": float(np.mean([r[m][f"in90_{t}"] for r in rows])),
                "median_interval_score": float(np.median(isc[t])),
            }
            if t != "before":
                e["improved_runs"] = int((err[t] < err["before"]).sum())
                e["worse_runs"] = int((err[t] > err["before"]).sum())
                e["p_point"] = _p(wilcoxon, err[t], err["before"])
                e["p_interval_score"] = _p(wilcoxon, isc[t], isc["before"])
            out[m][t] = e
    return out


def _p(test, x, y) -> float | None:
    """One-sided signed-rank p that ``x`` < ``y`` (None where they are identical)."""
    return float(test(x, y, alternative="less").pvalue) if np.any(x != y) else None


def print_summary(s: dict):
    print(f"{s['runs']} runs; decisions {s['decisions']}")
    print(
        f"{'metric':6s} {'prediction':10s} {'median |err|':>12s} {'better':>6s} {'worse':>6s} {'p':>6s} {'cov90':>6s} {'IS':>6s} {'p(IS)':>6s}"
    )
    for m in ("e2e", "ttft", "itl"):
        for t in ("before", "after", "gated"):
            e = s[m][t]
            f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
            print(
                f"{m.upper():6s} {t:10s} {e['median_abs_pct']:11.1f}% {e.get('improved_runs', '-'):>6} {e.get('worse_runs', '-'):>6} "
                f"{f(e.get('p_point')) if t != 'before' else '-':>6s} {100 * e['coverage90']:5.0f}% {e['median_interval_score']:6.2f} "
                f"{f(e.get('p_interval_score')) if t != 'before' else '-':>6s}"
            )


if __name__ == "__main__":
    sys.exit(main())
