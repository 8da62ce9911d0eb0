"""Physics priors of the decode load terms from real kernel sums (``DEFAULT_PRIORS["beta_lognormal"]``).

The step model's GPU-bound decode features are roofline times: ``decode_compute`` (decode FLOPs /
peak), ``weight_load`` (weight bytes / bandwidth), ``decode_kv`` (KV bytes / bandwidth),
``tp_comm`` (all-reduce bytes / link bandwidth), plus per-layer and per-collective counts. On the
bundled runs alone ``decode_compute`` is not identified (the default fit prunes it to ~0): its
column is nearly proportional to the batch, like the request and context terms. The kernels
identify it: a decode step's GEMMs get slower with the batch once m passes the point where the
weights stop being the bound, which is a FLOP effect.

Here the decode step's kernel sum (:func:`bayeslat.data.kernels.decode_step_sum`) of every bundled
dense / MoE BF16 model spec at every TP degree that shards it, batch 1-256 and contexts
256 / 1,024 / 4,096, on the H100 (the GPU of the step rows, vLLM 0.14), is regressed on those
features by non-negative least squares on the relative scale (each row divided by its time). The
coefficients are the kernels' efficiency multipliers in the step model's own units; their spread
over bootstrap resamples of the model specs is printed next to them.

    python benchmarks/kernel_step_priors.py [--gpu h100_sxm] [--out benchmarks/out/kernel_step_priors.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

from bayeslat import config as C
from bayeslat import features as F
from bayeslat.data import kernels as K
from bayeslat.deployment import resolve
from bayeslat.errors import SpecError

HERE = Path(__file__).resolve().parent
TERMS = ("decode_compute", "weight_load", "decode_kv", "tp_comm", "layer_overhead", "tp_sync_overhead")
BATCH = np.array([1, 2, 4, 8, 16, 32, 64, 96, 128, 192, 256], dtype=float)
CONTEXTS = (256.0, 1024.0, 4096.0)


def rows(df, gpu: str, version: str):
    X, y, groups = [], [], []
    for key in sorted(p.name for p in (C.files.specs_dir() / "models").iterdir()):
        m = C.load_model(key)
        if m.weight_bytes != 2.0 or m.kv_lora_rank:  # BF16 GEMM tables; MLA attention is not in them
            continue
        for tp in (1, 2, 4, 8):
            try:
                dep = resolve(m, K.datasheet(gpu), {"tensor_parallel": tp}, kv="optional")
                for c in CONTEXTS:
                    t = K.decode_step_sum(df, m, gpu, version, tp, BATCH, c)["total"]
                    stats = np.zeros((len(BATCH), F.N_STATS))
                    stats[:, F.S["n_decode"]] = BATCH
                    stats[:, F.S["decode_ctx_tokens"]] = BATCH * (c + 1)
                    x, _ = F.step_features(stats, dep.ctx)
                    X.append(x[:, [F.B[n] for n in TERMS]])
                    y.append(t)
                    groups += [key] * len(BATCH)
            except SpecError:
                continue  # TP does not shard this model, or the kernel grid lacks a shape
    return np.vstack(X), np.concatenate(y), np.asarray(groups)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gpu", default="h100_sxm")
    ap.add_argument("--version", default="0.14")
    ap.add_argument("--boot", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "out" / "kernel_step_priors.json"))
    args = ap.parse_args(argv)
    X, y, g = rows(K.load(), args.gpu, args.version)
    A = X / y[:, None]
    coef, _ = nnls(A, np.ones(len(y)))
    resid = A @ coef - 1.0
    models = np.unique(g)
    rng = np.random.default_rng(args.seed)
    boot = []
    for _ in range(args.boot):
        pick = rng.choice(models, size=len(models), replace=True)
        idx = np.concatenate([np.flatnonzero(g == m) for m in pick])
        boot.append(nnls(A[idx], np.ones(len(idx)))[0])
    boot = np.asarray(boot)
    print(
        f"{len(y)} decode steps of {len(models)} model specs on {args.gpu} (vLLM {args.version}); relative RMS {np.sqrt(np.mean(resid**2)):.3f}"
    )
    print(f"{'term':18s} {'coef':>8s} {'boot 5%':>8s} {'boot 95%':>8s}")
    out = {
        "settings": vars(args),
        "models": models.tolist(),
        "rows": len(y),
        "rel_rms": float(np.sqrt(np.mean(resid**2))),
        "terms": {},
    }
    for i, t in enumerate(TERMS):
        lo, hi = np.quantile(boot[:, i], [0.05, 0.95])
        out["terms"][t] = {"coef": float(coef[i]), "boot_5": float(lo), "boot_95": float(hi)}
        print(f"{t:18s} {coef[i]:8.3f} {lo:8.3f} {hi:8.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
