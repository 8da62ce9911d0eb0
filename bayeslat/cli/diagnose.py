"""``bayeslat diagnose``: print the diagnostics of a fit (:func:`bayeslat.model.diagnose.diagnose`)
as a table or JSON; the exit code says whether every check passed."""

from __future__ import annotations

import json

from bayeslat.model import load
from bayeslat.model.diagnose import SPREAD_CHECKS, _missing, diagnose
from bayeslat.simulate.extrapolation import discrepancy_calibration


def _rows(d: dict, keys) -> list[str]:
    lines = []
    for key in keys:
        thr = d["thresholds"][key] if "thresholds" in d else ""
        val = d.get(key)
        ok = d["checks"].get(key)
        sval = "n/a" if _missing(val) else (f"{val:.4g}" if isinstance(val, float) else str(val))
        line = f"{key:<24}{sval:>14}  {thr:<10} {'yes' if ok else 'NO'}"
        if not ok and _missing(val):
            line += f"  ({d['reasons'].get(key, 'not available')})"
        elif not ok and (d.get("worst") or {}).get(key):
            line += f"  ({d['worst'][key]})"
        lines.append(line)
    return lines


def format_table(d: dict) -> str:
    lines = ["coefficient fit (posterior)", f"{'diagnostic':<24}{'value':>14}  {'threshold':<10} ok"]
    lines += _rows(d, d["thresholds"])
    if d.get("loo"):
        lines.append(f"PSIS-LOO elpd {d['loo']['elpd']:.1f} (se {d['loo']['se']:.1f}), p_loo {d['loo']['p_loo']:.1f}")
    sp = d.get("deployment_spread")
    if sp is not None:
        head = "deployment spread (group deployment_spread)"
        if sp["status"] == "not run":
            lines.append(f"{head}: not run ({sp['reason']})")
        elif sp["status"] == "exact":
            fit = sp.get("fit") or {}
            lines.append(f"{head}: {sp['reason']}" + ("" if sp["passed"] else "  FAILED"))
            for part, name in (("step", "sigma_dep"), ("alpha", "sigma_alpha_dep")):
                q = fit.get(part) or {}
                lines.append(
                    f"  {name:<16} median {q.get('median', float('nan')):.3f} "
                    f"[{q.get('q05', float('nan')):.3f}, {q.get('q95', float('nan')):.3f}] "
                    f"(prior median {q.get('prior_median', float('nan')):.3f}); grid edge mass "
                    f"{q.get('grid_edge_mass', float('nan')):.1e}"
                    + ("" if sp["checks"].get(f"grid_edge_mass_{part}") else "  FAILED")
                )
        else:
            lines.append(head + (f": MISSING ({sp['reason']})" if sp["status"] == "missing" else ""))
            lines += _rows(dict(sp, thresholds={k: d["thresholds"][k] for k in SPREAD_CHECKS}), SPREAD_CHECKS)
    hl = d.get("hardware_level") or {}
    if hl.get("status") == "diagnosed":
        h = hl["health"]
        lines.append(
            f"hardware level (kernel fit, reference {hl['reference']}): {h.get('divergences')} divergences, "
            f"max R-hat {h.get('max_r_hat', float('nan')):.3f}, min bulk ESS {h.get('min_ess_bulk', float('nan')):.0f}"
            + ("" if hl["passed"] else "  FAILED")
        )
        feats = sorted({f for row in hl["deviations"].values() for f in row})
        lines.append("  GPU-bound coefficient vs the reference: x multiplier (ratio terms), + ms per unit (difference terms)")
        for g, row in hl["deviations"].items():
            cells = []
            for f in feats:
                v = row[f]
                med = f"x{v['median']:.2f}" if v["how"] == "ratio" else f"{v['median']:+.2f}"
                cells.append(f"{f} {med} [{v['lo90']:.2f}, {v['hi90']:.2f}]")
            lines.append(f"  {g}: " + "; ".join(cells))
    wd = d.get("workload_discrepancy")
    if wd:
        lines.append(
            f"workload discrepancy (log step time, from {wd['runs']} held-out runs): tau0 {wd['tau0_mean']:.3f} "
            f"[{wd['tau0_interval90'][0]:.3f}, {wd['tau0_interval90'][1]:.3f}], tau1 {wd['tau1_mean']:.3f} "
            f"[{wd['tau1_interval90'][0]:.3f}, {wd['tau1_interval90'][1]:.3f}]"
        )
    else:
        lines.append("workload discrepancy: not calibrated (bayeslat calibrate): unseen workloads are not widened")
    lines.append("features kept (ARD): " + (", ".join(d["features_kept"]) or "none"))
    lines.append("features pruned:     " + (", ".join(d["features_pruned"]) or "none"))
    lines.append("PASSED" if d["passed"] else "FAILED")
    return "\n".join(lines)


def run(args) -> int:
    """``bayeslat diagnose MODEL [--json]``: exit 1 when any diagnostic of either stage fails its
    threshold or cannot be computed."""
    idata = load(args.model)
    d = diagnose(idata)
    cal = discrepancy_calibration(idata)
    d["workload_discrepancy"] = {k: v for k, v in cal.items() if k not in ("tau0", "tau1", "errors")} if cal else None
    if getattr(args, "json", False):
        sp = {k: v for k, v in d["deployment_spread"].items() if k != "variables"}
        print(json.dumps({k: v for k, v in d.items() if k != "variables"} | {"deployment_spread": sp}, indent=2, default=str))
    else:
        print(format_table(d))
    return 0 if d["passed"] else 1
