"""Physics priors from real H100 kernel microbenchmarks (shared/data/bench).

Decode attention (bench/mha/decode/h100/<heads>-<kv_heads>-<head_dim>-tp<T>.csv): one call's
latency against the HBM roofline of the KV bytes it reads, ``batch x kv_len x 2 (K, V) x
kv_heads / T x head_dim x 2 bytes (bf16) / HBM BW``. A least-squares line per layout,
``latency = t0 + c x roofline``, gives the kernel's slope c (the efficiency multiplier of the
``decode_kv`` feature, 1 = roofline) and its launch floor t0. The spread of c over layouts sets
the LogNormal prior of decode_kv (model.DEFAULT_PRIORS["beta_lognormal"]).

    python benchmarks/kernel_priors.py [--bench ../shared/data/bench] [--out benchmarks/out/kernel_priors.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from bayeslat import config as specs

HERE = Path(__file__).resolve().parent


def decode_attention(bench: Path, hbm_bytes_per_us: float) -> pd.DataFrame:
    rows = []
    for f in sorted((bench / "mha" / "decode" / "h100").glob("*.csv")):
        heads, kvh, hd, tp = f.stem.replace("tp", "").split("-")
        kvh, hd, tp = int(kvh), int(hd), int(tp)
        df = pd.read_csv(f)
        df = df[(df["dtype"] == "bf16") & (df["kv_dtype"] == "bf16")]
        kv_bytes = df["batch_size"] * df["kv_len"] * 2.0 * max(kvh // tp, 1) * hd * 2.0
        roof = kv_bytes.to_numpy() / hbm_bytes_per_us
        lat = df["latency_us"].to_numpy()
        A = np.column_stack([np.ones_like(roof), roof])
        (t0, c), *_ = np.linalg.lstsq(A, lat, rcond=None)
        resid = lat - A @ np.array([t0, c])
        rows.append(
            {
                "layout": f.stem,
                "heads": int(heads),
                "kv_heads": kvh,
                "head_dim": hd,
                "tp": tp,
                "points": len(df),
                "slope_c": float(c),
                "floor_t0_us": float(t0),
                "rel_rmse": float(np.sqrt(np.mean((resid / lat) ** 2))),
            }
        )
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bench", default=str(HERE.parent.parent / "shared" / "data" / "bench"))
    ap.add_argument("--out", default=str(HERE / "out" / "kernel_priors.json"))
    args = ap.parse_args(argv)
    hw = specs.load_hardware(str(HERE.parent / "specs" / "hardware" / "h100-sxm.json"))
    df = decode_attention(Path(args.bench), hw.hbm_bandwidth / 1e6)
    print(df.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    c = df["slope_c"].to_numpy()
    summary = {
        "decode_kv_slope": {
            "min": float(c.min()),
            "median": float(np.median(c)),
            "max": float(c.max()),
            "log_sd": float(np.log(c).std(ddof=1)),
        },
        "decode_floor_us_median": float(df["floor_t0_us"].median()),
        "layouts": len(df),
    }
    print(json.dumps(summary, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"summary": summary, "layouts": df.to_dict(orient="records")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
