"""Leave-one-GPU-out on real kernel timings: each GPU's kernel times predicted from its datasheet
and the other GPUs (the hardware level, :mod:`bayeslat.model.hardware`).

For each GPU of the bundled kernel table (A100-SXM4-80GB, L40S, H100 SXM, H200, B200): the
hardware level is fit to the other four (every version they have; holding out H100 removes both
of its versions, so the version term then rests on its prior), and the held-out GPU's
serving-shape rows (:func:`bayeslat.data.kernels.serving_shapes`, all of them, not the fit's
subsample) are predicted as a GPU drawn from the hardware population with its own datasheet.

Per GPU and kernel family: the median |error| of the predictive median, and the share of rows
inside the 90% predictive interval (a new measurement: efficiencies drawn for the new GPU plus
the per-row noise). Baseline: the datasheet roofline ``max(FLOPs / peak, bytes / bandwidth)``
divided by one efficiency, the median ratio roofline / measured over the training GPUs' rows
(what "datasheet-only transfer at a single fitted efficiency" predicts). ``fitted`` rows: the same
table for the fit on all five GPUs (in-sample).

    python benchmarks/kernel_transfer.py [--per-family 200] [--out benchmarks/out/kernel_transfer.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bayeslat.data import kernels as K
from bayeslat.model import hardware as HW

HERE = Path(__file__).resolve().parent


def _score(idata, rows: pd.DataFrame, gpu: str, draws: int, seed: int) -> pd.DataFrame:
    out = []
    for ver, d in rows.groupby("version"):
        pred = HW.predict_kernels(idata, d, gpu, n=draws, seed=seed, noise=True)
        y = d["latency_ms"].to_numpy(np.float64)
        med = np.median(pred, axis=0)
        lo, hi = np.quantile(pred, [0.05, 0.95], axis=0)
        out.append(
            pd.DataFrame({"family": d["family"].to_numpy(), "version": ver, "err": med / y - 1.0, "in90": (y >= lo) & (y <= hi)})
        )
    return pd.concat(out, ignore_index=True)


def _baseline(train: pd.DataFrame, test: pd.DataFrame, gpu: str) -> np.ndarray:
    def roof(df):
        r = np.zeros(len(df))
        for g, idx in df.groupby("gpu").indices.items():
            ph = K.kernel_physics(df.iloc[idx], K.datasheet(g))
            r[idx] = (
                np.maximum(
                    ph["flops"] / K.datasheet(g).bf16_flops,
                    ph["bytes"]
                    / np.where(
                        df.iloc[idx]["family"].to_numpy() == "allreduce",
                        K.datasheet(g).link_bandwidth,
                        K.datasheet(g).hbm_bandwidth,
                    ),
                )
                * 1e3
            )
        return r

    eff = float(np.median(roof(train) / train["latency_ms"].to_numpy(np.float64)))
    return roof(test) / eff / test["latency_ms"].to_numpy(np.float64) - 1.0, eff


def table(scores: pd.DataFrame, base: pd.DataFrame | None) -> list[dict]:
    rows = []
    for fam in (*K.FAMILIES, "all"):
        s = scores if fam == "all" else scores[scores["family"] == fam]
        if s.empty:
            continue
        r = {
            "family": fam,
            "rows": len(s),
            "median_abs_err": float(np.median(np.abs(s["err"]))),
            "cov90": float(s["in90"].mean()),
        }
        if base is not None:
            b = base if fam == "all" else base[base["family"] == fam]
            r["baseline_median_abs_err"] = float(np.median(np.abs(b["err"])))
        rows.append(r)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--per-family", type=int, default=200, help="shapes per family in each fit (the same on every GPU)")
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--tune", type=int, default=1000)
    ap.add_argument("--pred-draws", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gpus", nargs="*", default=None)
    ap.add_argument("--out", default=str(HERE / "out" / "kernel_transfer.json"))
    args = ap.parse_args(argv)
    df = K.serving_shapes(K.load())
    gpus = args.gpus or sorted(df["gpu"].unique())
    result = {"settings": vars(args), "held_out": {}, "fitted": {}}
    t0 = time.perf_counter()
    full = HW.fit_hardware(df, per_family=args.per_family, draws=args.draws, tune=args.tune, seed=args.seed)
    result["fit_seconds_all"] = round(time.perf_counter() - t0, 1)
    for gpu in gpus:
        test = df[df["gpu"] == gpu]
        result["fitted"][gpu] = table(_score(full, test, gpu, args.pred_draws, args.seed), None)
    for gpu in gpus:
        t = time.perf_counter()
        train, test = df[df["gpu"] != gpu], df[df["gpu"] == gpu]
        idata = HW.fit_hardware(train, per_family=args.per_family, draws=args.draws, tune=args.tune, seed=args.seed)
        sc = _score(idata, test, gpu, args.pred_draws, args.seed)
        err, eff = _baseline(train, test, gpu)
        base = pd.DataFrame({"family": test["family"].to_numpy(), "err": err})
        div = int(idata.sample_stats["diverging"].sum())
        result["held_out"][gpu] = {
            "table": table(sc, base),
            "baseline_efficiency": eff,
            "divergences": div,
            "seconds": round(time.perf_counter() - t, 1),
        }
        print(f"\n{gpu}: held out ({result['held_out'][gpu]['seconds']} s, {div} divergences, baseline efficiency {eff:.3f})")
        print(f"{'family':10s} {'rows':>6s} {'|err| med':>10s} {'cov90':>6s} {'baseline':>9s}")
        for r in result["held_out"][gpu]["table"]:
            print(
                f"{r['family']:10s} {r['rows']:6d} {100 * r['median_abs_err']:9.1f}% {100 * r['cov90']:5.0f}% "
                f"{100 * r['baseline_median_abs_err']:8.1f}%"
            )
    summ = []
    for gpu, v in result["held_out"].items():
        a = next(r for r in v["table"] if r["family"] == "all")
        summ.append((gpu, a["median_abs_err"], a["cov90"], a["baseline_median_abs_err"]))
    print("\nsummary (all families): gpu, held-out |err|, cov90, baseline |err|")
    for s in summ:
        print(f"  {s[0]:10s} {100 * s[1]:6.1f}% {100 * s[2]:5.0f}% {100 * s[3]:6.1f}%")
    result["seconds"] = round(time.perf_counter() - t0, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
