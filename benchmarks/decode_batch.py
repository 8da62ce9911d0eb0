"""Decode step time against batch size: the step model's prediction next to the sum of the real
kernels of that step, for each bundled deployment on each GPU with kernel data.

For batch b in 1..256 sequences of ``--context`` KV tokens each (no prefill):

- ``kernel``: :func:`bayeslat.data.kernels.decode_step_sum`, the measured GEMM, fused-MoE,
  decode-attention and all-reduce kernels of one step, interpolated on the kernel grid (vLLM 0.14;
  B200 at 0.19). Norms, RoPE, sampling and the host are not in it.
- ``pred``: the fit's mean step time (the median over coefficient draws of the group, regime of the
  step, no run factor), and ``pred_gpu`` its GPU-bound part: the roofline features (compute,
  weight loading, KV reads, all-reduce bytes), what the kernels time.

The slope is the secant (t(256) - t(1)) / 255 in ms per sequence; ``ratio`` = slope of ``pred_gpu`` /
slope of ``kernel`` (1 = the load term matches the kernels); ``step ratio`` = slope of ``pred`` / slope
of ``kernel``, the whole step's, whose per-token software cost (``context_overhead``) also grows
with the batch and is not in any kernel. A batch whose KV does not fit the GPU
at that TP is kept (it is arithmetic on the kernel grid) and flagged; the ``feasible`` ratios take
the secant from 1 to the largest grid batch whose KV fits (no server runs the others).

    python benchmarks/decode_batch.py [--model FIT.nc] [--context 1024] [--out benchmarks/out/decode_batch.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bayeslat import config as C
from bayeslat import features as F
from bayeslat import model as M
from bayeslat.data import kernels as K
from bayeslat.deployment import resolve

HERE = Path(__file__).resolve().parent
DEPLOYMENTS = {
    "llama-2-7b TP1": ("llama-2-7b-hf", 1),
    "llama-2-70b TP4": ("llama-2-70b-hf", 4),
    "mixtral-8x7b TP2": ("mixtral-8x7b-v0.1", 2),
    "codellama-34b TP2": ("codellama-34b-instruct-hf", 2),
}
GPUS = {"a100_sxm": "0.14", "l40s": "0.14", "h100_sxm": "0.14", "h200_sxm": "0.14", "b200_sxm": "0.19"}
BATCH = np.array([1, 2, 4, 8, 16, 32, 64, 128, 192, 256], dtype=float)
GPU_FEATURES = ("prefill_compute", "decode_compute", "weight_load", "tp_comm", "prefill_kv", "decode_kv", "moe_dispatch")


def predicted(idata, dep, batch, context, draws, seed):
    stats = np.zeros((len(batch), F.N_STATS))
    stats[:, F.S["n_decode"]] = batch
    stats[:, F.S["decode_ctx_tokens"]] = batch * (context + 1)
    X, regime = F.step_features(stats, dep.ctx)
    cd = M.coefficient_draws(
        idata, dep.hardware.name, dep.model_class, n=draws, seed=seed, new_run=False, tensor_parallel=dep.server.tensor_parallel
    )
    b = cd.beta[:, regime, :]  # (D, n, F)
    gpu = np.isin(np.asarray(F.BETA_NAMES), GPU_FEATURES)
    total = (X[None] * b).sum(axis=2)
    gpu_part = (X[None] * b * gpu).sum(axis=2)
    return total, gpu_part, cd.new_levels


def slope(t, batch):
    return (t[..., -1] - t[..., 0]) / (batch[-1] - batch[0])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=None, help="fit (.nc); default: the shipped default fit")
    ap.add_argument("--context", type=float, default=1024.0)
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "out" / "decode_batch.json"))
    ap.add_argument("--figure", default=None, help="write the figure (PNG) here")
    args = ap.parse_args(argv)
    idata = M.load_or_default(args.model)
    df = K.load()
    rows = []
    print(f"decode step, {args.context:.0f} KV tokens per sequence; slope = ms per extra sequence (1 -> 256)")
    print(
        f"{'deployment':18s} {'gpu':9s} {'kernel t1/t256':>15s} {'pred t1/t256':>15s} {'kernel slope':>12s} {'pred_gpu slope':>14s} {'ratio':>6s} {'90% of ratio':>14s} {'step ratio':>10s}"
    )
    for name, (mkey, tp) in DEPLOYMENTS.items():
        model = C.load_model(mkey)
        for gpu, ver in GPUS.items():
            hw = K.datasheet(gpu)
            dep = resolve(model, hw, {"tensor_parallel": tp}, kv="optional")
            ks = K.decode_step_sum(df, model, gpu, ver, tp, BATCH, args.context)
            tot, gpart, new = predicted(idata, dep, BATCH, args.context, args.draws, args.seed)
            k_sl = float(slope(ks["total"], BATCH))
            r = slope(gpart, BATCH) / k_sl
            r_step = slope(tot, BATCH) / k_sl
            fits = dep.kv_blocks * dep.server.block_size / (args.context + 1) if dep.kv_blocks else 0.0
            # the batches a server of this deployment can hold at this context (at least 2 points)
            j = max(int(np.searchsorted(BATCH, fits, side="right")) - 1, 1)
            fk = (ks["total"][j] - ks["total"][0]) / (BATCH[j] - BATCH[0])
            rf = (gpart[:, j] - gpart[:, 0]) / (BATCH[j] - BATCH[0]) / fk
            rf_step = (tot[:, j] - tot[:, 0]) / (BATCH[j] - BATCH[0]) / fk
            row = {
                "deployment": name,
                "gpu": gpu,
                "hardware": hw.name,
                "vllm_version": ver,
                "kernel_ms": ks["total"].round(4).tolist(),
                "kernel_parts_ms": {k: v.round(4).tolist() for k, v in ks.items() if k != "total"},
                "pred_ms": np.median(tot, axis=0).round(4).tolist(),
                "pred_ms_90": np.quantile(tot, [0.05, 0.95], axis=0).round(4).tolist(),
                "pred_gpu_ms": np.median(gpart, axis=0).round(4).tolist(),
                "kernel_slope": k_sl,
                "pred_gpu_slope": float(np.median(slope(gpart, BATCH))),
                "pred_slope": float(np.median(slope(tot, BATCH))),
                "slope_ratio": float(np.median(r)),
                "slope_ratio_90": np.quantile(r, [0.05, 0.95]).tolist(),
                "step_slope_ratio": float(np.median(r_step)),
                "step_slope_ratio_90": np.quantile(r_step, [0.05, 0.95]).tolist(),
                "new_levels": list(new),
                "max_batch_kv_fits": round(fits, 1),
                "feasible_batch": float(BATCH[j]),
                "feasible_slope_ratio": float(np.median(rf)),
                "feasible_step_slope_ratio": float(np.median(rf_step)),
            }
            rows.append(row)
            print(
                f"{name:18s} {gpu:9s} {ks['total'][0]:6.2f}/{ks['total'][-1]:7.2f} {row['pred_ms'][0]:6.2f}/{row['pred_ms'][-1]:7.2f} "
                f"{k_sl:12.4f} {row['pred_gpu_slope']:14.4f} {row['slope_ratio']:6.2f} "
                f"[{row['slope_ratio_90'][0]:.2f}, {row['slope_ratio_90'][1]:.2f}] {row['step_slope_ratio']:10.2f}"
            )
    within = [abs(r["slope_ratio"] - 1) <= 0.10 for r in rows]
    within_step = [abs(r["step_slope_ratio"] - 1) <= 0.10 for r in rows]
    print(f"slope of pred_gpu within 10% of the kernel sums: {sum(within)} of {len(rows)}")
    print(f"slope of pred (whole step) within 10% of the kernel sums: {sum(within_step)} of {len(rows)}")
    feas = [abs(r["feasible_slope_ratio"] - 1) <= 0.10 for r in rows]
    feas_step = [abs(r["feasible_step_slope_ratio"] - 1) <= 0.10 for r in rows]
    print("over the batches whose KV fits the GPU (1 -> the largest grid batch that fits):")
    for r in rows:
        print(
            f"  {r['deployment']:18s} {r['gpu']:9s} up to {r['feasible_batch']:4.0f}: GPU terms {r['feasible_slope_ratio']:5.2f}, "
            f"step {r['feasible_step_slope_ratio']:5.2f}"
        )
    print(f"  GPU terms within 10%: {sum(feas)} of {len(rows)}; whole step: {sum(feas_step)} of {len(rows)}")
    out = {
        "settings": vars(args),
        "batch": BATCH.tolist(),
        "rows": rows,
        "within_10pct": int(sum(within)),
        "step_within_10pct": int(sum(within_step)),
        "feasible_within_10pct": int(sum(feas)),
        "feasible_step_within_10pct": int(sum(feas_step)),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    if args.figure:
        figure(out, args.figure)
    return 0


def figure(out: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    deps = list(DEPLOYMENTS)
    gpus = list(GPUS)
    fig, axes = plt.subplots(len(deps), len(gpus), figsize=(3.2 * len(gpus), 2.6 * len(deps)), squeeze=False)
    b = np.asarray(out["batch"])
    for r in out["rows"]:
        ax = axes[deps.index(r["deployment"]), gpus.index(r["gpu"])]
        ax.plot(b, r["kernel_ms"], "k-", label="kernel sum")
        ax.plot(b, r["pred_gpu_ms"], "C0--", label="pred (GPU terms)")
        ax.plot(b, r["pred_ms"], "C1-", label="pred (step)")
        lo, hi = np.asarray(r["pred_ms_90"])
        ax.fill_between(b, lo, hi, color="C1", alpha=0.2)
        ax.set_title(
            f"{r['deployment']} / {r['hardware']}\nslope ratio GPU terms {r['slope_ratio']:.2f}, step {r['step_slope_ratio']:.2f}",
            fontsize=8,
        )
        ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("batch (sequences)", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("decode step (ms)", fontsize=8)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    raise SystemExit(main())
