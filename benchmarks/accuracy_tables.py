"""Markdown tables (as in README.md) from the JSON that benchmarks/validate_accuracy.py writes.

    python benchmarks/accuracy_tables.py benchmarks/out/accuracy_lomo.json benchmarks/out/accuracy_default.json
    python benchmarks/accuracy_tables.py benchmarks/results/validate_accuracy.json  # every variant of the current result

One table per suite found (``lomo``, ``aggregate``, ``replay``, ...) with, per run, the observed
and predicted mean TTFT / ITL / E2E, the signed % error, the 90% interval of the predicted mean
E2E and whether it contains the observed mean; then the medians over the typical (non-stress)
runs and over all runs. Last, the calibration of the 90% intervals of the mean over every held-out
run of the files (``lomo``, ``lowo``, ``loro``, ``aggregate``; ``replay`` is in-sample): per suite
and pooled, how many contain the observed mean, with the exact binomial test against 90% and
the Clopper-Pearson 90% interval of the coverage.
"""

from __future__ import annotations

import json
import sys

TITLES = {
    "lomo": "Held out: leave-one-model-out (refit without the held-out model)",
    "lowo": "Held out: leave-one-workload-out",
    "loro": "Held out: leave-one-run-out",
    "aggregate": "The 11 aggregate-only runs (not in the fit), workloads generated from their profiles, shipped default fit",
    "replay": "In-sample: the 16 per-request runs replayed with the shipped default fit (its training data)",
}


def table(suite: str, rep: dict) -> str:
    out = [
        f"**{TITLES.get(suite, suite)}**",
        "",
        "| run | TTFT obs / pred ms (err %) | ITL obs / pred ms (err %) | E2E obs / pred ms (err %) | E2E 90% interval | in |",
        "|---|---|---|---|---|---|",
    ]
    for r in rep["runs"]:
        name = r["run"][16:] if r["run"][:2] == "20" else r["run"]
        name += " (stress)" if r.get("stress") else ""

        def cell(m, r=r):
            star = " *" if m == "itl" and r.get("itl_definition") == "client" else ""
            return f"{r[m + '_mean_obs']:.1f} / {r[m + '_mean_pred']:.1f} ({r[m + '_mean_err_pct']:+.1f}){star}"

        out.append(
            f"| {name} | {cell('ttft')} | {cell('itl')} | {cell('e2e')} | "
            f"[{r['e2e_mean_lo90']:.0f}, {r['e2e_mean_hi90']:.0f}] | {'yes' if r['e2e_mean_in90'] else 'no'} |"
        )
    out.append("")
    for label in ("typical", "all"):
        s = rep["summary"][label]

        def pct(k, s=s):
            return "n/a" if s.get(k) is None else f"{s[k]:.1f}%"

        out.append(
            f"- median |error| ({label}, {s['runs']} runs): E2E {pct('e2e_mean_median_abs_err_pct')}, TTFT "
            f"{pct('ttft_mean_median_abs_err_pct')}, ITL {pct('itl_mean_median_abs_err_pct')}; 90% interval of the "
            f"mean E2E / TTFT / ITL contains the observed value in {100 * s['e2e_mean_coverage90']:.0f}% / "
            f"{100 * s['ttft_mean_coverage90']:.0f}% / "
            + ("n/a" if s.get("itl_mean_coverage90") is None else f"{100 * s['itl_mean_coverage90']:.0f}%")
            + " of runs"
            + (
                "; p90 / p99 of E2E: " + " / ".join(f"{100 * s[f'e2e_{q}_coverage90']:.0f}%" for q in ("p90", "p99"))
                if s.get("e2e_p90_coverage90") is not None and s.get("e2e_p99_coverage90") is not None
                else ""
            )
        )
    return "\n".join(out) + "\n"


HELD_OUT = ("lomo", "lowo", "loro", "aggregate")


def coverage_table(reports: dict) -> str:
    """Held-out 90% coverage of the mean E2E / TTFT / ITL per suite and pooled (``reports``:
    {suite: report}); the exact binomial two-sided p-value against 0.9 and the 90% Clopper-Pearson
    interval of the E2E coverage. ITL counts runs with the server definition only."""
    from scipy.stats import binomtest

    suites = [s for s in HELD_OUT if s in reports]
    if not suites:
        return ""
    out = [
        "**Calibration of the 90% intervals of the mean, held-out runs**",
        "",
        "| held out | runs | E2E inside | TTFT inside | ITL inside | E2E: p (binomial, vs 90%) | E2E coverage, 90% CI |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = {s: reports[s]["runs"] for s in suites}
    rows["pooled"] = [r for s in suites for r in reports[s]["runs"]]
    for name, runs in rows.items():
        cells = []
        for m in ("e2e", "ttft", "itl"):
            v = [
                bool(r[f"{m}_mean_in90"])
                for r in runs
                if r.get(f"{m}_mean_in90") is not None and (m != "itl" or r.get("itl_definition") == "server")
            ]
            cells.append(f"{sum(v)} / {len(v)}" if v else "n/a")
        k = sum(bool(r["e2e_mean_in90"]) for r in runs)
        t = binomtest(k, len(runs), 0.9)
        ci = t.proportion_ci(0.9)
        out.append(
            f"| {name} | {len(runs)} | " + " | ".join(cells) + f" | {t.pvalue:.2f} | {100 * ci.low:.0f}-{100 * ci.high:.0f}% |"
        )
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    reports = {}
    for path in argv if argv is not None else sys.argv[1:]:
        data = json.load(open(path))
        if "variants" in data:  # a file benchmarks/run_all.py merged: each variant's {suite: report}
            data = {s: r for v in data["variants"].values() for s, r in v["result"].items()}
        for suite, rep in data.items():
            print(table(suite, rep))
            reports[suite] = rep
    print(coverage_table(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
