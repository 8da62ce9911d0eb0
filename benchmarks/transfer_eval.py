"""Honest evaluation of bayeslat.transfer on the bundled real runs.

Folds: hold out each model (lomo), each TP degree (lotp) and each workload (lowo) in turn; refit
on the remaining runs (subsampled, small NUTS), then for every held-out run

- ``check`` its configuration (its replayed workload) -> verdict, continuous score;
- predict it (``validate.predict_case``) -> actual |% error| of mean E2E and TTFT;
- probe experiment: first ``--probe-n`` requests after warm-up -> ``score_probe`` -> ``update``
  -> predicted mean E2E / TTFT of the whole run before / after vs observed.

Reports the confusion table (verdict vs |E2E error| > 15%), the AUROC of the continuous score
and of the relative 90% width of the mean E2E, and the probe table. JSON to ``--out`` (written
after every fold). ``--quick``: lomo only, smaller fits (report it as quick).

    python benchmarks/transfer_eval.py [--quick] [--out benchmarks/out/transfer_eval.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from bayeslat import evaluate as validate
from bayeslat import probe, transfer
from bayeslat.cli.check import _jsonable
from bayeslat.data import datasets, design
from bayeslat.simulate.spec import spec_for_run

ERR_THRESHOLD = 15.0


def auroc(score, label) -> float | None:
    score, label = np.asarray(score, float), np.asarray(label, bool)
    pos, neg = score[label], score[~label]
    if not len(pos) or not len(neg):
        return None
    gt = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(gt / (len(pos) * len(neg)))


def folds(cases, modes):
    out = []
    for mode in modes:
        key = {"lomo": "model", "lowo": "workload", "lotp": "tp"}[mode]
        groups: dict = {}
        for c in cases:
            groups.setdefault(str(c[key]), []).append(c)
        out += [(mode, k, g) for k, g in groups.items()]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="benchmarks/out/transfer_eval.json")
    ap.add_argument("--modes", nargs="*", default=None)
    ap.add_argument("--probe-n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fit-draws", type=int, default=1000, help="NUTS draws of the fold refits and probe updates")
    ap.add_argument("--fit-tune", type=int, default=500)
    ap.add_argument("--pred-draws", type=int, default=20, help="posterior draws simulated per held-out run")
    ap.add_argument(
        "--fit-dir",
        default=None,
        help="cache of the fold refits (validate.cv_fit_path), shared with benchmarks/validate_accuracy.py --fit-dir",
    )
    a = ap.parse_args(argv)
    q = a.quick
    cfg = dict(
        n_per_run_kind=25 if q else 40,
        draws=80 if q else a.fit_draws,
        tune=100 if q else a.fit_tune,
        chains=1 if q else 2,
        pred_draws=6 if q else a.pred_draws,
        max_requests=1500 if q else None,
        probe_folds=2 if q else None,
        fit_dir=a.fit_dir,
    )
    modes = a.modes or (["lomo"] if q else ["lomo", "lotp", "lowo"])
    t_start = time.time()
    cases = validate.replay_cases(None)
    for c in cases:
        c["tp"] = datasets.run_info(c["run"])["server"]["tensor_parallel"]
        if cfg["max_requests"]:
            c["workload_obj"] = c["workload_obj"].head(cfg["max_requests"])
            reqs = datasets.requests(c["run"]).iloc[: cfg["max_requests"]]
            ok = ~reqs.has_error
            c["observed"] = dict(c["observed"], ttft_mean=float(reqs.ttft_ms[ok].mean()), e2e_mean=float(reqs.e2e_ms[ok].mean()))
    full = design.bundled_obs(seed=a.seed)  # as the default fit: step rows too; subsampled per fold (cv_fit)
    print(f"bundled obs: {len(full.y)} rows ({time.time() - t_start:.0f} s)", file=sys.stderr)
    rows, probes, probed = [], [], set()
    report = {"config": cfg | {"modes": modes, "quick": q, "err_threshold_pct": ERR_THRESHOLD}}
    for fi, (mode, held, group) in enumerate(folds(cases, modes)):
        t0 = time.time()
        excl = {c["run"] for c in group}
        idata = validate.cv_fit(
            full,
            excl,
            seed=a.seed,
            n_per_run_kind=cfg["n_per_run_kind"],
            bins=None,
            fit_kwargs={k: cfg[k] for k in ("draws", "tune", "chains")},
            fit_dir=a.fit_dir,
        )
        print(
            f"[{mode}] held out {held}: fit ({idata.attrs['n_obs']} rows, sampler {idata.attrs['sampler']}) "
            f"in {time.time() - t0:.0f} s",
            file=sys.stderr,
        )
        for c in group:
            spec = spec_for_run(c["run"], workload=c["workload_obj"])
            rep = transfer.check(spec, idata, draws=cfg["pred_draws"], seed=a.seed)
            cmp_ = validate.compare(c, validate.predict_case(c, idata, cfg["pred_draws"], a.seed))
            row = {
                "mode": mode,
                "held_out": held,
                "run": c["run"],
                "verdict": rep["verdict"],
                "score": rep["score"],
                "e2e_rel_width90": rep["intervals"]["workload"]["e2e_ms"]["rel_width90"],
                "joint_distance": rep["feature_distance"]["config"]["joint"]["distance"],
                "new_levels": rep["new_levels"],
                "e2e_err_pct": cmp_["e2e_mean_err_pct"],
                "ttft_err_pct": cmp_["ttft_mean_err_pct"],
                "e2e_in90": cmp_["e2e_mean_in90"],
                "reasons": rep["reasons"],
            }
            rows.append(row)
            print(
                f"  {c['run'][16:]:40s} {row['verdict']:20s} score {row['score']:.2f}  E2E err {row['e2e_err_pct']:+.1f}%  "
                f"TTFT err {row['ttft_err_pct']:+.1f}%",
                file=sys.stderr,
            )
            if cfg["probe_folds"] is not None and fi >= cfg["probe_folds"]:
                continue
            if c is not group[0] or c["run"] in probed:
                continue  # one probe per fold (each update is a refit); a fold equal to another (TP1 = the
                # only TP1 model) is not probed twice
            probed.add(c["run"])
            t1 = time.time()
            pobs, infos = probe.probe_obs(spec, [f"bundled:{c['run']}:{a.probe_n}"])
            sc = probe.score_probe(spec, idata, [f"bundled:{c['run']}:{a.probe_n}"])
            new = probe.update(
                idata, pobs, draws=cfg["draws"], tune=cfg["tune"], chains=cfg["chains"], seed=a.seed, when="always"
            )
            after = validate.compare(c, validate.predict_case(c, new, cfg["pred_draws"], a.seed))
            up = json.loads(new.attrs["transfer_update"])
            pr = {
                "mode": mode,
                "held_out": held,
                "run": c["run"],
                "probe_decision": sc["decision"],
                "probe_ratio": sc["scores"]["ratio_median"],
                "probe_cov90": sc["scores"]["coverage90"],
            }
            for m in ("e2e", "ttft"):
                pr[f"{m}_obs"] = c["observed"][f"{m}_mean"]
                pr[f"{m}_before"], pr[f"{m}_after"] = cmp_[f"{m}_mean_pred"], after[f"{m}_mean_pred"]
                pr[f"{m}_err_before"], pr[f"{m}_err_after"] = cmp_[f"{m}_mean_err_pct"], after[f"{m}_mean_err_pct"]
                pr[f"{m}_width_before"] = (cmp_[f"{m}_mean_hi90"] - cmp_[f"{m}_mean_lo90"]) / cmp_[f"{m}_mean_pred"]
                pr[f"{m}_width_after"] = (after[f"{m}_mean_hi90"] - after[f"{m}_mean_lo90"]) / after[f"{m}_mean_pred"]
            pr["probe_rows"] = up["probe_rows"]
            probes.append(pr)
            print(
                f"  probe {c['run'][16:]}: {sc['decision']} ({time.time() - t1:.0f} s) E2E err "
                f"{pr['e2e_err_before']:+.1f}% -> {pr['e2e_err_after']:+.1f}%, TTFT {pr['ttft_err_before']:+.1f}% -> "
                f"{pr['ttft_err_after']:+.1f}%",
                file=sys.stderr,
            )
        report.update(rows=rows, probes=probes, summary=summarize(rows, probes), wall_s=time.time() - t_start)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(_jsonable(report), indent=1))
    print_tables(rows, probes, report["summary"])
    print(f"wrote {a.out} ({time.time() - t_start:.0f} s{', QUICK variant' if q else ''})")
    return 0


def summarize(rows, probes) -> dict:
    bad = np.array([abs(r["e2e_err_pct"]) > ERR_THRESHOLD for r in rows])
    conf = {
        v: {
            "err>15%": int(sum(b for r, b in zip(rows, bad) if r["verdict"] == v)),
            "err<=15%": int(sum(not b for r, b in zip(rows, bad) if r["verdict"] == v)),
        }
        for v in transfer.VERDICTS
    }
    out = {
        "runs": len(rows),
        "confusion": conf,
        "auroc_score": auroc([r["score"] for r in rows], bad),
        "auroc_e2e_rel_width90": auroc([r["e2e_rel_width90"] for r in rows], bad),
        "auroc_joint_distance": auroc([r["joint_distance"] for r in rows], bad),
        "median_abs_e2e_err_pct": float(np.median([abs(r["e2e_err_pct"]) for r in rows])) if rows else None,
    }
    if probes:
        out["probe_median_abs_e2e_err_before"] = float(np.median([abs(p["e2e_err_before"]) for p in probes]))
        out["probe_median_abs_e2e_err_after"] = float(np.median([abs(p["e2e_err_after"]) for p in probes]))
        out["probe_median_abs_ttft_err_before"] = float(np.median([abs(p["ttft_err_before"]) for p in probes]))
        out["probe_median_abs_ttft_err_after"] = float(np.median([abs(p["ttft_err_after"]) for p in probes]))
    return out


def print_tables(rows, probes, summary):
    print(f"{'mode':5s} {'held out':14s} {'run':42s} {'verdict':20s} {'score':>6s} {'E2E err%':>9s} {'TTFT err%':>9s}")
    for r in rows:
        print(
            f"{r['mode']:5s} {r['held_out'][:14]:14s} {r['run'][16:][:42]:42s} {r['verdict']:20s} {r['score']:6.2f} "
            f"{r['e2e_err_pct']:+9.1f} {r['ttft_err_pct']:+9.1f}"
        )
    print("confusion (verdict vs |E2E err| > 15%):")
    for v, c in summary["confusion"].items():
        print(f"  {v:20s} err>15%: {c['err>15%']:3d}   err<=15%: {c['err<=15%']:3d}")
    print(
        f"AUROC score {summary['auroc_score']}, e2e rel width {summary['auroc_e2e_rel_width90']}, "
        f"joint distance {summary['auroc_joint_distance']}"
    )
    if probes:
        print(
            f"{'probe run':42s} {'decision':12s} {'E2E obs':>9s} {'before':>9s} {'after':>9s} {'TTFT obs':>9s} {'before':>9s} {'after':>9s}"
        )
        for p in probes:
            print(
                f"{p['run'][16:][:42]:42s} {p['probe_decision']:12s} {p['e2e_obs']:9.1f} {p['e2e_before']:9.1f} {p['e2e_after']:9.1f} "
                f"{p['ttft_obs']:9.1f} {p['ttft_before']:9.1f} {p['ttft_after']:9.1f}"
            )


if __name__ == "__main__":
    sys.exit(main())
