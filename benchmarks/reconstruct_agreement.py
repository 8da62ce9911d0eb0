"""Lifecycle reconstruction vs the real sampled step records (3 runs) + request accounting (16 runs).

For the traced runs: clock offset (bootstrap sd), then at every sampled step the reconstructed
batch.decode_tokens / batch.prefill_tokens / queue.running_depth / queue.waiting_depth vs the
traced ones (median abs error, % exact, % within 1 and 2), the step clock K vs the traced step.id
(after removing the id offset), and step time: reconstructed dt vs ``cycle_time_us`` (single
traced step pairs) and vs the time between consecutive sampled records (gaps <= 32 steps).

Usage: python benchmarks/reconstruct_agreement.py [--out PATH] [--runs SUBSTR ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bayeslat.data import datasets
from bayeslat.data import design as D
from bayeslat.data import reconstruct as R
from bayeslat.data import windows as RW

PAIRS = (
    ("batch.decode_tokens", "n_decode"),
    ("batch.prefill_tokens", "prefill_tokens"),
    ("queue.running_depth", "running_depth"),
    ("queue.waiting_depth", "waiting_depth"),
)


def _agree(rec_v, tr_v) -> dict:
    e = np.abs(rec_v - tr_v)
    return {
        "median_abs": float(np.median(e)),
        "mean_abs": float(np.mean(e)),
        "pct_exact": float(100 * np.mean(e == 0)),
        "pct_within1": float(100 * np.mean(e <= 1)),
        "pct_within2": float(100 * np.mean(e <= 2)),
    }


def _time_agree(pred, obs) -> dict:
    ok = np.isfinite(pred) & np.isfinite(obs) & (obs > 0)
    if ok.sum() < 3:
        return {"n": int(ok.sum())}
    p, o = pred[ok], obs[ok]
    return {
        "n": int(ok.sum()),
        "mape_pct": float(100 * np.mean(np.abs(p - o) / o)),
        "corr": float(np.corrcoef(p, o)[0, 1]),
        "median_obs_ms": float(np.median(o) / 1e3),
        "median_rec_ms": float(np.median(p) / 1e3),
    }


def traced(run: str, rec, tr, seed=0) -> dict:
    t0 = time.time()
    off = RW.estimate_offset(rec, tr, seed=seed)
    tr = tr.sort_values("step.id")
    ts = tr["step.ts_start_ns"].to_numpy(np.float64) / 1e3 - off["offset_us"]
    ids = tr["step.id"].to_numpy(np.int64)
    k = np.clip(rec.step_at(ts), 0, len(rec.steps) - 1)
    st = rec.steps.iloc[k]
    out = {"offset": off, "fields": {}}
    for a, b in PAIRS:
        out["fields"][a] = _agree(st[b].to_numpy(np.float64), tr[a].to_numpy(np.float64))
    # step clock: K(ts) vs step.id
    Kv = rec.K(ts)
    id0 = float(np.median(ids - Kv))
    res = ids - id0 - Kv
    out["step_clock"] = {
        "id0": id0,
        "resid_p05": float(np.percentile(res, 5)),
        "resid_p95": float(np.percentile(res, 95)),
        "resid_mad": float(np.median(np.abs(res))),
        "n_steps_rec": int(len(rec.steps)),
        "max_traced_id_minus_id0": float(ids.max() - id0),
    }
    # step times
    dt = rec.steps["dt_us"].to_numpy()
    cs = np.concatenate([[0.0], np.cumsum(dt)])
    cyc = tr["cycle_time_us"].to_numpy(np.float64)
    kk = ids - int(round(id0))
    inb = (kk >= 0) & (kk < len(dt))
    pred1 = np.where(inb, dt[np.clip(kk, 0, len(dt) - 1)], np.nan)
    out["cycle_time"] = _time_agree(pred1, cyc)
    gap = np.diff(ids)
    g_obs = np.diff(ts)
    a0, a1 = kk[:-1], kk[:-1] + gap
    ok = (gap >= 1) & (gap <= 32) & (a0 >= 0) & (a1 <= len(dt))
    pred_g = np.full(len(gap), np.nan)
    pred_g[ok] = cs[a1[ok]] - cs[a0[ok]]
    out["gap_time"] = _time_agree(pred_g, np.where(ok, g_obs, np.nan))
    out["gap_time"]["obs_ms_per_step_median"] = float(np.median(g_obs[ok] / gap[ok]) / 1e3)
    out["seconds"] = time.time() - t0
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/out/reconstruct_agreement.json")
    ap.add_argument("--runs", nargs="*", default=None, help="substrings of run ids (default: all 16)")
    args = ap.parse_args(argv)
    steps = datasets.steps()
    report = {"traced": {}, "accounting": {}}
    for run in datasets.runs()["run"]:
        if args.runs and not any(s in run for s in args.runs):
            continue
        t0 = time.time()
        rec = D.reconstruct_run(run)
        w = RW.observation_windows(rec)
        r = rec.requests
        acc = dict(rec.info["counts"])
        acc.update(
            {
                "n_requests": int(len(r)),
                "warmup_flagged": int(r["warmup"].sum()),
                "decode_windows": int((w.kind == R.KIND_WINDOW).sum()),
                "ttft_rows": int((w.kind == R.KIND_TTFT).sum()),
                "n_steps": int(len(rec.steps)),
                "resid_steps_mad": rec.info["resid_steps_mad"],
                "prefill_overflow": rec.info["prefill_overflow"],
                "seconds": round(time.time() - t0, 1),
            }
        )
        usable = int(((r.status == "ok") & ~r.warmup).sum())
        acc["ok_not_warmup"] = usable
        acc["dropped_windows"] = usable - acc["decode_windows"]
        acc["dropped_ttft"] = usable - acc["ttft_rows"]
        assert sum(rec.info["counts"].values()) == len(r), "unaccounted requests"
        report["accounting"][run] = acc
        tr = steps[steps["experiment_id"] == run]
        if len(tr):
            report["traced"][run] = traced(run, rec, tr)
        print(f"{run}: {acc}", flush=True)

    print("\n== agreement at the sampled real steps (after clock offset)")
    print(f"{'run':44s} {'field':22s} {'med|e|':>7s} {'exact%':>7s} {'<=1%':>6s} {'<=2%':>6s}")
    for run, t in report["traced"].items():
        for f, a in t["fields"].items():
            print(
                f"{run:44s} {f:22s} {a['median_abs']:7.2f} {a['pct_exact']:7.1f} {a['pct_within1']:6.1f} {a['pct_within2']:6.1f}"
            )
    print("\n== clock offset, step clock K vs step.id, step times")
    for run, t in report["traced"].items():
        o, c, g, cy = t["offset"], t["step_clock"], t["gap_time"], t["cycle_time"]
        print(
            f"{run}: offset {o['offset_us'] / 1e6:.4f} s +- {o['sd_us'] / 1e3:.1f} ms; K-id resid p05/p95 "
            f"{c['resid_p05']:.1f}/{c['resid_p95']:.1f} steps (of {c['n_steps_rec']}); gaps<=32: MAPE {g.get('mape_pct', np.nan):.1f}% "
            f"corr {g.get('corr', np.nan):.3f} (n={g['n']}); cycle_time_us: MAPE {cy.get('mape_pct', np.nan):.1f}% "
            f"corr {cy.get('corr', np.nan):.3f} median obs/rec {cy.get('median_obs_ms', np.nan):.2f}/{cy.get('median_rec_ms', np.nan):.2f} ms"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=float))
    print(f"\nwrote {out}")
    return report


if __name__ == "__main__":
    main()
