"""How many kernel rows the hardware level should see: the fit on ``per_family`` shapes per
kernel family (the same shapes on every GPU, :func:`bayeslat.model.hardware.subsample`) for a
range of ``per_family``, each scored on the serving-shape rows it did not see.

The hardware model's latency is a nonlinear function of a kernel's shape (a smooth maximum of the
FLOP and byte rooflines), so its rows have no sufficient statistics: a bigger fit costs sampling
time in proportion. What a subsample loses is measured here: if the error and the 90% coverage
on the unseen shapes do not move as the rows grow, the fit is limited by the model, not by the
rows, and the subsample is the better estimator for the time it takes.

    python benchmarks/kernel_rows.py [--per-family 100 200 400 800] [--out benchmarks/out/kernel_rows.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bayeslat.data import kernels as K
from bayeslat.model import hardware as HW

HERE = Path(__file__).resolve().parent
KEYS = ["family", *K.SHAPE_COLS]


def _unseen_scores(idata, df: pd.DataFrame, seen: pd.DataFrame, draws: int, seed: int) -> pd.DataFrame:
    test = df.merge(seen[KEYS].drop_duplicates().assign(_seen=True), on=KEYS, how="left")
    test = test[test["_seen"].isna()].drop(columns="_seen")
    out = []
    for (gpu, ver), d in test.groupby(["gpu", "version"]):
        pred = HW.predict_kernels(idata, d, gpu, n=draws, seed=seed, noise=True)
        y = d["latency_ms"].to_numpy(np.float64)
        lo, hi = np.quantile(pred, [0.05, 0.95], axis=0)
        out.append(
            pd.DataFrame(
                {"gpu": gpu, "family": d["family"].to_numpy(), "err": np.median(pred, 0) / y - 1.0, "in90": (y >= lo) & (y <= hi)}
            )
        )
    return pd.concat(out, ignore_index=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--per-family", type=int, nargs="+", default=[100, 200, 400, 800])
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--tune", type=int, default=1000)
    ap.add_argument("--pred-draws", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "out" / "kernel_rows.json"))
    a = ap.parse_args(argv)
    df = K.serving_shapes(K.load())
    res = {"command": "python benchmarks/kernel_rows.py " + " ".join(argv or sys.argv[1:]), "rows_available": len(df), "fits": []}
    for n in a.per_family:
        t0 = time.perf_counter()
        idata = HW.fit_hardware(df, per_family=n, draws=a.draws, tune=a.tune, seed=a.seed)
        wall = time.perf_counter() - t0
        seen = HW.subsample(df, per_family=n, seed=a.seed)
        h = HW.summarize_fit(idata)
        sc = _unseen_scores(idata, df, seen, a.pred_draws, a.seed)
        fam = {
            f: {"median_abs_err": float(np.median(np.abs(g["err"]))), "cov90": float(g["in90"].mean()), "rows": len(g)}
            for f, g in sc.groupby("family")
        }
        row = {
            "per_family": n,
            "rows": len(seen),
            "wall_s": round(wall, 1),
            "sampling_s": float(idata.attrs["sampling_seconds"]),
            "ess_bulk_per_s": h["min_ess_bulk"] / float(idata.attrs["sampling_seconds"]),
            **h,
            "unseen_rows": len(sc),
            "unseen_median_abs_err": float(np.median(np.abs(sc["err"]))),
            "unseen_cov90": float(sc["in90"].mean()),
            "by_family": fam,
        }
        res["fits"].append(row)
        print(
            f"per_family {n:4d}: {row['rows']:6d} rows, {row['wall_s']:6.1f} s, min bulk ESS {h['min_ess_bulk']:.0f}, "
            f"R-hat {h['max_r_hat']:.3f}, {h['divergences']} div; unseen {row['unseen_rows']} rows: "
            f"|err| {100 * row['unseen_median_abs_err']:.1f}%, cov90 {100 * row['unseen_cov90']:.0f}%",
            flush=True,
        )
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
