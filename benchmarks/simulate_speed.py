"""Simulator speed: steps/s, requests/s and seconds per posterior draw for the largest real run
(replayed) and a generated inference-perf profile.

    python benchmarks/simulate_speed.py [--run llama-2-7b-tp1-general] [--draws 3] [--out PATH]

The coefficients are illustrative (hand-set, Llama-2-7B on H100 scale, not a fit): the speed
depends on the number of steps, which the table reports. Compile time (first call, or loading
numba's on-disk cache) is reported separately.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from bayeslat import features as F
from bayeslat import simulate as S
from bayeslat.config import load_hardware, load_model, load_server
from bayeslat.data import datasets
from bayeslat.data import workload as W

# Llama-2-7B TP1 on H100 SXM, derived from the bundled specs (the real feature constants)
CTX = F.feature_context(load_model("llama-2-7b-hf"), load_hardware("h100-sxm"), load_server({"tensor_parallel": 1}))


def illustrative_draws(D: int, seed: int = 0):
    b = np.zeros((len(F.REGIMES), F.N_BETA))
    for k, v in {
        "prefill_compute": 1.3,
        "decode_compute": 1.0,
        "weight_load": 1.0,
        "prefill_kv": 1.0,
        "decode_kv": 0.6,
        "step_overhead": 1.5,
        "request_overhead": 2.0,
        "prefill_overhead": 0.5,
    }.items():
        b[:, F.B[k]] = v
    rng = np.random.default_rng(seed)
    beta = b[None] * np.exp(0.05 * rng.standard_normal((D, 1, F.N_BETA)))
    a = {"const": 5.0, "prompt_tokens": 2.0, "queue_depth": 1.0, "multiproc": 7.0}  # TP1 here: multiproc unused
    alpha = np.array([a[k] for k in F.ALPHA_NAMES])[None] * np.exp(0.05 * rng.standard_normal((D, F.N_ALPHA)))
    return {"beta": beta, "alpha": alpha, "sigma_rel": np.full(D, 0.05)}


def bench(name, w, srv, draws, n_draws):
    t0 = time.perf_counter()
    S.simulate(w.head(50), CTX, srv, draws["beta"][0], draws["alpha"][0])  # compile / load cache
    compile_s = time.perf_counter() - t0
    walls, steps, res = [], [], None
    for d in range(n_draws):
        t0 = time.perf_counter()
        res = S.simulate(w, CTX, srv, draws["beta"][d], draws["alpha"][d], step_noise=0.05, seed=d)
        walls.append(time.perf_counter() - t0)
        steps.append(res.summary["steps"])
    t0 = time.perf_counter()
    S.posterior_predictive(w, CTX, srv, draws, n_draws=n_draws, seed=0)
    pp_s = time.perf_counter() - t0
    wall = float(np.median(walls))
    st = int(np.median(steps))
    return {
        "workload": name,
        "requests": len(w),
        "sim_time_s": res.summary["sim_time_s"],
        "steps": st,
        "s_per_draw": wall,
        "kernel_s_per_draw": float(np.median([res.summary["sim_wall_s"]])),
        "steps_per_s": st / wall,
        "requests_per_s": len(w) / wall,
        "posterior_predictive_s": pp_s,
        "pp_draws": n_draws,
        "compile_or_cache_load_s": compile_s,
        "ttft_mean_ms": res.summary["ttft_ms"]["mean"],
        "itl_mean_ms": res.summary["itl_ms"]["mean"],
        "e2e_mean_ms": res.summary["e2e_ms"]["mean"],
        "preemptions": res.summary["preemptions"],
        "n_failed": res.summary["n_failed"],
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--run", default="llama-2-7b-tp1-general", help="bundled run to replay (default: a 16,800-request run)")
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--out", default=str(Path(__file__).parent / "out" / "simulate_speed.json"))
    a = p.parse_args(argv)
    info = datasets.run_info(a.run)
    srv = dict(info["server"])
    draws = illustrative_draws(max(a.draws, 1))
    rows = [
        bench(f"replay {info['run']}", W.from_run(a.run), srv, draws, a.draws),
        bench("generated (same profile)", W.from_inference_perf(info["profile"], seed=0), srv, draws, a.draws),
    ]
    hdr = f"{'workload':52s} {'requests':>8s} {'steps':>8s} {'s/draw':>7s} {'steps/s':>10s} {'req/s':>9s} {'pp s':>6s} {'compile':>7s}"
    print(hdr)
    for r in rows:
        print(
            f"{r['workload']:52s} {r['requests']:8d} {r['steps']:8d} {r['s_per_draw']:7.3f} {r['steps_per_s']:10.0f} "
            f"{r['requests_per_s']:9.0f} {r['posterior_predictive_s']:6.2f} {r['compile_or_cache_load_s']:7.2f}"
        )
    out = {
        "benchmark": "simulate_speed",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "server": srv,
        "coefficients": "illustrative (not a fit)",
        "rows": rows,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print("wrote", a.out)


if __name__ == "__main__":
    main()
