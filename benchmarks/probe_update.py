"""Probe updates on held-out models: does a short probe fix a held-out run's prediction?

    python benchmarks/probe_update.py --fit-dir benchmarks/out/cv_fits_spread [--probe-n 200]
        [--pred-draws 10] [--probe-design first|stages] [--out benchmarks/out/probe_update.json]
    python benchmarks/probe_update.py --summarize benchmarks/results/probe_update.json
    ... --as-new-gpu 'H100 (NVL datasheet)' --datasheet specs/hardware/h100-nvl.json  # wrong datasheet
    ... --hold-out workload  # leave-one-workload-out folds: probes of trained deployments

For every model of the 16 bundled per-request runs: refit without it (leave-one-model-out, cached
in ``--fit-dir`` as benchmarks/validate_accuracy.py does), then for each of its runs take the first
``--probe-n`` requests after the warm-up (``probe.PROBE_WARMUP``) as the probe (``--probe-design
stages``: split over the run's load stages, ``probe.bundled_probe``), condition the
probe's deployment on it (``probe.update_deployment``: seconds), and predict the whole run
(replayed arrivals, ``--pred-draws`` posterior draws simulated) before and after. Reports the signed
% error of the mean E2E, TTFT and ITL, whether the 90% interval contains the observed mean, and
the fitted factors; the summary adds the 90% interval score (``validate.interval_score``), which
scores the update's narrower interval and its point together. The probe's slice error is
calibrated by probing the fold's own training runs the same way (``probe.probe_calibration``; ``--no-calibration``: a fixed slice spread instead).
``--oos-calibration``: the slice errors and the factor prior of a new deployment are measured out of
sample instead, on the other held-out models' runs under their own folds' fits
(``probe.probe_slice_error``, ``probe.run_factor_error``, ``probe.oos_calibration``).
``--as-new-gpu NAME``: the held-out runs' GPU is one the fit has never seen (its deviation drawn from
the hardware population); with ``--datasheet JSON`` its numbers also come from another datasheet (a
GPU whose datasheet-only prediction is biased, as on a real new GPU). ``--hold-out workload``: the
same on the leave-one-workload-out folds (the cache ``validate`` uses), each fold calibrated with the
other workloads' runs; the probed deployment is then a trained one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fit-dir", default="benchmarks/out/cv_fits_spread")
    ap.add_argument("--probe-n", type=int, default=200)
    ap.add_argument("--pred-draws", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--fit-draws",
        type=int,
        default=None,
        help="NUTS draws of the fold refits (default: model.DEFAULT_SAMPLER's); with --fit-tune 500 "
        "--fit-draws 1000 it shares the fold fits of the accuracy commands (validate.cv_fit_path)",
    )
    ap.add_argument("--fit-tune", type=int, default=None, help="NUTS tuning steps of the fold refits")
    ap.add_argument(
        "--hold-out",
        default="model",
        choices=("model", "workload"),
        help="model (default): leave-one-model-out folds, a probe of a model the fit has not seen; "
        "workload: leave-one-workload-out folds, a probe of a trained deployment under a workload "
        "the fit has not seen (the deployment factors are then its trained ones, no draw weights)",
    )
    ap.add_argument("--models", nargs="*", default=None, help="only these held-out models (or workloads)")
    ap.add_argument(
        "--no-calibration",
        action="store_true",
        help="slice errors N(0, slice_spread) instead of probe.probe_calibration",
    )
    ap.add_argument(
        "--step-factors",
        type=int,
        default=None,
        choices=(1, 2),
        help="1: one factor on the step time; 2: fixed and load parts apart (default: probe.STEP_FACTORS)",
    )
    ap.add_argument(
        "--oos-calibration",
        action="store_true",
        help="slice errors measured out of sample: the probes of the other held-out models' runs under their "
        "own leave-one-model-out fits (probe.probe_slice_error), nested: never the run's own model",
    )
    ap.add_argument(
        "--as-new-gpu",
        default=None,
        metavar="NAME",
        help="the held-out runs' GPU renamed to NAME (same datasheet numbers): a new model on a GPU the "
        "fit has never seen, whose deviation is drawn from the hardware population (wide before the "
        "probe); the probe update then has to pin it down",
    )
    ap.add_argument(
        "--datasheet",
        default=None,
        metavar="JSON",
        help="with --as-new-gpu: the new GPU's numbers from this datasheet instead of the runs' own (a "
        "mis-specified datasheet: e.g. specs/hardware/h100-nvl.json for the H100 SXM runs, peak "
        "FLOPs -16%%, bandwidth +16%%), so the prediction before the probe is biased as a datasheet-"
        "only transfer is",
    )
    ap.add_argument(
        "--level",
        default="auto",
        choices=("auto", "run", "deployment"),
        help="update_deployment(level=): what a probe's factors are (ablations of 'auto' for trained deployments)",
    )
    ap.add_argument(
        "--run-prior",
        type=float,
        default=None,
        help="update_deployment(run_prior=): prior probability that a trained deployment's probe is a run of it",
    )
    ap.add_argument(
        "--reweight",
        default="auto",
        choices=("auto", "always", "never"),
        help="importance weights of the posterior draws from the probe's levels (probe.update_deployment): "
        "auto (default) only where the configuration has a new level (unseen GPU / class); "
        "never: the deployment factors alone",
    )
    ap.add_argument(
        "--probe-design",
        default="first",
        choices=("first", "stages"),
        help="first: the first --probe-n requests after the warm-up; stages: --probe-n split evenly over "
        "the run's load stages, the first n / k after each stage's warm-up (probe.bundled_probe)",
    )
    ap.add_argument(
        "--ttft-level",
        default=None,
        choices=("sum", "median"),
        help="probe.PROBE_TTFT_LEVEL: the probe's TTFT level as the summed ratio (default) or the rows' median (exploratory)",
    )
    ap.add_argument(
        "--ttft-slice-floor",
        type=float,
        default=None,
        help="probe.SLICE_SD_DEFAULT['ttft'], the floor of the calibrated TTFT slice SD (default 0.15)",
    )
    ap.add_argument("--out", default="benchmarks/out/probe_update.json")
    ap.add_argument(
        "--summarize",
        nargs="+",
        default=None,
        metavar="JSON",
        help="no run: print the table of these result files and rewrite their summaries (e.g. to add the "
        "interval scores to results written before them)",
    )
    a = ap.parse_args(argv)
    if a.summarize:
        for path in a.summarize:
            rep = json.loads(Path(path).read_text())
            # a file benchmarks/run_all.py merged holds one result per variant
            for name, res in ({k: v["result"] for k, v in rep["variants"].items()} if "variants" in rep else {"": rep}).items():
                res["summary"] = summarize(res["rows"])
                print(path, name)
                print_table(res["rows"])
            Path(path).write_text(json.dumps(rep, indent=1))
        return 0
    if a.no_calibration and a.oos_calibration:
        ap.error("--no-calibration and --oos-calibration exclude each other")
    if a.datasheet and not a.as_new_gpu:
        ap.error("--datasheet needs --as-new-gpu")
    warnings.filterwarnings("ignore")
    from bayeslat import evaluate as validate
    from bayeslat import probe
    from bayeslat.probe import condition

    if a.step_factors is not None:
        condition.STEP_FACTORS = a.step_factors  # used by the calibration pass too
    if a.ttft_level is not None:
        condition.PROBE_TTFT_LEVEL = a.ttft_level  # the calibration pass measures the same statistic
    if a.ttft_slice_floor is not None:
        probe.SLICE_SD_DEFAULT["ttft"] = a.ttft_slice_floor

    t_start = time.time()
    cases = validate.replay_cases(None)
    full = validate.cv_rows(a.seed)  # built only if a fold is not cached
    groups: dict = {}
    for c in cases:
        groups.setdefault(c[a.hold_out], []).append(c)
    fits: dict = {}

    def fold_fit(model):
        """The fit without ``model``'s runs (the held-out group; cached in --fit-dir, loaded once)."""
        if model not in fits:
            excl = {c["run"] for c in groups[model]}
            fk = {k: v for k, v in (("draws", a.fit_draws), ("tune", a.fit_tune)) if v is not None}
            fits[model] = validate.cv_fit(full, excl, seed=a.seed, fit_dir=a.fit_dir, fit_kwargs=fk)
        return fits[model]

    rows = []
    oos = {}
    if a.oos_calibration:
        # pass 1: every held-out run's out-of-sample slice error under its own fold's fit
        oos = probe.oos_errors(
            fold_fit,
            groups,
            a.probe_n,
            seed=a.seed,
            design=a.probe_design,
            hold_out=a.hold_out,
            log=lambda s: print(s, file=sys.stderr),
        )
    for model, group in groups.items():
        if a.models and model not in a.models:
            continue
        idata = fold_fit(model)
        # the probe's slice error, measured by probing the fold's own training runs the same way
        cal = None if a.no_calibration else probe.probe_calibration(idata, a.probe_n, seed=a.seed, design=a.probe_design)
        if a.oos_calibration:
            cal = probe.oos_calibration([e for m, errs in oos.items() if m != model for e in errs], cal)
        for c in group:
            t0 = time.time()
            c, spec = case_spec(c, a.as_new_gpu, a.datasheet)
            src = probe.bundled_probe(c["run"], a.probe_n, a.probe_design)
            pobs, _ = probe.probe_obs(spec, src)
            new, info = probe.update_deployment(
                idata,
                pobs,
                seed=a.seed,
                calibration=cal,
                reweight={"auto": "auto", "always": True, "never": False}[a.reweight],
                level=a.level,
                run_prior=a.run_prior,
            )
            t_up = time.time() - t0
            b = validate.compare(c, validate.predict_case(c, idata, a.pred_draws, a.seed))
            f = validate.compare(c, validate.predict_case(c, new, a.pred_draws, a.seed))
            r = {
                "held_out_model": c["model"],
                "held_out": {a.hold_out: model},
                "run": c["run"],
                "probe": src,
                "probe_rows": int(len(pobs)),
                "update_s": t_up,
                "gpu": c["deployment"].hardware,
                "draw_weights": info.get("draw_weights"),
                "level": info.get("level"),
                "factors": {k: info[k] for k in ("step_factor", "fixed_factor", "load_factor", "cpu_factor")},
                "slice_sd": info["slice_sd"],
                "slice_offset": info["slice_offset"],
                "calibration": info["calibration"],
                "calibration_kinds": (cal or {}).get("kinds"),
                "update_spread": info.get("update_spread"),
                "factor_prior_sd": info.get("factor_prior_sd"),
                "factor_sd": (cal or {}).get("factor_sd"),
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
            rows.append(r)
            p_run = (info.get("level") or {}).get("p_run")
            print(
                f"{c['run'][16:]:38s} fixed x{info['fixed_factor']['mean']:.2f} load x{info['load_factor']['mean']:.2f} "
                f"cpu x{info['cpu_factor']['mean']:.2f}{'' if p_run is None else f' P(run) {p_run:.2f}'} ({t_up:.0f} s)  E2E {r['e2e']['before_pct']:+.1f} -> {r['e2e']['after_pct']:+.1f}%  "
                f"TTFT {r['ttft']['before_pct']:+.1f} -> {r['ttft']['after_pct']:+.1f}%  ITL {r['itl']['before_pct']:+.1f} -> "
                f"{r['itl']['after_pct']:+.1f}%",
                file=sys.stderr,
                flush=True,
            )
            _write(a, rows, t_start, partial=True)
    out = _write(a, rows, t_start, partial=False, oos=oos)
    print_table(rows)
    print(f"wrote {out} ({time.time() - t_start:.0f} s)")
    return 0


def case_spec(c: dict, as_new_gpu: str | None = None, datasheet: str | None = None) -> tuple[dict, dict]:
    """The held-out case ``c`` and the SPEC its probe is read with: its own, or (``as_new_gpu``)
    its GPU renamed to one the fit has never seen, its numbers from ``datasheet`` if given."""
    from bayeslat.simulate.spec import spec_for_run

    if not as_new_gpu:
        return c, spec_for_run(c["run"], workload=c["workload_obj"])
    from dataclasses import replace

    from bayeslat import config as specs
    from bayeslat import evaluate as validate
    from bayeslat.data import datasets

    dep = c["deployment"]
    hw = replace(specs.load_hardware(datasheet or dep.hardware_spec), name=as_new_gpu)
    if datasheet:  # the features (dep.ctx) from the other datasheet, the run's own KV capacity
        srv = dict(datasets.run_info(c["run"])["server"]) | {"kv_blocks": dep.kv_blocks}
        dep = validate.deployment(dep.model_spec, datasheet, srv, dep.name)
    c = dict(c, deployment=replace(dep, hardware=as_new_gpu))
    return c, spec_for_run(c["run"], hardware=hw, workload=c["workload_obj"], server_overrides={"kv_blocks": dep.kv_blocks})


def summarize(rows) -> dict:
    """Medians before / after, runs improved, 90% coverage, widths and interval scores
    (``validate.interval_score``: width plus the miss, a proper score of the interval)."""
    from bayeslat import evaluate as validate

    out = {"runs": len(rows)}
    for m in ("e2e", "ttft", "itl"):
        b = np.array([abs(r[m]["before_pct"]) for r in rows])
        f = np.array([abs(r[m]["after_pct"]) for r in rows])
        out[m] = {
            "median_abs_before_pct": float(np.median(b)),
            "median_abs_after_pct": float(np.median(f)),
            "improved_runs": int((f < b).sum()),
            "coverage90_before": float(np.mean([r[m]["in90_before"] for r in rows])),
            "coverage90_after": float(np.mean([r[m]["in90_after"] for r in rows])),
        }
        if all("interval90_before" in r[m] for r in rows):
            for tag in ("before", "after"):
                w = [(r[m][f"interval90_{tag}"][1] - r[m][f"interval90_{tag}"][0]) / r[m]["obs"] for r in rows]
                out[m][f"median_rel_width90_{tag}"] = float(np.median(w))
            sc = {
                tag: np.array([validate.interval_score(*r[m][f"interval90_{tag}"], r[m]["obs"]) for r in rows])
                for tag in ("before", "after")
            }
            out[m]["median_interval_score_before"] = float(np.median(sc["before"]))
            out[m]["median_interval_score_after"] = float(np.median(sc["after"]))
            out[m]["interval_score_improved_runs"] = int((sc["after"] < sc["before"]).sum())
    return out


def _write(a, rows, t_start, partial, oos=None):
    from bayeslat.cli.check import _jsonable

    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rep = {"config": vars(a), "rows": rows, "summary": summarize(rows) if rows else {}, "wall_s": time.time() - t_start}
    if oos:
        # every run's out-of-sample slice error (its own fold's fit), what `bayeslat calibrate` stores
        rep["oos_errors"] = [e for errs in oos.values() for e in errs]
    if partial:
        rep["partial"] = True
    out.write_text(json.dumps(_jsonable(rep), indent=1))
    return out


def print_table(rows):
    print(
        f"{'held-out run':40s} {'fixed':>6s} {'load':>6s} {'cpu':>6s} | {'E2E before':>10s} {'after':>8s} | "
        f"{'TTFT before':>11s} {'after':>8s} | {'ITL before':>10s} {'after':>8s}"
    )
    for r in rows:
        fa = r["factors"]
        print(
            f"{r['run'][16:][:40]:40s} {fa['fixed_factor']['mean']:6.2f} {fa['load_factor']['mean']:6.2f} {fa['cpu_factor']['mean']:6.2f} | "
            f"{r['e2e']['before_pct']:+9.1f}% {r['e2e']['after_pct']:+7.1f}% | {r['ttft']['before_pct']:+10.1f}% {r['ttft']['after_pct']:+7.1f}% | "
            f"{r['itl']['before_pct']:+9.1f}% {r['itl']['after_pct']:+7.1f}%"
        )
    s = summarize(rows)
    for m in ("e2e", "ttft", "itl"):
        line = (
            f"{m.upper():5s} median |error| {s[m]['median_abs_before_pct']:.1f}% -> {s[m]['median_abs_after_pct']:.1f}%, "
            f"improved in {s[m]['improved_runs']} of {s['runs']} runs, 90% coverage {s[m]['coverage90_before']:.0%} -> "
            f"{s[m]['coverage90_after']:.0%}"
        )
        if "median_interval_score_before" in s[m]:
            line += (
                f"; 90% interval score {s[m]['median_interval_score_before']:.2f} -> {s[m]['median_interval_score_after']:.2f} "
                f"(better in {s[m]['interval_score_improved_runs']})"
            )
        print(line)


if __name__ == "__main__":
    sys.exit(main())
