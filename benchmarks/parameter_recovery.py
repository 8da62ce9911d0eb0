"""Parameter recovery over repeated seeds: 90% interval coverage of known coefficients.

    python benchmarks/parameter_recovery.py [--seeds 0 1 2 3 4 5] [--draws 300 --tune 300]
        [--out benchmarks/out/parameter_recovery.json]

For each seed: simulate an ObsTable from known coefficients (``model.simulate_obs``: 3 groups,
H100 dense 250 rows, H100 MoE 200, A100 dense 60 (little data); group deviations, Student-t
noise), fit it (every feature fitted, every present beta term under the sparsity prior, as the
test ``test_fit_recovers_known_coefficients``), and count how often the 90% posterior interval of
each group's coefficients contains the truth (non-zero beta terms the group's rows exercise, and
alpha). Also the share of predicted time the truly-zero terms explain (ARD). Prints a table per
seed and pooled, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np


def one_seed(seed, draws, tune):
    from bayeslat import features as F
    from bayeslat import model as M

    obs, truth = M.simulate_obs(seed=seed)
    t0 = time.perf_counter()
    idata = M.fit(
        obs, draws=draws, tune=tune, chains=2, seed=seed, progressbar=False, priors={"exclude_features": [], "beta_lognormal": {}}
    )
    wall = time.perf_counter() - t0
    per_group = {}
    allhits = []
    for (h, c), tb in truth["beta"].items():
        cd = M.coefficient_draws(idata, h, c, new_run=False)
        m = (obs.hw == obs.hardware_levels.index(h)) & (obs.cls == obs.class_levels.index(c))
        informed = (obs.X[m] != 0).sum(0) >= 5
        lo, hi = np.quantile(cd.beta, [0.05, 0.95], axis=0)
        hb = ((lo <= tb) & (tb <= hi))[(tb > 0) & informed]
        alo, ahi = np.quantile(cd.alpha, [0.05, 0.95], axis=0)
        ha = (alo <= truth["alpha"][(h, c)]) & (truth["alpha"][(h, c)] <= ahi)
        hits = np.concatenate([hb, ha])
        per_group[f"{h}/{c}"] = {"rows": int(m.sum()), "n": int(hits.size), "coverage90": float(hits.mean())}
        allhits.append(hits)
    allhits = np.concatenate(allhits)
    mu = M.predict_mean(idata, obs).mean(0)
    zero = {}
    for f, v in M.TRUE_BETA_POP.items():
        if v == 0.0 and (obs.X[..., F.B[f]] > 0).any():
            beta = idata.posterior["beta"].sel(feature=f).mean(("chain", "draw")).values
            zero[f] = float(np.einsum("nr,nr->n", obs.X[..., F.B[f]], beta[obs.hw, obs.cls]).sum() / mu.sum())
    div = int(idata.sample_stats["diverging"].sum())
    return {
        "seed": seed,
        "rows": int(len(obs.y)),
        "wall_s": wall,
        "n": int(allhits.size),
        "hits": int(allhits.sum()),
        "coverage90": float(allhits.mean()),
        "groups": per_group,
        "zero_term_time_share": zero,
        "divergences": div,
    }


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    ap.add_argument("--draws", type=int, default=300)
    ap.add_argument("--tune", type=int, default=300)
    ap.add_argument("--out", default="benchmarks/out/parameter_recovery.json")
    a = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    res = []
    for s in a.seeds:
        res.append(one_seed(s, a.draws, a.tune))
        r = res[-1]
        print(
            f"seed {s}: coverage {r['coverage90']:.2f} ({r['hits']}/{r['n']}), groups "
            + ", ".join(f"{g} {v['coverage90']:.2f} ({v['rows']} rows)" for g, v in r["groups"].items())
            + f"; max zero-term share {max(r['zero_term_time_share'].values(), default=0):.3f}; {r['wall_s']:.0f} s",
            flush=True,
        )
    n, h = sum(r["n"] for r in res), sum(r["hits"] for r in res)
    groups = sorted({g for r in res for g in r["groups"]})
    pooled = {
        g: float(
            sum(r["groups"][g]["coverage90"] * r["groups"][g]["n"] for r in res if g in r["groups"])
            / sum(r["groups"][g]["n"] for r in res if g in r["groups"])
        )
        for g in groups
    }
    summary = {
        "seeds": len(res),
        "pooled_coverage90": h / n,
        "intervals": n,
        "per_group": pooled,
        "max_zero_term_time_share": max(max(r["zero_term_time_share"].values(), default=0) for r in res),
    }
    print(
        f"pooled 90% coverage {h / n:.3f} over {n} intervals and {len(res)} seeds; per group "
        + ", ".join(f"{g} {v:.2f}" for g, v in pooled.items())
        + f"; truly-zero terms explain at most {summary['max_zero_term_time_share']:.1%} of predicted time"
    )
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": vars(a), "seeds": res, "summary": summary}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
