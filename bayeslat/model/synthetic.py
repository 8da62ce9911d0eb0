"""Synthetic data from known coefficients (parameter-recovery tests and benchmarks):
:func:`simulate_obs` on the real feature kernel, with hand-built deployments (:func:`example_contexts`)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from bayeslat import features as F
from bayeslat.data.design import ObsTable
from bayeslat.model.priors import KINDS


# ---------------------------------------------------------------------------------------------
# Synthetic data (tests, benchmarks)
# ---------------------------------------------------------------------------------------------
def example_contexts() -> dict:
    """Three hand-built per-GPU FeatureContexts (roughly Llama-2-7B TP1 on H100/A100, Mixtral TP2 on H100)."""
    h100 = dict(peak_flops_per_us=989e6, hbm_bytes_per_us=3.35e6, link_bytes_per_us=4.5e5, pcie_bytes_per_us=6.4e4)
    a100 = dict(peak_flops_per_us=312e6, hbm_bytes_per_us=2.04e6, link_bytes_per_us=3.0e5, pcie_bytes_per_us=3.2e4)
    dense = dict(
        linear_flops_per_token=1.3e10,
        attn_flops_per_pair=5.2e5,
        lm_head_flops_per_seq=2.6e8,
        dense_weight_bytes=13.5e9,
        expert_weight_bytes=0.0,
        num_experts=0.0,
        experts_per_token=0.0,
        kv_bytes_per_token=524288.0,
        allreduce_bytes_per_token=0.0,
        dispatch_bytes_per_token=0.0,
        num_layers=32.0,
        num_moe_layers=0.0,
    )
    moe = dict(
        linear_flops_per_token=1.3e10,
        attn_flops_per_pair=2.6e5,
        lm_head_flops_per_seq=1.3e8,
        dense_weight_bytes=1.6e9,
        expert_weight_bytes=4.5e10,
        num_experts=8.0,
        experts_per_token=2.0,
        kv_bytes_per_token=65536.0,
        allreduce_bytes_per_token=524288.0,
        dispatch_bytes_per_token=0.0,
        num_layers=32.0,
        num_moe_layers=32.0,
    )
    return {
        ("H100 SXM", "dense"): F.FeatureContext(**h100, **dense),
        ("H100 SXM", "moe"): F.FeatureContext(**h100, **moe),
        ("A100 SXM", "dense"): F.FeatureContext(**a100, **dense),
    }


# population truth for synthetic data: some features truly zero although present in the data
TRUE_BETA_POP = {
    "prefill_compute": 0.6,
    "decode_compute": 0.0,
    "weight_load": 1.3,
    "tp_comm": 0.8,
    "prefill_kv": 0.0,
    "decode_kv": 1.5,
    "moe_dispatch": 0.0,
    "kv_offload": 0.0,
    "layer_overhead": 0.3,
    "request_overhead": 0.5,
    "moe_layer_overhead": 0.5,
    "step_overhead": 0.15,
    "prefill_overhead": 0.0,
    "tp_sync_overhead": 0.0,
    "context_overhead": 1.0,
}
TRUE_ALPHA_POP = {"const": 8.0, "prompt_tokens": 1.5, "queue_depth": 2.0, "multiproc": 3.0}


def _scaled_context(ctx, k: float):
    """A deeper/wider sibling of a deployment: per-layer quantities times ``k`` (layers rounded)."""
    d = ctx.to_dict()
    for name in (
        "linear_flops_per_token",
        "attn_flops_per_pair",
        "dense_weight_bytes",
        "expert_weight_bytes",
        "kv_bytes_per_token",
        "allreduce_bytes_per_token",
        "dispatch_bytes_per_token",
    ):
        d[name] *= k
    d["num_layers"] = round(d["num_layers"] * k)
    d["num_moe_layers"] = round(d["num_moe_layers"] * k * (0.9 if k > 1 else 1.0))
    return F.FeatureContext(**d)


def _random_batch(rng, prefill: bool, long_ctx: bool = False):
    n_dec = int(rng.integers(1, 160))
    ctx_hi = 16000 if long_ctx else 3000
    c_dec = rng.uniform(50, ctx_hi, size=n_dec)
    if prefill:
        n_pf = int(rng.integers(1, 5))
        t_pf = rng.integers(32, 2048, size=n_pf).astype(float)
        c_pf = rng.choice([0.0, 512.0, 1024.0], size=n_pf)
    else:
        n_pf, t_pf, c_pf = 0, np.zeros(0), np.zeros(0)
    new = np.concatenate([t_pf, np.ones(n_dec)])
    ctx = np.concatenate([c_pf, c_dec])
    isp = np.concatenate([np.ones(n_pf, bool), np.zeros(n_dec, bool)])
    return F.batch_stats(new, ctx, isp)


def simulate_obs(
    rows: dict | None = None,
    *,
    seed: int = 0,
    dev_sd=(0.15, 0.15, 0.1),
    noise=(0.05, 0.08),
    nu: float = 8.0,
    kind_mix=(0.6, 0.2, 0.1, 0.1),
    beta_pop=None,
    alpha_pop=None,
    runs_per_group: int = 1,
    run_sd=(0.0, 0.0),
    run_per_variant: bool = False,
):
    """Synthetic ObsTable from known coefficients and the real feature kernel on random batches.

    ``rows``: {(hardware, model_class): n_rows}; default 3 groups, the A100 one with little data.
    Returns ``(obs, truth)`` with ``truth = {"beta_pop", "alpha_pop", "beta": {group: (R, F)},
    "alpha": {group: (A,)}}``. Group deviations are drawn log-normally with ``dev_sd`` (hardware,
    class, regime); noise scale is ``s_abs + s_rel * mu / sqrt(n_steps)`` with ``noise = (s_abs, s_rel)``.
    ``runs_per_group > 1``: the rows of a group are dealt to that many runs of one deployment, each
    with a step-time factor ``exp(N(0, run_sd[0]))`` and a CPU-part factor ``exp(N(0, run_sd[1]))``
    (``truth["run_factors"]``: {run: (step, cpu)}; drawn from a separate stream, so the default
    output is unchanged). ``run_per_variant``: the rows of each model size of a group are a run
    (and a deployment) of their own, as in real data where a run serves one model; what
    :func:`bayeslat.data.obs.collapse` needs, since it bins within a run.
    """
    rng = np.random.default_rng(seed)
    ctxs = example_contexts()
    rows = rows or {("H100 SXM", "dense"): 250, ("H100 SXM", "moe"): 200, ("A100 SXM", "dense"): 60}
    hw_levels = tuple(dict.fromkeys(g[0] for g in rows))
    cls_levels = tuple(dict.fromkeys(g[1] for g in rows))
    bp = np.array([TRUE_BETA_POP[f] for f in F.BETA_NAMES]) if beta_pop is None else np.asarray(beta_pop, float)
    ap = np.array([TRUE_ALPHA_POP[f] for f in F.ALPHA_NAMES]) if alpha_pop is None else np.asarray(alpha_pop, float)
    R = len(F.REGIMES)
    dh = {h: rng.normal(0, dev_sd[0], F.N_BETA) for h in hw_levels}
    adh = {h: rng.normal(0, dev_sd[0], F.N_ALPHA) for h in hw_levels}
    # regime: one speed factor per regime shared by every feature and group, as in the model
    # (build_model). Per-(group, regime, feature) deviations are a structure the model leaves out
    # on purpose; simulated, they put 90% coverage at 0.73-0.78 over seeds
    # (benchmarks/parameter_recovery.py).
    dr = rng.normal(0, dev_sd[2], R)
    truth = {"beta_pop": bp, "alpha_pop": ap, "beta": {}, "alpha": {}, "run_factors": {}}
    cols = {k: [] for k in ("kind", "y", "X", "A", "n_steps", "hw", "cls", "run", "request")}
    rng_run = np.random.default_rng(seed + 99)
    rng_mp = np.random.default_rng(seed + 7)  # multi-process executor or not, per alpha row (own stream)
    deployments = {}
    for (h, c), nrow in rows.items():
        base = ctxs.get((h, c)) or ctxs[("H100 SXM", c)]
        # several model sizes per group (layers x k), so per-layer and per-step overheads separate
        variants = [_scaled_context(base, k) for k in (1.0, 1.5, 2.5)]
        if base.allreduce_bytes_per_token > 0:
            # and a TP = 1 sibling: at one TP degree the all-reduce calls (2 per layer) are exactly
            # proportional to the layers, so tp_sync_overhead could not separate from layer_overhead
            variants[1] = replace(variants[1], allreduce_bytes_per_token=0.0)
        beta = bp * np.exp(dh[h] + rng.normal(0, dev_sd[1], F.N_BETA) + dr[:, None])
        alpha = ap * np.exp(adh[h] + rng.normal(0, dev_sd[1], F.N_ALPHA))
        truth["beta"][(h, c)] = beta
        truth["alpha"][(h, c)] = alpha
        kinds = rng.choice(len(KINDS), size=nrow, p=np.asarray(kind_mix) / np.sum(kind_mix))
        for i, k in enumerate(kinds):
            if k == 0:
                stats = [_random_batch(rng, prefill=rng.random() < 0.5, long_ctx=rng.random() < 0.3)]
            elif k == 1:
                base_long = rng.random() < 0.3
                stats = [_random_batch(rng, prefill=False, long_ctx=base_long) for _ in range(int(rng.integers(4, 17)))]
            elif k == 2:
                stats = [_random_batch(rng, prefill=True) for _ in range(int(rng.integers(1, 4)))]
            else:
                stats = []
            Xr = np.zeros((R, F.N_BETA))
            if stats:
                vi = int(rng.integers(len(variants)))
                ctx = variants[vi]
                feats, reg = F.step_features(np.array(stats), ctx)
                for r in range(R):
                    Xr[r] = feats[reg == r].sum(axis=0)
            Ar = np.zeros(F.N_ALPHA)
            if k in (2, 3):
                Ar = F.alpha_features(
                    np.array([rng.integers(50, 8000)]), np.array([rng.integers(0, 300)]), float(rng_mp.random() < 0.5)
                )[0]
            run = f"sim-{h}-{c}"
            if run_per_variant:
                # (alpha rows have no model variant: they go with the group's first run)
                run = f"sim-{h}-{c}-v{vi if stats else 0}"
                deployments[run] = run
            fb = fa = 1.0
            if runs_per_group > 1:
                run = f"sim-{h}-{c}-r{i % runs_per_group}"
                if run not in truth["run_factors"]:
                    truth["run_factors"][run] = tuple(np.exp(rng_run.normal(0.0, run_sd)).tolist())
                    deployments[run] = f"sim-{h}-{c}"
                fb, fa = truth["run_factors"][run]
            mu = float(fb * (Xr * beta).sum() + fa * (Ar @ alpha))
            ns = float(len(stats))
            sc = noise[0] + noise[1] * mu / np.sqrt(max(ns, 1.0))
            cols["kind"].append(k)
            cols["y"].append(mu + sc * rng.standard_t(nu))
            cols["X"].append(Xr)
            cols["A"].append(Ar)
            cols["n_steps"].append(ns)
            cols["hw"].append(hw_levels.index(h))
            cols["cls"].append(cls_levels.index(c))
            cols["run"].append(run)
            cols["request"].append(i if k >= 2 else -1)
    n_rows = len(cols["y"])
    obs = ObsTable(
        kind=np.array(cols["kind"], dtype=np.int64),
        y=np.array(cols["y"]),
        X=np.array(cols["X"]),
        A=np.array(cols["A"]),
        n_steps=np.array(cols["n_steps"], dtype=np.float64),
        hw=np.array(cols["hw"], dtype=np.int64),
        cls=np.array(cols["cls"], dtype=np.int64),
        run=np.array(cols["run"]),
        request=np.array(cols["request"], dtype=np.int64),
        t_frac=rng.uniform(0.0, 1.0, n_rows),
        hardware_levels=tuple(hw_levels),
        class_levels=tuple(cls_levels),
        meta={"synthetic": True, "seed": seed} | ({"deployments": deployments} if deployments else {}),
    )
    return obs, truth
