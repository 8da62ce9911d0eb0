"""The between-deployment and between-run spread: the cut stages, exact on grids, that attach it
to a fit (:func:`estimate_deployment_spread` from :func:`deployment_residuals` or held-out
deployments, :func:`attach_run_spread` from :func:`run_residuals`; :func:`attach_deployment_spread`
carries a spread over from another fit) and the draws a prediction for a new deployment or run
takes of it (:func:`deployment_spread_draws`, :func:`run_spread_draws`, probe updates:
:func:`update_weights`, :func:`run_update_factors`)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import xarray as xr

from bayeslat import features as F
from bayeslat.errors import SpecError
from bayeslat.model.io import attr_json, put_group
from bayeslat.model.priors import KINDS, _merge_priors
from bayeslat.model.sample import sampler_health

# Run spread (attach_run_spread): how much a new run of a configuration differs from the runs the
# fit saw, as one multiplicative factor on the step time and one on the CPU / queueing (alpha)
# part. HalfNormal prior scales of the two sigmas (a fit of one run per deployment has only
# these), the sd of the deployment offset they are measured around, the grid and the draws kept.
RUN_SPREAD = {
    "prior_step": 0.05,
    "prior_alpha": 0.3,
    "deployment_sd": 2.0,
    "grid": 600,
    "draws": 1000,
    "min_step_rows": 20,
    "min_ttft_rows": 10,
    "boot": 200,
}


# Deployment spread (estimate_deployment_spread): grid points over log sigma and draws kept.
DEPLOYMENT_SPREAD = {"grid": 800, "draws": 1000}


def _flat(post, name):
    v = post[name]
    return v.stack(_s=("chain", "draw")).transpose("_s", ...).values


def _deployment_factors(ds, coord: str, deployment: str, sel):
    """(step, CPU) log-factor draws of ``deployment`` in ``ds`` (dev_dep / dev_alpha_dep along
    ``coord``), or None when it has none. The step factor is (D, 1), or (D, N_BETA) when
    ``dev_dep`` has a ``step_part`` dim (a probe update: fixed and load parts of the step time,
    ``features.STEP_PARTS``)."""
    if ds is None or "dev_dep" not in ds or coord not in ds.coords:
        return None
    keys = [str(v) for v in ds.coords[coord].values]
    if deployment not in keys:
        return None
    j = keys.index(deployment)
    fb = _flat(ds, "dev_dep")[sel][:, j]
    if fb.ndim == 2:  # (D, part)
        parts = [str(v) for v in ds.coords["step_part"].values]
        fb = np.where(F.FIXED_STEP_MASK[None, :], fb[:, [parts.index("fixed")]], fb[:, [parts.index("load")]])
    else:
        fb = fb[:, None]
    return fb, _flat(ds, "dev_alpha_dep")[sel][:, j]


def update_weights(idata, deployment: str) -> np.ndarray | None:
    """Probabilities of the flattened posterior draws after a probe update of ``deployment``
    (``deployment_update.draw_weight``, :func:`bayeslat.probe.update_deployment`), or None."""
    if "deployment_update" not in idata.groups():
        return None
    ds = idata["deployment_update"]
    keys = [str(v) for v in ds.coords["probe_deployment"].values]
    if "draw_weight" not in ds or deployment not in keys:
        return None
    j = keys.index(deployment)
    w = np.clip(_flat(ds, "draw_weight")[:, j].astype(np.float64), 0.0, None)
    return w / w.sum() if w.sum() > 0 else None


def run_spread_draws(idata, n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """(sigma_run_step, sigma_run_alpha) draws (n each), the between-run spread of a new run of a
    trained deployment, in :func:`coefficient_draws`'s order: ``sigma_run`` (both parts) when the
    fit has it, else group ``run_spread`` (:func:`attach_run_spread`), else the scales of
    ``RUN_SPREAD``'s priors."""
    post = idata.posterior
    if "sigma_run" in post:
        v = _flat(post, "sigma_run")
        v = v[rng.integers(0, len(v), n)]
        return v, v
    if "run_spread" in idata.groups():
        rs = idata["run_spread"]
        k = rng.integers(0, rs.sizes["draw"] * rs.sizes["chain"], n)
        return _flat(rs, "sigma_run_step")[k], _flat(rs, "sigma_run_alpha")[k]
    return np.full(n, float(RUN_SPREAD["prior_step"])), np.full(n, float(RUN_SPREAD["prior_alpha"]))


def run_update_factors(idata, deployment: str, sel):
    """(log step factor, log CPU factor), each (len(sel),), of a probe update of a trained
    deployment read as a run (:func:`bayeslat.probe.update_deployment`, ``level``): they
    replace a new run's factors in predictions of that deployment; None without one."""
    if "deployment_update" not in idata.groups():
        return None
    ds = idata["deployment_update"]
    if "dev_run_step" not in ds or "probe_deployment" not in ds.coords:
        return None
    keys = [str(v) for v in ds.coords["probe_deployment"].values]
    if deployment not in keys:
        return None
    j = keys.index(deployment)
    return _flat(ds, "dev_run_step")[sel][:, j], _flat(ds, "dev_run_alpha")[sel][:, j]


def deployment_spread_draws(idata, n: int, rng) -> tuple[np.ndarray, np.ndarray] | None:
    """(sigma_dep, sigma_alpha_dep) draws (n each) for a new deployment: from the posterior when
    the deployment level was fit ("fit"), from the attached cut fit ("spread", group
    ``deployment_spread``), else from the prior; None when the level is "off"."""
    post = idata.posterior
    if "sigma_dep" in post:
        src = post
    elif "deployment_spread" in idata.groups():
        src = idata["deployment_spread"]
    else:
        pri = attr_json(idata, "priors", {}) or {}
        if pri.get("deployment_level", "off") == "off" or not pri.get("sigma_dep"):
            return None
        sd = pri.get("sigma_log_sd", 0.5)
        return (
            np.exp(np.log(pri["sigma_dep"]) + sd * rng.standard_normal(n)),
            np.exp(np.log(pri.get("sigma_alpha_dep", pri["sigma_dep"])) + sd * rng.standard_normal(n)),
        )
    sb, sa = _flat(src, "sigma_dep"), _flat(src, "sigma_alpha_dep")
    i = rng.choice(len(sb), size=n, replace=n > len(sb))
    return sb[i], sa[i]


def trained_deployment(idata, key: str) -> bool:
    """Whether the fit was trained on deployment ``key``: a level of its deployment factors ("fit"
    mode) or listed in its attrs ``deployments``."""
    post = idata.posterior
    return ("deployment" in post.coords and key in [str(v) for v in post.coords["deployment"].values]) or key in (
        attr_json(idata, "deployments", []) or []
    )


def attach_deployment_spread(idata, spread_idata, info: dict | None = None):
    """Attach the sigma_dep / sigma_alpha_dep draws of another fit to ``idata`` as group
    ``deployment_spread``: the group of a fit that has one (carried over with its record, as a
    probe refit does), or the posterior of a fit with the deployment level ("fit" mode, with its
    sampler record). Returns ``idata``."""
    carried = "deployment_spread" in spread_idata.groups()  # a fit with an attached spread: carry it over
    sp = spread_idata["deployment_spread"] if carried else spread_idata.posterior
    if "sigma_dep" not in sp:
        raise SpecError("the spread fit has no sigma_dep (fit it with priors={'deployment_level': 'fit'})", field="spread_idata")
    keep = ["sigma_dep", "sigma_alpha_dep"] + [v for v in ("dev_dep", "dev_alpha_dep") if v in sp]
    ds = xr.Dataset({v: sp[v] for v in keep})
    put_group(idata, "deployment_spread", ds)
    meta = (
        (attr_json(spread_idata, "deployment_spread", {}) or {})
        if carried
        else {
            "data_hash": spread_idata.attrs.get("data_hash"),
            "sampler": attr_json(spread_idata, "sampler"),
            "sampling_seconds": spread_idata.attrs.get("sampling_seconds"),
            "divergences": (
                int(spread_idata.sample_stats["diverging"].sum())
                if "sample_stats" in spread_idata.groups() and "diverging" in spread_idata.sample_stats
                else None
            ),
        }
    )
    if not carried:
        # the spread fit's sample stats are not kept: what diagnose checks of them is recorded here
        # (its divergences over every draw too: the stats it keeps are thinned)
        meta |= sampler_health(spread_idata)
        if spread_idata.attrs.get("divergences_all_draws") is not None:
            meta["divergences_all_draws"] = int(spread_idata.attrs["divergences_all_draws"])
    idata.attrs["deployment_spread"] = json.dumps(meta | (info or {}))
    return idata


def _row_means(idata) -> tuple[np.ndarray, np.ndarray]:
    """(step part, CPU part) of the posterior-mean prediction of every training row of a fit
    (group coefficients, times the fitted deployment factors where the fit has them)."""
    post, cd = idata.posterior, idata.constant_data
    beta = post["beta"].mean(("chain", "draw")).values
    alpha = post["alpha"].mean(("chain", "draw")).values
    hw, cls = cd["hw"].values.astype(int), cd["cls"].values.astype(int)
    mub = np.einsum("nrf,nrf->n", cd["X"].values, beta[hw, cls])
    mua = np.einsum("na,na->n", cd["A"].values, alpha[hw, cls])
    if "dev_dep" in post and "deployment" in cd:
        keys = [str(v) for v in post.coords["deployment"].values]
        j = np.array([keys.index(str(k)) if str(k) in keys else -1 for k in cd["deployment"].values])
        db = np.exp(post["dev_dep"].mean(("chain", "draw")).values)
        da = np.exp(post["dev_alpha_dep"].mean(("chain", "draw")).values)
        mub = mub * np.where(j >= 0, db[j], 1.0)
        mua = mua * np.where(j >= 0, da[j], 1.0)
    return mub, mua


def _weighted_quantile(v, w, p):
    """The ``p`` quantile of values ``v`` under (unnormalised) weights ``w``."""
    o = np.argsort(v)
    c = np.cumsum(w[o])
    return float(v[o][min(np.searchsorted(c, p * c[-1]), len(v) - 1)])


def _weighted_median(v, w):
    return _weighted_quantile(v, w, 0.5)


def _log_factors(y, mu_step, mu_cpu, kind, m, rng, w=None) -> dict:
    """Log factors of the rows ``m`` (module ``run_residuals``): ``step`` = log(sum y / sum mu)
    of the step and window rows and ``alpha`` = log f, ``y ~ mu_step + f mu_cpu`` on the TTFT rows
    (a weighted median), each with a bootstrap standard error; NaN below ``RUN_SPREAD``'s row
    counts. ``w``: the raw rows each row stands for (``n_rows`` of a bin mean; None: 1), so that
    the sums and the median are those of the raw rows."""
    cfg = RUN_SPREAD
    w = np.ones(len(y)) if w is None else np.asarray(w, dtype=np.float64)
    row = {"step": np.nan, "step_se": np.nan, "alpha": np.nan, "alpha_se": np.nan}
    s = m & (kind <= 1) & (mu_step + mu_cpu > 0)
    ys, ms = (y * w)[s], ((mu_step + mu_cpu) * w)[s]
    row["step_rows"] = int(s.sum())
    if s.sum() >= cfg["min_step_rows"]:
        row["step"] = float(np.log(ys.sum() / ms.sum()))
        b = rng.integers(0, len(ys), (cfg["boot"], len(ys)))
        row["step_se"] = float(np.std(np.log(ys[b].sum(1) / ms[b].sum(1))))
    t = m & (kind == KINDS.index("ttft")) & (mu_cpu > 0)
    row["ttft_rows"] = int(t.sum())
    if t.sum() >= cfg["min_ttft_rows"]:
        ratio, wt = (y[t] - mu_step[t]) / mu_cpu[t], mu_cpu[t] * w[t]
        f = [_weighted_median(ratio, wt)]
        for _ in range(cfg["boot"]):
            i = rng.integers(0, len(ratio), len(ratio))
            f.append(_weighted_median(ratio[i], wt[i]))
        f = np.log(np.maximum(np.asarray(f), 0.05))
        row["alpha"], row["alpha_se"] = float(f[0]), float(np.std(f[1:]))
    return row


def _n_rows(cd) -> np.ndarray | None:
    """The raw rows each stored row stands for (None: a fit of raw rows)."""
    return cd["n_rows"].values if "n_rows" in cd else None


def run_residuals(idata, seed: int = 0) -> pd.DataFrame:
    """Per training run of a fit: its deployment and how far its rows sit from the fit, as log
    factors with bootstrap standard errors. ``step``: log(sum y / sum mu) of its step and window
    rows; ``alpha``: the log of the factor f on the CPU part that best explains its TTFT rows,
    ``y ~ mu_step + f mu_cpu`` in absolute error (a weighted median, robust to the queueing
    outliers of TTFT rows); NaN where the run has fewer rows than ``RUN_SPREAD`` asks."""
    cd = idata.constant_data
    y = idata.observed_data["y"].values
    kind = cd["kind"].values.astype(int)
    run = cd["run"].values.astype(str)
    dep = cd["deployment"].values.astype(str) if "deployment" in cd else run
    mub, mua = _row_means(idata)
    rng = np.random.default_rng(seed + 11)
    out = []
    for r in np.unique(run):
        m = run == r
        out.append({"run": r, "deployment": dep[m][0]} | _log_factors(y, mub, mua, kind, m, rng, _n_rows(cd)))
    return pd.DataFrame(out)


def _spread_grid_posterior(e, se, groups, prior_scale: float, dep_sd: float, n_grid: int):
    """Grid posterior of sigma in ``e_r = d_g + u_r``, ``u_r ~ N(0, sigma)``, ``e_r`` measured with sd
    ``se_r``, ``d_g ~ N(0, dep_sd)`` integrated out, sigma ~ HalfNormal(prior_scale). Returns
    (grid, probabilities)."""
    grid = np.linspace(0.0, 6.0 * prior_scale, n_grid + 1)[1:]
    logp = -0.5 * (grid / prior_scale) ** 2
    for g in np.unique(groups):
        m = groups == g
        k = int(m.sum())
        for i, sg in enumerate(grid):
            C = dep_sd**2 * np.ones((k, k)) + np.diag(sg**2 + se[m] ** 2)
            sign, logdet = np.linalg.slogdet(C)
            logp[i] += -0.5 * (logdet + e[m] @ np.linalg.solve(C, e[m]))
    p = np.exp(logp - logp.max())
    return grid, p / p.sum()


def _one_chain(ds: dict, n_draws: int) -> xr.Dataset:
    """A dataset of grid draws ({name: (("chain", "draw"), (1, n_draws) array)}) as one chain."""
    return xr.Dataset(ds, coords={"chain": [0], "draw": np.arange(n_draws)})


def _draw_summary(draws) -> dict:
    return {
        "median": float(np.median(draws)),
        "q05": float(np.quantile(draws, 0.05)),
        "q95": float(np.quantile(draws, 0.95)),
    }


def _absorbed_shares(idata, m, part: str) -> np.ndarray:
    """Shares of the rows ``m``'s mean (step part: step and window rows; CPU part: TTFT rows) that
    come from features constant per deployment (a per-step value, or per-request value, that
    does not vary over the deployment's rows): weight loading of a dense model, layer, step and
    TP-sync overheads; the CPU constant. The coefficients of such a feature are identified only
    across deployments, so a fit can move them to absorb a deployment's factor."""
    post, cd = idata.posterior, idata.constant_data
    hw, cls = cd["hw"].values.astype(int), cd["cls"].values.astype(int)
    kind = cd["kind"].values.astype(int)
    if part == "step":
        beta = post["beta"].mean(("chain", "draw")).values
        X = cd["X"].values
        rows = m & (kind <= 1)
        contrib = np.einsum("nrf,nrf->nf", X[rows], beta[hw[rows], cls[rows]])
        per = X[rows].sum(axis=1) / np.maximum(cd["n_steps"].values[rows], 1.0)[:, None]
    else:
        alpha = post["alpha"].mean(("chain", "draw")).values
        A = cd["A"].values
        rows = m & (kind == KINDS.index("ttft"))
        contrib = A[rows] * alpha[hw[rows], cls[rows]]
        per = A[rows]
    if not rows.any() or contrib.sum() <= 0:
        return np.zeros(contrib.shape[1])
    const = (per.max(axis=0) - per.min(axis=0)) <= 1e-9 * np.maximum(np.abs(per).max(axis=0), 1e-300)
    return np.where(const & (contrib.sum(axis=0) > 0), contrib.sum(axis=0) / contrib.sum(), 0.0)


def deployment_residuals(idata, seed: int = 0) -> pd.DataFrame:
    """Per training deployment of a fit: its (hardware, class) group and how far its rows sit from
    the fit (log factors ``step`` / ``alpha`` with bootstrap standard errors, as
    :func:`run_residuals` per run), and the shares of its mean that features constant per
    deployment carry (``shares_step`` / ``shares_alpha``, :func:`_absorbed_shares`)."""
    cd = idata.constant_data
    y = idata.observed_data["y"].values
    kind = cd["kind"].values.astype(int)
    dep = cd["deployment"].values.astype(str) if "deployment" in cd else cd["run"].values.astype(str)
    hw, cls = cd["hw"].values.astype(int), cd["cls"].values.astype(int)
    mub, mua = _row_means(idata)
    rng = np.random.default_rng(seed + 17)
    out = []
    for k in np.unique(dep):
        m = dep == k
        row = {"deployment": k, "group": f"{hw[m][0]}/{cls[m][0]}"} | _log_factors(y, mub, mua, kind, m, rng, _n_rows(cd))
        row["shares_step"] = _absorbed_shares(idata, m, "step")
        row["shares_alpha"] = _absorbed_shares(idata, m, "alpha")
        out.append(row)
    return pd.DataFrame(out)


def _complement(Z: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """An orthonormal basis (k, k - rank) of the complement of the column span of ``Z`` (k, p)."""
    U, s, _ = np.linalg.svd(Z, full_matrices=True)
    rank = int((s > tol * max(s.max(initial=0.0), 1.0)).sum())
    return U[:, rank:]


def _sigma_grid_draws(terms, prior_median: float, prior_log_sd: float, n_grid: int, n_draws: int, rng):
    """Draws of sigma from its grid posterior: prior LogNormal(log ``prior_median``,
    ``prior_log_sd``), likelihood ``r ~ N(0, sigma^2 I + S)`` for each (r, S) in ``terms``
    (projected residuals and their measurement covariance). Exact up to the grid (uniform in
    log sigma over +-6 prior sds) and a uniform jitter within a cell. Returns (draws, the
    posterior mass in the outer 1% of the grid at either end: large when the data push sigma off
    the grid)."""
    lg = np.linspace(np.log(prior_median) - 6 * prior_log_sd, np.log(prior_median) + 6 * prior_log_sd, n_grid)
    logp = -0.5 * ((lg - np.log(prior_median)) / prior_log_sd) ** 2  # density in log sigma
    for r, S in terms:
        k = len(r)
        if k == 0:
            continue
        w, V = np.linalg.eigh(S)
        rv2 = (V.T @ r) ** 2
        var = np.exp(2 * lg)[:, None] + np.maximum(w, 0.0)[None, :]
        logp += -0.5 * (np.log(var).sum(axis=1) + (rv2[None, :] / var).sum(axis=1))
    p = np.exp(logp - logp.max())
    p /= p.sum()
    dx = lg[1] - lg[0]
    edge = float(p[: n_grid // 100 + 1].sum() + p[-(n_grid // 100 + 1) :].sum())
    return np.exp(rng.choice(lg, size=n_draws, p=p) + rng.uniform(-0.5 * dx, 0.5 * dx, n_draws)), edge


def estimate_deployment_spread(idata, heldout: list | None = None, *, seed: int = 0, info: dict | None = None):
    """Estimate the between-deployment spread of a fit and attach it as group ``deployment_spread``
    (draws of ``sigma_dep``, ``sigma_alpha_dep``: the sd of a new deployment's log step-time and
    CPU factors); returns ``idata``. A cut stage, exact on a grid (``DEPLOYMENT_SPREAD``), with the
    priors' LogNormal(log sigma_dep, sigma_log_sd) and LogNormal(log sigma_alpha_dep,
    sigma_log_sd).

    ``heldout`` (nested cross-validation, what ``bayeslat calibrate`` passes): a list of
    ``{"factor_step", "factor_cpu"}`` dicts, the log factors of deployments predicted by fits that
    did not see them (leave one model out). Each is a draw of a new deployment's factor,
    ``N(0, sigma)``: this is the quantity a prediction for a new deployment needs, its bias included.

    Without them, from the fit's own residuals (:func:`deployment_residuals`): per (hardware,
    class) group, the residual log factors projected off the directions the coefficients can
    absorb (a group level and the features constant per deployment: restricted maximum likelihood,
    so a fit that absorbed its deployments' differences is not read as zero spread). A group of k
    deployments with p such directions informs sigma with k - p degrees of freedom; with none (the
    bundled runs: 3 dense deployments, 4 constant features) sigma keeps its prior."""
    p = _merge_priors(attr_json(idata, "priors", {}) or {})
    cfg = DEPLOYMENT_SPREAD
    rng = np.random.default_rng(seed + 19)
    meta: dict = {"method": "grid", "config": dict(cfg)}
    parts = {"step": ("sigma_dep", "factor_step"), "alpha": ("sigma_alpha_dep", "factor_cpu")}
    terms: dict = {k: [] for k in parts}
    if heldout:
        meta["source"] = "held-out deployments"
        for part, (_, key) in parts.items():
            e = np.array([float(h[key]) for h in heldout if h.get(key) is not None and np.isfinite(h[key])])
            terms[part].append((e, np.zeros((len(e), len(e)))))
            meta[f"{part}_dof"] = len(e)
        meta["heldout"] = [{k: h[k] for k in ("model", "factor_step", "factor_cpu") if k in h} for h in heldout]
    else:
        res = deployment_residuals(idata, seed=seed)
        meta["source"] = "fit residuals (restricted likelihood)"
        meta["deployments"] = json.loads(res.drop(columns=["shares_step", "shares_alpha"]).round(5).to_json(orient="records"))
        for part in parts:
            dof = 0
            for _, g in res.groupby("group"):
                g = g[g[part].notna()]
                if len(g) < 2:
                    continue
                Z = np.column_stack([np.ones(len(g)), np.vstack(g[f"shares_{part}"].to_numpy())])
                Q = _complement(Z[:, np.abs(Z).sum(axis=0) > 0])
                if Q.shape[1] == 0:
                    continue
                se = g[f"{part}_se"].fillna(0.0).to_numpy()
                terms[part].append((Q.T @ g[part].to_numpy(), Q.T @ np.diag(se**2) @ Q))
                dof += Q.shape[1]
            meta[f"{part}_dof"] = dof
    ds = {}
    for part, (name, _) in parts.items():
        med = max(float(p[name]), 1e-6)
        draws, edge = _sigma_grid_draws(terms[part], med, float(p["sigma_log_sd"]), int(cfg["grid"]), int(cfg["draws"]), rng)
        ds[name] = (("chain", "draw"), draws[None, :])
        meta[part] = {"prior_median": med, "grid_edge_mass": edge} | _draw_summary(draws)
    put_group(idata, "deployment_spread", _one_chain(ds, int(cfg["draws"])))
    idata.attrs["deployment_spread"] = json.dumps(meta | (info or {}))
    return idata


def attach_run_spread(idata, seed: int = 0):
    """Estimate the between-run spread of a fit's training runs and attach it as group
    ``run_spread`` (draws of ``sigma_run_step`` and ``sigma_run_alpha``); returns ``idata``.

    A "cut" stage after the fit (like the deployment spread): the per-run log factors of
    :func:`run_residuals` are modelled as a deployment offset plus a run deviation
    ``N(0, sigma)``, the offset integrated out, so only runs of deployments with >= 2 runs inform
    sigma (a fit with none keeps the HalfNormal prior of ``RUN_SPREAD``). Exact on a grid; no
    feedback into the coefficients. A new run (:func:`coefficient_draws`, ``new_run=True``)
    multiplies its step time by ``exp(sigma_run_step z)`` and its CPU part by
    ``exp(sigma_run_alpha z')``: without it a prediction for a trained deployment carries
    parameter uncertainty only (leave-one-workload-out: 12% coverage of 90% intervals)."""
    cfg = RUN_SPREAD
    res = run_residuals(idata, seed=seed)
    rng = np.random.default_rng(seed + 13)
    # strict JSON: a run too short for a factor is null (pandas writes NaN as null)
    ds, info = {}, {"runs": json.loads(res.round(5).to_json(orient="records")), "config": cfg}
    for part, prior in (("step", cfg["prior_step"]), ("alpha", cfg["prior_alpha"])):
        ok = res[part].notna().to_numpy()
        e, se, g = res[part].to_numpy()[ok], res[f"{part}_se"].to_numpy()[ok], res["deployment"].to_numpy()[ok]
        grid, p = _spread_grid_posterior(e, se, g, prior, cfg["deployment_sd"], int(cfg["grid"]))
        dx = grid[1] - grid[0]
        draws = rng.choice(grid, size=int(cfg["draws"]), p=p) + rng.uniform(-0.5 * dx, 0.5 * dx, int(cfg["draws"]))
        ds[f"sigma_run_{part}"] = (("chain", "draw"), np.abs(draws)[None, :])
        _, counts = np.unique(g, return_counts=True)
        info[part] = {"runs_informing": int(counts[counts >= 2].sum())} | _draw_summary(draws)
    put_group(idata, "run_spread", _one_chain(ds, int(cfg["draws"])))
    idata.attrs["run_spread"] = json.dumps(info)
    return idata
