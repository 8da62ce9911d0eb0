"""Scoring of run-level predictions: signed % errors, interval containment and interval scores of
one case (:func:`compare`), and their medians and coverage over a suite (:func:`summarize`).

TTFT and E2E are means over successful requests; ITL is the per-request ``(E2E - TTFT) /
(output_tokens - 1)``, averaged over requests. An aggregate-only run's observed ITL uses the
client's re-tokenised counts (``itl_definition = "client"``) and is left out of the ITL medians."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bayeslat.errors import SpecError
from bayeslat.simulate.replay import METRICS


def interval_score(lo: float, hi: float, y: float, alpha: float = 0.1) -> float:
    """The interval score of a central ``1 - alpha`` interval [lo, hi] for the observed ``y``,
    relative to ``y`` (Gneiting & Raftery 2007, eq. 43, divided by y): the interval's width plus
    ``2 / alpha`` times how far ``y`` lies outside it. A proper scoring rule (lower is better): a
    narrower interval scores better only while it still holds the truth, so it says whether a
    prediction improved when its point error and its width both changed (a probe update)."""
    if not (y > 0 and hi >= lo):
        raise SpecError(f"interval_score needs y > 0 and hi >= lo, got lo={lo}, hi={hi}, y={y}", field="interval")
    return ((hi - lo) + 2.0 / alpha * (max(lo - y, 0.0) + max(y - hi, 0.0))) / y


def compare(case: dict, pred: dict) -> dict:
    """Signed % errors and interval containment (of the mean, and of the p90 / p99 where the
    prediction has their intervals) of one case."""
    row = {k: case[k] for k in ("run", "model", "workload", "kind", "itl_definition", "stress")}
    row["new_levels"] = ",".join(pred.get("new_levels", []))
    for m in METRICS:
        p = pred[f"{m}_ms"]
        for q in ("mean", "p90", "p99"):
            o = case["observed"].get(f"{m}_{q}")
            row[f"{m}_{q}_obs"] = o
            # the point (median across draws), and the mean across draws (kept for comparison)
            for sfx in ("", "_draw_mean"):
                if sfx and f"{q}{sfx}" not in p:
                    continue
                v = p[f"{q}{sfx}"]
                row[f"{m}_{q}_pred{sfx}"] = v
                row[f"{m}_{q}_err_pct{sfx}"] = 100.0 * (v - o) / o if o else np.nan
        for q in ("mean", "p90", "p99"):
            if f"{q}_interval90" not in p:
                continue
            lo, hi = p[f"{q}_interval90"]
            row[f"{m}_{q}_lo90"], row[f"{m}_{q}_hi90"] = lo, hi
            o = case["observed"].get(f"{m}_{q}")
            row[f"{m}_{q}_in90"] = bool(lo <= o <= hi) if o is not None else None  # None: not observed
            row[f"{m}_{q}_iscore90"] = interval_score(lo, hi, o) if o else None
    return row


def summarize(df: pd.DataFrame) -> dict:
    """Median absolute % errors and 90%-interval coverage, overall and excluding stress runs."""
    out = {}
    for label, sub in (("all", df), ("typical", df[~df.stress])):
        s = {"runs": int(len(sub))}
        for m in METRICS:
            use = sub if m != "itl" else sub[sub.itl_definition == "server"]
            for q in ("mean", "p90", "p99"):
                for sfx in ("", "_draw_mean"):
                    if sfx and f"{m}_{q}_err_pct{sfx}" not in use:
                        continue
                    e = use[f"{m}_{q}_err_pct{sfx}"].abs()
                    s[f"{m}_{q}_median_abs_err_pct{sfx}"] = float(e.median()) if len(e.dropna()) else None
            for q in ("mean", "p90", "p99"):
                if f"{m}_{q}_in90" in use:
                    v = use[f"{m}_{q}_in90"].dropna()
                    s[f"{m}_{q}_coverage90"] = float(v.astype(bool).mean()) if len(v) else None
                if f"{m}_{q}_iscore90" in use:
                    v = use[f"{m}_{q}_iscore90"].dropna()
                    s[f"{m}_{q}_median_iscore90"] = float(v.median()) if len(v) else None
        out[label] = s
    return out
