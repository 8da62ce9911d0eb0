"""How much a vLLM release moves a step's time: the size of the version discrepancy
(:func:`bayeslat.simulate.extrapolation.version_discrepancy`), and the end-to-end runs that check it.

1. **From the kernels** (what the package uses). The fit's hardware level has a version term,
   identified by the H100 kernels timed under vLLM 0.14 and 0.19. For each GPU of the level, the
   canonical decode steps (every bundled BF16 model spec x TP 1-8 x batch 1-256 x 3 contexts) are
   timed as their kernel sums under both releases
   (:func:`bayeslat.model.hardware_steps.version_shift`): the RMS of the log change over steps and
   draws, and the per-release SD of a random walk over the 5 minor releases between them. Also
   split by batch (1-16, 32-96, 128-256).
2. **End to end** (a check, not used by the package). ``silicon_sample.csv`` (aiconfigurator) has
   static-batch serving runs of the same model, GPU, precision and shape under two vLLM releases:
   the log change of their TPOT and TTFT. These are quantized MoE models on Blackwell, the only
   pairs the table has, and they include the host side, which kernels do not.

    python benchmarks/version_shift.py [--model FIT.nc] [--out benchmarks/out/version_shift.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from bayeslat import config as C
from bayeslat import model as M
from bayeslat.config import hardware_key
from bayeslat.errors import SpecError
from bayeslat.model import hardware_steps as HS

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data" / "kernels" / "aiconfigurator" / "silicon_sample.csv.gz"
BATCH_BANDS = {"1-16": (1, 16), "32-96": (32, 96), "128-256": (128, 256)}
PAIR_KEYS = [
    "system",
    "precision",
    "model_path",
    "mode",
    "isl",
    "osl",
    "batch_size",
    "tp_size",
    "pp_size",
    "attention_dp_size",
    "moe_tp_size",
    "moe_ep_size",
    "gemm_quant_mode",
    "moe_quant_mode",
]


def by_batch(ds, gpu: str, hw) -> dict:
    """RMS log change 0.14 -> 0.19 of the canonical decode steps, per batch band."""
    d = HS.version_log_change(ds, gpu, hw)[0]
    batch = np.tile(np.asarray(HS.BATCH, dtype=float), d.shape[-1] // len(HS.BATCH))
    return {k: float(np.sqrt(np.mean(d[:, (batch >= lo) & (batch <= hi)] ** 2))) for k, (lo, hi) in BATCH_BANDS.items()}


def silicon_pairs(path: Path) -> list[dict]:
    s = pd.read_csv(path)
    s = s[s["backend"] == "vllm"].copy()
    for k in PAIR_KEYS:
        s[k] = s[k].astype(str)
    g = s.groupby([*PAIR_KEYS, "backend_version"])[["silicon_ttft_ms", "silicon_tpot_ms"]].mean().reset_index()
    m = g.merge(g, on=PAIR_KEYS, suffixes=("_a", "_b"))
    m = m[m["backend_version_a"] < m["backend_version_b"]]
    out = []
    for key, d in m.groupby(["system", "model_path", "precision", "backend_version_a", "backend_version_b"]):
        a, b = key[3], key[4]
        try:
            rel = C.release_distance(a, b)
        except SpecError:  # a nightly build: no release number
            rel = None
        tpot = np.log(d["silicon_tpot_ms_b"] / d["silicon_tpot_ms_a"]).to_numpy()
        ttft = np.log(d["silicon_ttft_ms_b"] / d["silicon_ttft_ms_a"]).to_numpy()
        out.append(
            {
                "gpu": key[0],
                "model": key[1],
                "precision": key[2],
                "from": a,
                "to": b,
                "releases": rel,
                "shapes": len(d),
                "tpot_rms_log_change": float(np.sqrt(np.nanmean(tpot**2))),
                "tpot_median_log_change": float(np.nanmedian(tpot)),
                "ttft_rms_log_change": float(np.sqrt(np.nanmean(ttft**2))),
            }
        )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=None, help="fit (.nc); default: the shipped default fit")
    ap.add_argument("--silicon", default=str(SHARED), help="aiconfigurator silicon_sample.csv(.gz)")
    ap.add_argument("--out", default=str(HERE / "out" / "version_shift.json"))
    args = ap.parse_args(argv)
    idata = M.load_or_default(args.model)
    ds = idata[HS.HW_GROUP]
    rows = []
    print("1. kernels: canonical decode steps, vLLM 0.14 -> 0.19 (5 minor releases)")
    print(f"{'GPU':16s} {'RMS log change':>15s} {'per release':>12s}  " + "  ".join(f"batch {k:>7s}" for k in BATCH_BANDS))
    for gpu in [str(g) for g in ds.coords["gpu"].values]:
        hw = C.load_hardware(hardware_key(gpu))
        sh = HS.version_shift(ds, gpu, hw)
        bands = by_batch(ds, gpu, hw)
        rows.append({**sh, "rms_by_batch": bands})
        print(
            f"{gpu:16s} {sh['rms_log_change'][0]:15.3f} {sh['per_release_sd']:12.4f}  "
            + "  ".join(f"{bands[k]:13.3f}" for k in BATCH_BANDS)
        )
    ref = M.attr_json(idata, HS.HW_GROUP, {}).get("reference")
    sd1 = next(r["per_release_sd"] for r in rows if r["gpu"] == ref)
    pairs = []
    if Path(args.silicon).exists():
        pairs = silicon_pairs(Path(args.silicon))
        print("\n2. end to end (silicon_sample.csv): the same model, GPU, precision and shapes under two vLLM releases")
        print(
            f"{'GPU':9s} {'model':24s} {'prec':5s} {'from -> to':24s} {'rel':>4s} {'shapes':>6s} "
            f"{'TPOT RMS':>9s} {'TPOT median':>11s} {'TTFT RMS':>9s} {'kernel SD':>9s}"
        )
        for p in pairs:
            k = sd1 * np.sqrt(p["releases"]) if p["releases"] else float("nan")
            p["kernel_sd"] = None if not np.isfinite(k) else float(k)
            print(
                f"{p['gpu']:9s} {p['model'][-24:]:24s} {p['precision']:5s} {p['from'] + ' -> ' + p['to'][:12]:24s} "
                f"{str(p['releases']):>4s} {p['shapes']:6d} {p['tpot_rms_log_change']:9.3f} {p['tpot_median_log_change']:11.3f} "
                f"{p['ttft_rms_log_change']:9.3f} {k:9.3f}"
            )
    else:
        print(f"\n2. end to end: {args.silicon} not found, skipped")
    out = {"settings": vars(args), "reference": ref, "kernels": rows, "silicon_pairs": pairs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
