"""Markdown tables (as in README.md) from the JSON that benchmarks/validate_accuracy.py writes.

    python benchmarks/accuracy_tables.py benchmarks/out/accuracy_lomo.json benchmarks/out/accuracy_default.json

One table per suite found (``lomo``, ``aggregate``, ``replay``, ...) with, per run, the observed
and predicted mean TTFT / ITL / E2E, the signed % error, the 90% interval of the predicted mean
E2E and whether it contains the observed mean; then the medians over the typical (non-stress)
runs and over all runs.
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
    out = [f"**{TITLES.get(suite, suite)}**", "",
           "| run | TTFT obs / pred ms (err %) | ITL obs / pred ms (err %) | E2E obs / pred ms (err %) | E2E 90% interval | in |",
           "|---|---|---|---|---|---|"]
    for r in rep["runs"]:
        name = r["run"][16:] if r["run"][:2] == "20" else r["run"]
        name += " (stress)" if r.get("stress") else ""

        def cell(m, r=r):
            star = " *" if m == "itl" and r.get("itl_definition") == "client" else ""
            return f"{r[m + '_mean_obs']:.1f} / {r[m + '_mean_pred']:.1f} ({r[m + '_mean_err_pct']:+.1f}){star}"

        out.append(f"| {name} | {cell('ttft')} | {cell('itl')} | {cell('e2e')} | "
                   f"[{r['e2e_mean_lo90']:.0f}, {r['e2e_mean_hi90']:.0f}] | {'yes' if r['e2e_mean_in90'] else 'no'} |")
    out.append("")
    for label in ("typical", "all"):
        s = rep["summary"][label]

        def pct(k, s=s):
            return "n/a" if s.get(k) is None else f"{s[k]:.1f}%"

        out.append(f"- median |error| ({label}, {s['runs']} runs): E2E {pct('e2e_mean_median_abs_err_pct')}, TTFT "
                   f"{pct('ttft_mean_median_abs_err_pct')}, ITL {pct('itl_mean_median_abs_err_pct')}; 90% interval of the "
                   f"mean E2E / TTFT / ITL contains the observed value in {100 * s['e2e_mean_coverage90']:.0f}% / "
                   f"{100 * s['ttft_mean_coverage90']:.0f}% / "
                   + ("n/a" if s.get("itl_mean_coverage90") is None else f"{100 * s['itl_mean_coverage90']:.0f}%")
                   + " of runs"
                   + ("; p90 / p99 of E2E: " + " / ".join(f"{100 * s[f'e2e_{q}_coverage90']:.0f}%" for q in ("p90", "p99"))
                      if s.get("e2e_p90_coverage90") is not None and s.get("e2e_p99_coverage90") is not None else ""))
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    for path in argv if argv is not None else sys.argv[1:]:
        for suite, rep in json.load(open(path)).items():
            print(table(suite, rep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
