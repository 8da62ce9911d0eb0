"""Predictions on GPUs the fit has not seen, against the datasheet transfer BLIS makes.

No measured A100 / L40S / H200 run exists in the bundled data, so this cannot score accuracy. It
checks the *mechanism* of a prediction for an unseen GPU (``model.coefficient_draws`` with a new
hardware level): for each trained deployment (model x TP) and each GPU datasheet under
``specs/hardware``, the same workload (``--spec``'s, 5 req/s for 60 s of the codegen profile by
default) is simulated

- with the fit's draws for that GPU (``pred``: the median across draws, and the 90% interval of
  the mean);
- with the fitted H100 coefficients of the model's class used as they are on the new datasheet
  (``ref``: the group's coefficients, no hardware deviation, no deployment factor): the
  "trained physics from the datasheet" transfer that BLIS reports 15.7% (A100) and 13.3% (L40S)
  E2E error with.

The ratio pred / ref says whether the Bayesian point stays on the physics transfer; the interval
width says how much the unknown GPU deviation widens it.

    python benchmarks/hardware_transfer.py [--draws 100] [--out benchmarks/out/hardware_transfer.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bayeslat import config as SP
from bayeslat import features as F
from bayeslat import model as M
from bayeslat import simulate as S

HERE = Path(__file__).resolve().parent
METRICS = ("ttft_ms", "itl_ms", "e2e_ms")
DEPLOYMENTS = {  # model spec, TP: the four trained deployments
    "llama-2-7b TP1": ("llama-2-7b-hf", 1),
    "llama-2-70b TP4": ("llama-2-70b-hf", 4),
    "mixtral-8x7b TP2": ("mixtral-8x7b-v0.1", 2),
    "codellama-34b TP2": ("codellama-34b-instruct-hf", 2),
}
GPUS = ("h100-sxm", "h200-sxm", "h100-nvl", "a100-sxm-80gb", "l40s")


def case(spec: dict, model_key: str, tp: int, gpu: str):
    model = SP.load_model(model_key)
    hw = SP.load_hardware(gpu)
    srv0 = {k: v for k, v in spec["server"].to_dict().items() if k != "source" and v is not None}
    server = SP.load_server({**srv0, "tensor_parallel": tp})
    SP.validate_deployment(model, server)
    ctx = F.feature_context(model, hw, server)
    srv = S.sim_server(server, SP.kv_blocks(model, hw, server), SP.cpu_kv_blocks(model, server))
    return model, hw, ctx, srv


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spec", default=str(HERE.parent / "specs" / "examples" / "llama-2-7b-h100-codegen.yaml"))
    ap.add_argument("--model", default=None, help="fit (.nc); default: the shipped default fit")
    ap.add_argument("--draws", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "out" / "hardware_transfer.json"))
    args = ap.parse_args(argv)
    idata = M.load_or_default(args.model)
    spec = S.load_spec(args.spec)
    t0 = time.perf_counter()
    rows = []
    for name, (model_key, tp) in DEPLOYMENTS.items():
        for gpu in GPUS:
            try:
                model, hw, ctx, srv = case(spec, model_key, tp, gpu)
            except Exception as e:  # does not fit on the GPU: reported, not skipped silently
                rows.append({"deployment": name, "gpu": gpu, "error": str(e)})
                print(f"{name:18s} {gpu:14s} not run: {e}")
                continue
            cls = model.model_class
            cd = M.coefficient_draws(
                idata, hw.name, cls, n=args.draws, seed=args.seed, deployment=F.deployment_key(ctx, hw.name), tensor_parallel=tp
            )
            ref = M.coefficient_draws(idata, "H100 SXM", cls, n=args.draws, seed=args.seed, new_run=False)
            p = S.posterior_predictive(spec["workload"], ctx, srv, cd, seed=args.seed)
            r = S.posterior_predictive(spec["workload"], ctx, srv, ref, seed=args.seed)
            row = {
                "deployment": name,
                "gpu": hw.name,
                "new_levels": list(cd.new_levels),
                "class_from": list(getattr(cd, "class_from", [])),
                "kv_blocks": int(srv["kv_blocks"]),
            }
            for m in METRICS:
                lo, hi = p[m]["mean_interval90"]
                row[m] = {
                    "pred": p[m]["mean"],
                    "ref": r[m]["mean"],
                    "pred_over_ref": p[m]["mean"] / r[m]["mean"],
                    "interval90": [lo, hi],
                    "rel_width90": (hi - lo) / p[m]["mean"],
                }
            rows.append(row)
            print(
                f"{name:18s} {hw.name:14s} "
                + "  ".join(
                    f"{m[:-3]} {row[m]['pred']:8.1f} (ref {row[m]['ref']:8.1f}, x{row[m]['pred_over_ref']:.2f}, "
                    f"width {100 * row[m]['rel_width90']:.0f}%)"
                    for m in METRICS
                ),
                flush=True,
            )
    ok = [r for r in rows if "error" not in r and r["new_levels"]]
    summary = {
        m: {
            "median_pred_over_ref_new_gpu": float(np.median([r[m]["pred_over_ref"] for r in ok])) if ok else None,
            "max_abs_log_pred_over_ref_new_gpu": float(np.max([abs(np.log(r[m]["pred_over_ref"])) for r in ok])) if ok else None,
            "median_rel_width90_new_gpu": float(np.median([r[m]["rel_width90"] for r in ok])) if ok else None,
            "median_rel_width90_h100": float(
                np.median([r[m]["rel_width90"] for r in rows if "error" not in r and not r["new_levels"]])
            ),
        }
        for m in METRICS
    }
    out = {
        "config": {
            "spec": str(Path(args.spec).name),
            "draws": args.draws,
            "seed": args.seed,
            "model": args.model or "default",
            "data_hash": str(idata.attrs.get("data_hash", "")),
        },
        "rows": rows,
        "summary": summary,
        "wall_s": time.perf_counter() - t0,
    }
    print(json.dumps(summary, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
