"""``bayeslat check SPEC [--probe ...]``: the check report of a configuration against a fit
(:func:`bayeslat.transfer.check`), with a probe's score (:func:`bayeslat.probe.score_probe`).
Exits 3 when the verdict is out-of-distribution or the probe's decision is ``refit``, 0 otherwise.
"""

from __future__ import annotations

import json
import math

import numpy as np

from bayeslat import model as M
from bayeslat.probe import score_probe
from bayeslat.transfer import SENSITIVITY_LIMIT, check


def _load_model(path):
    return M.load_or_default(path)


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (np.floating, float)):
        v = float(o)
        return v if math.isfinite(v) else None
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.bool_):
        return bool(o)
    return o


def _format_probes(infos) -> list[str]:
    """Lines on each probe run: requests, rows by kind, and every record ingestion skipped."""
    lines = []
    for i in infos:
        by = ", ".join(f"{n} {k}" for k, n in (i.get("rows_by_kind") or {}).items())
        lines.append(f"  probe {i['run']}: {i.get('requests', 0)} requests, rows {by}")
        for why, r in ((i.get("ingest") or {}).get("skipped") or {}).items():
            lines.append(f"    ingest skipped {r['count']} record(s), {why}: " + "; ".join(r["examples"]))
        miss = (i.get("trace_rows") or {}).get("alpha_journey_requests_without_row")
        if miss:
            lines.append("    journey requests without an alpha row: " + ", ".join(f"{n} {k}" for k, n in miss.items()))
        unused = (i.get("trace_rows") or {}).get("step_records_unused")
        if unused:
            lines.append(f"    {unused['records']} step records not mapped: {unused['reason']}")
    return lines


def format_check(rep: dict) -> str:
    lines = [
        f"{rep['spec']}: {rep['model']} TP{rep['tensor_parallel']} on {rep['hardware']} ({rep['model_class']})",
        f"verdict: {rep['verdict'].upper()}",
    ]
    lines += [f"  - {r}" for r in rep["reasons"]]
    lines.append(f"{'canonical batch':32s} {'mean ms':>9s} {'90% interval':>20s} {'rel width':>9s}")
    for nm, e in rep["intervals"]["step"].items():
        lines.append(f"{nm:32s} {e['mean']:9.3f} [{e['lo90']:8.3f}, {e['hi90']:8.3f}] {100 * e['rel_width90']:8.0f}%")
    wl = rep["intervals"]["workload"]
    if wl:
        lines.append(f"workload ({wl['requests']} requests): mean over requests, 90% interval across posterior draws")
        for m in ("ttft_ms", "itl_ms", "e2e_ms"):
            e = wl[m]
            lines.append(f"  {m:8s} {e['mean']:10.2f} [{e['lo90']:.2f}, {e['hi90']:.2f}] rel width {100 * e['rel_width90']:.0f}%")
        if "sensitivity" in wl:
            se = wl["sensitivity"]
            lines.append(
                f"  sensitivity to the step time (d log mean / d log step; > {SENSITIVITY_LIMIT:g}: near saturation): "
                + ", ".join(f"{lab} {se[m]:.1f}" for m, lab in (("ttft_ms", "TTFT"), ("itl_ms", "ITL"), ("e2e_ms", "E2E")))
            )
    j = rep["feature_distance"]["config"].get("joint")
    if j:
        lines.append(f"nearest training deployment: {j['nearest']} (standardized log-feature distance {j['distance']:.2f})")
    if "probe" in rep:
        p = rep["probe"]
        sc = p["scores"]
        lines.append(
            f"probe: {p['decision'].upper()} ({sc['rows']} rows: 90% coverage {100 * sc['coverage90']:.0f}%, "
            f"observed/predicted {sc['ratio_median']:.2f}, outliers {100 * sc['outlier_rate']:.0f}%, "
            f"mean z {sc['z_mean']:.2f})"
        )
        lines += [f"  - {r}" for r in p["reasons"]]
        lines += _format_probes(p.get("probes") or [])
    return "\n".join(lines)


def run(args) -> int:
    """``bayeslat check SPEC [--model M] [--probe P ...]``: exit 3 if out-of-distribution (or the
    probe says refit), else 0."""
    if len(args.spec) > 1:
        return _run_many(args)
    args.spec = args.spec[0]
    idata = _load_model(args.model)
    # the probe before the check: a bad probe file is refused in a second, not after the check's
    # simulation (neither depends on the other)
    probe = score_probe(args.spec, idata, args.probe) if getattr(args, "probe", None) else None
    rep = check(args.spec, idata, draws=int(args.draws or 20))
    if probe is not None:
        rep["probe"] = probe
    rep = _jsonable(rep)
    if args.json:
        print(json.dumps(rep, indent=1))
    else:
        print(format_check(rep))
    bad = rep["verdict"] == "out-of-distribution" or rep.get("probe", {}).get("decision") == "refit"
    return 3 if bad else 0


def _run_many(args) -> int:
    """Several SPECs: one Dask task each (``pipeline.check_many``); exit 3 if any is
    out-of-distribution."""
    from bayeslat import cluster, pipeline
    from bayeslat.errors import SpecError

    if getattr(args, "probe", None):
        raise SpecError("--probe scores one configuration: give one SPEC with it", field="probe")
    progress = None if args.no_progress else cluster.stderr_progress("check: specs")
    reps = pipeline.check_many(
        args.spec, args.model, draws=int(args.draws or 20), workers=args.workers, scheduler=args.scheduler, progress=progress
    )
    reps = [_jsonable(r) for r in reps]
    if args.json:
        print(json.dumps(reps, indent=1))
    else:
        print("\n\n".join(format_check(r) for r in reps))
    return 3 if any(r["verdict"] == "out-of-distribution" for r in reps) else 0
