"""The PyMC graph of the hierarchical latency model (:func:`build_model`) and the checks and
structure of its input (:func:`check_obs`).

Model (see ``docs/method.md`` for the derivation and the choices)
-----------------------------------------------------------------
For an observation row i of group (h, c) = (hardware, model class)::

    mu_i = exp(dep_b[d_i]) * sum_r X_i[r] . beta[h, c, r, :] + exp(dep_a[d_i]) * A_i . alpha[h, c, :]
    y_i ~ StudentT(nu[k_i], mu_i, (s_abs[k_i] + s_rel[k_i] / sqrt(max(n_steps_i, 1)) * mu_i) / sqrt(n_eff_i) + s_sys[k_i] * mu_i)

A row may be the mean of several raw rows of one run and kind (``bayeslat.data.obs.collapse``):
mu is linear in X and A within a run, so the mean row's mu is exactly the mean of its rows'; the
rows' own noise averages out over ``n_eff`` (their worth in independent rows, 1 for a raw row),
the systematic ``s_sys`` does not.

Coefficients are non-negative and pooled multiplicatively::

    beta[h, c, r, f] = beta_pop[f] * exp(dev_hw[h, f] + dev_cls[h, c, f] + dev_regime[r])
    dev_level ~ N(0, sigma_level)  (log scale)
    beta_pop[f] = scale_f * w_f / (1 - w_f),   w_f ~ Beta(a, b)

so ``beta_pop[f] / scale_f ~ BetaPrime(a, b)``: with a = b = 1/2 this is the distribution of
``lambda^2`` for a half-Cauchy ``lambda`` (the horseshoe's local scale), with an infinite spike
at zero (sparsity, ARD-like pruning of irrelevant features) and a polynomial right tail (no
shrinkage of large terms). PyMC samples ``w`` on the log-odds scale, i.e. ``log(beta_pop /
scale)``, where this prior is log-concave: the geometry NUTS likes. A deviation multiplies the
population coefficient, so a group cannot re-introduce a term the population pruned.

The sampling geometry (measured on the 1,320 real rows; benchmarks/fit_backends.py, method.md):

- hardware and class deviations sum to zero over their levels (ZeroSumNormal in an orthonormal
  basis, :func:`_zerosum`); each cell is centred (``u_*``) where the data pin it and
  non-centred (``z_*`` ~ N(0, 1), the "offset" variables) where few data inform it;
- class deviations exist only for features observed in every class and varying within it
  (:func:`_centred_cells`), except those in ``no_class_deviation`` (default ``context_overhead``)
  and the excluded ones; per-deployment constants and single-class (MoE) terms are shared;
- regime factors are relative to decode (factor 1), centred for regimes with >= 100 rows;
- ``exclude_features`` (default ``step_overhead``, ``prefill_overhead``) holds coefficients the design cannot
  identify at 0; nu and the noise scales are per observation kind, with a systematic relative
  term ``s_sys`` (step and window rows only) that does not average out over a window's steps;
- a deployment level (model x GPU x parallelism): one step-time and one CPU-time factor per
  deployment, zero-sum within its (hardware, class) group, centred; a new deployment draws them
  from ``N(0, sigma_dep)`` (:func:`coefficient_draws`).

A deviation level with a single observed member (e.g. one GPU) is not identified from the
population; it is then dropped for the fitted levels (absorbed into ``beta_pop``) while its
scale keeps its prior, which is what an unseen level is drawn with. ``alpha`` pools hardware ->
model class the same way.
"""

from __future__ import annotations

import numpy as np

from bayeslat import features as F
from bayeslat.errors import SpecError
from bayeslat.model.priors import KINDS, SYS_KINDS, _merge_priors

FIELDS = ("kind", "y", "X", "A", "n_steps", "hw", "cls", "run", "request", "hardware_levels", "class_levels")


# ---------------------------------------------------------------------------------------------
# Input handling (an ObsTable: bayeslat.data.design.ObsTable, or any object with its fields)
# ---------------------------------------------------------------------------------------------
def check_obs(obs) -> dict:
    """Validate an ObsTable-like object; return its arrays as a dict of numpy arrays."""
    out = {}
    for name in FIELDS:
        if not hasattr(obs, name):
            raise SpecError(f"observation table lacks field {name!r}", field=name)
    y = np.asarray(obs.y, dtype=np.float64)
    n = y.shape[0]
    out["y"] = y
    out["kind"] = np.asarray(obs.kind, dtype=np.int64)
    out["X"] = np.asarray(obs.X, dtype=np.float64)
    out["A"] = np.asarray(obs.A, dtype=np.float64)
    out["n_steps"] = np.asarray(obs.n_steps, dtype=np.float64)
    for k, dt in (("n_rows", np.int64), ("n_eff", np.float64)):
        v = getattr(obs, k, None)
        out[k] = np.asarray(np.ones(n) if v is None else v, dtype=dt)  # (absent: raw rows)
    out["hw"] = np.asarray(obs.hw, dtype=np.int64)
    out["cls"] = np.asarray(obs.cls, dtype=np.int64)
    out["run"] = np.asarray(obs.run).astype(str)
    out["request"] = np.asarray(obs.request, dtype=np.int64)
    out["hardware_levels"] = tuple(str(v) for v in obs.hardware_levels)
    out["class_levels"] = tuple(str(v) for v in obs.class_levels)
    # deployment of each row (model x GPU x parallelism, features.deployment_key) from
    # ``meta["deployments"]`` ({run: key}); a run without one is its own deployment
    deps = (getattr(obs, "meta", None) or {}).get("deployments", {}) or {}
    out["deployment"] = np.array([deps.get(r, r) for r in out["run"]], dtype=str) if n else np.array([], dtype=str)
    shapes = {"X": (n, len(F.REGIMES), F.N_BETA), "A": (n, F.N_ALPHA)}
    for k, shp in shapes.items():
        if out[k].shape != shp:
            raise SpecError(f"expected shape {shp}, got {out[k].shape}", field=k)
    for k in ("kind", "n_steps", "hw", "cls", "run", "request", "deployment", "n_rows", "n_eff"):
        if out[k].shape != (n,):
            raise SpecError(f"expected shape ({n},), got {out[k].shape}", field=k)
    if n == 0:
        raise SpecError("no observations", field="y")
    for k in ("y", "X", "A", "n_steps", "n_eff"):
        if not np.all(np.isfinite(out[k])):
            raise SpecError("non-finite values", field=k)
    if np.any(out["n_eff"] < 1.0 - 1e-9) or np.any(out["n_eff"] > out["n_rows"] + 1e-9):
        raise SpecError("n_eff must lie in [1, n_rows]", field="n_eff")
    if np.any(out["X"] < 0) or np.any(out["A"] < 0):
        raise SpecError("features must be non-negative", field="X/A")
    if out["kind"].min() < 0 or out["kind"].max() >= len(KINDS):
        raise SpecError(f"kind must index {KINDS}", field="kind")
    if out["hw"].min() < 0 or out["hw"].max() >= len(out["hardware_levels"]):
        raise SpecError("hw index out of range of hardware_levels", field="hw")
    if out["cls"].min() < 0 or out["cls"].max() >= len(out["class_levels"]):
        raise SpecError("cls index out of range of class_levels", field="cls")
    return out


def _structure(d: dict) -> dict:
    """Which deviation levels are identified (>= 2 observed members)."""
    H, C = len(d["hardware_levels"]), len(d["class_levels"])
    counts = np.zeros((H, C), dtype=int)
    np.add.at(counts, (d["hw"], d["cls"]), 1)
    return {
        "use_hw": int((counts.sum(1) > 0).sum() >= 2),
        "use_cls": int((counts.sum(0) > 0).sum() >= 2),
        "group_rows": counts.tolist(),
    }


# ---------------------------------------------------------------------------------------------
# The PyMC model
# ---------------------------------------------------------------------------------------------
def _zerosum_basis(n: int) -> np.ndarray:
    """Orthonormal basis (n, n-1) of the sum-to-zero subspace of R^n."""
    u = np.linalg.svd(np.eye(n) - 1.0 / n)[0][:, : n - 1]
    return u * np.where(u[0] < 0, -1.0, 1.0)  # deterministic sign


def _zerosum(pm, name, sigma, dims, axis, centred=None, active=None, model=None):
    """Deviations summing to zero along ``dims[axis]`` (the level axis), distributed as
    ``ZeroSumNormal(sigma)``; returned with ``dims`` order as a named Deterministic.

    Each cell (one index of the other dims) has ``n_levels - 1`` free coordinates ``u`` in an
    orthonormal basis ``Q`` of the zero-sum subspace (``dev = Q u``, ``u ~ N(0, sigma)``, which is
    exactly ZeroSumNormal). ``centred`` (bool, shape of the other dims) picks per cell:

    - centred (``u_<name>`` ~ N(0, sigma)) where the data pin the cell: its posterior is much
      narrower than sigma, and the non-centred form would couple ``z = u / sigma`` to sigma (the
      funnel the other way round; measured: bulk ESS 13 for the class deviation of decode_kv);
    - non-centred (``z_<name>`` ~ N(0, 1), ``u = sigma z``) where few data inform it.

    ``active`` (bool, same shape; default all): cells without a deviation (fixed at 0).
    """
    import pytensor.tensor as pt

    coords = model.coords if model is not None else pm.modelcontext(None).coords
    order = [d for i, d in enumerate(dims) if i != axis] + [dims[axis]]
    other = [len(coords[d]) for d in order[:-1]]
    n = len(coords[dims[axis]])
    cells = int(np.prod(other)) if other else 1
    cmask = (
        np.zeros(cells, dtype=bool) if centred is None else np.broadcast_to(np.asarray(centred, dtype=bool), tuple(other)).ravel()
    )
    amask = (
        np.ones(cells, dtype=bool) if active is None else np.broadcast_to(np.asarray(active, dtype=bool), tuple(other)).ravel()
    )
    ic, inc = np.flatnonzero(cmask & amask), np.flatnonzero(~cmask & amask)
    u = pt.zeros((cells, n - 1))
    if ic.size:
        u = pt.set_subtensor(u[ic], pm.Normal(f"u_{name}", 0.0, sigma, shape=(ic.size, n - 1)))
    if inc.size:
        u = pt.set_subtensor(u[inc], sigma * pm.Normal(f"z_{name}", 0.0, 1.0, shape=(inc.size, n - 1)))
    dev = pt.dot(u, _zerosum_basis(n).T).reshape(tuple(other) + (n,))
    perm = [order.index(d) for d in dims]
    return pm.Deterministic(name, pt.transpose(dev, perm), dims=dims)


def _deployment_groups(d: dict) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(deployment keys, row index into them, index arrays into the keys of the deployments of
    each (hardware, class) group that has at least two of them: the groups with a deployment
    level)."""
    dkeys, didx = np.unique(d["deployment"], return_inverse=True)
    grp = {}
    for j in range(len(dkeys)):
        m = didx == j
        grp.setdefault((int(d["hw"][m][0]), int(d["cls"][m][0])), []).append(j)
    return dkeys, didx, [np.array(v) for _, v in sorted(grp.items()) if len(v) >= 2]


def _centred_cells(d: dict, min_rows: int = 30, min_cv: float = 0.1, no_class=()) -> dict:
    """Which deviation cells exist and which are centred (see :func:`_zerosum`).

    Class deviations exist only for the features the data can tell apart between classes:
    observed in every class on the hardware and varying within each class (below). A feature
    present in one class only (the MoE terms) has no deviation: its population coefficient is
    that class's value (a deviation would form an exact ridge with it). A feature constant per
    deployment (weight loading of a dense model; layer, step, TP-sync overheads) is a software
    cost shared by every model of the hardware: with one MoE deployment, per-class constants are
    collinear (measured: chains in different modes, R-hat 2.7). These existing cells are centred.

    - regime (one shared factor per regime): centred when every regime has ``min_rows`` rows
      with steps in it;
    - class deviation of feature f on hardware h: centred when every class observed on h has
      ``min_rows`` rows where f is non-zero and f varies within the class (coefficient of
      variation of its per-step value ``>= min_cv``). A feature that is constant per deployment
      (weight loading of a dense model, layer or step overheads) is identified only across the
      few deployments of a class, so its cell stays non-centred.
    """
    X, ns = d["X"], np.maximum(d["n_steps"], 1.0)
    R = X.shape[1]
    reg_rows = np.array([(X[:, r].sum(axis=1) > 0).sum() for r in range(R)])
    H, C = len(d["hardware_levels"]), len(d["class_levels"])
    per_step = X.sum(axis=1) / ns[:, None]
    cls = np.zeros((H, F.N_BETA), dtype=bool)
    for h in range(H):
        ok = np.ones(F.N_BETA, dtype=bool)
        seen = 0
        for c in range(C):
            m = (d["hw"] == h) & (d["cls"] == c) & (d["kind"] <= 1)
            if not m.any():
                continue
            seen += 1
            v = per_step[m]
            nz = v > 0
            cnt = nz.sum(axis=0)
            mean = np.where(cnt > 0, (v * nz).sum(axis=0) / np.maximum(cnt, 1), 0.0)
            sd = np.sqrt(np.where(cnt > 1, (((v - mean) * nz) ** 2).sum(axis=0) / np.maximum(cnt - 1, 1), 0.0))
            cv = np.where(mean > 0, sd / np.maximum(mean, 1e-300), 0.0)
            ok &= (cnt >= min_rows) & (cv >= min_cv)
        cls[h] = ok & (seen >= 2) & ~np.isin(np.asarray(F.BETA_NAMES), list(no_class))
    # alpha class deviations exist for the intercept and for the alpha features that vary within
    # every class (prompt length, queue depth); a feature constant within a class (multiproc: every
    # MoE deployment is TP > 1) is collinear with the intercept there, so a class deviation of it
    # would only trade against the intercept's (measured on the binned real rows: bulk ESS 130 of
    # 2,000 draws for both, correlation -0.95). Centred where every class has min_rows TTFT rows.
    A = d["A"]
    is_const = np.asarray(F.ALPHA_NAMES) == "const"
    acls = np.zeros((H, F.N_ALPHA), dtype=bool)
    acls_active = np.zeros((H, F.N_ALPHA), dtype=bool)
    for h in range(H):
        ok, rows_ok, seen = np.ones(F.N_ALPHA, dtype=bool), True, 0
        for c in range(C):
            m = (d["hw"] == h) & (d["cls"] == c) & (A.sum(axis=1) > 0)
            if not m.any():
                continue
            seen += 1
            v = A[m]
            mean = v.mean(axis=0)
            cv = np.where(mean > 0, v.std(axis=0) / np.maximum(mean, 1e-300), 0.0)
            ok &= cv >= min_cv
            rows_ok &= bool(m.sum() >= min_rows)
        acls_active[h] = (ok | is_const) & (seen >= 2)
        acls[h] = acls_active[h] & rows_ok
    return {
        "regime": bool((reg_rows >= min_rows).all()),
        "cls": cls,
        "cls_active": cls,
        "alpha_cls": acls,
        "alpha_cls_active": acls_active,
        "regime_ref": 0 if reg_rows[0] >= min_rows else int(np.argmax(reg_rows)),
        "regime_centred": reg_rows >= 100,
        "regime_rows": reg_rows,
    }


# The horseshoe's local scale integrated out on a fixed grid of u = log(lambda): the trapezoid
# rule in u converges geometrically for this smooth, exponentially decaying integrand. A
# coefficient below exp(HS_U_MIN) times its global scale sees a flat prior density instead of
# the horseshoe's logarithmic spike; tests/test_model.py checks the grid against scipy's quad.
HS_U_MIN, HS_U_MAX, HS_U_STEP = -30.0, 30.0, 0.25


def horseshoe_logp(pt, x, tau, c2):
    """log density of the regularised horseshoe on the positive half line at ``x`` (any shape),
    with the local scale ``lambda ~ HalfCauchy(1)`` integrated out:

        p(x | tau, c^2) = int HalfNormal(x; tau lambda~) HalfCauchy(lambda; 1) dlambda,
        lambda~^2 = c^2 lambda^2 / (c^2 + tau^2 lambda^2).

    ``pt`` is ``pytensor.tensor`` or ``numpy`` (for the check against quadrature)."""
    u = np.arange(HS_U_MIN, HS_U_MAX + HS_U_STEP / 2, HS_U_STEP)
    # half-Cauchy(1) in u: p(lambda) dlambda = sech(u) / pi du; log sech(u) = -|u| + log 2 - log1p(e^-2|u|)
    logw = np.log(HS_U_STEP / np.pi) - np.abs(u) + np.log(2.0) - np.log1p(np.exp(-2.0 * np.abs(u)))
    lt, lc = 2.0 * pt.log(tau), pt.log(c2)
    logs2 = lt + lc + 2.0 * u - pt.logaddexp(lc, lt + 2.0 * u)  # log of (tau lambda~)^2 at each node
    xx = pt.log(x)[..., None] if pt is np else pt.shape_padright(pt.log(x))
    x2 = pt.exp(2.0 * xx)
    terms = logw + 0.5 * np.log(2.0 / np.pi) - 0.5 * logs2 - x2 / (2.0 * pt.exp(logs2))
    if pt is np:
        from scipy.special import logsumexp

        return logsumexp(terms, axis=-1)
    return pt.logsumexp(terms, axis=-1)


def _ard(pm, pt, name: str, scale: np.ndarray, p: dict):
    """Positive ARD (sparsity) coefficients ``scale * x``, one per entry of ``scale``, under the
    priors' ``ard_prior``:

    - ``"betaprime"`` (default): ``x ~ BetaPrime(shape_a, shape_b)``, sampled as ``w / (1 - w)``
      with ``w ~ Beta(shape_a, shape_b)`` (variable ``<name>_w``);
    - ``"horseshoe"``: the regularised horseshoe (Piironen & Vehtari 2017) on the positive half
      line: ``x ~ HalfNormal(tau lambda~)`` with local scales ``lambda ~ HalfCauchy(1)``, a global
      ``tau ~ HalfCauchy(hs_tau0)`` (``<name>_hs_tau``) and a slab
      ``c^2 ~ InvGamma(hs_slab_df / 2, hs_slab_df hs_slab_scale^2 / 2)`` (``<name>_hs_c2``),
      ``lambda~^2 = c^2 lambda^2 / (c^2 + tau^2 lambda^2)`` (large coefficients are shrunk like a
      Student-t slab of scale ``hs_slab_scale``, small ones like the horseshoe). The local scales
      are integrated out (:func:`horseshoe_logp`) and ``x`` (``<name>_hs``) is sampled on the log
      scale: with them as parameters, ``x = tau lambda~ |z|`` leaves NUTS a ridge in
      (lambda, z) for every coefficient the data pin, which did not mix (docs/decisions.md).
    """
    n = len(scale)
    if p["ard_prior"] == "horseshoe":
        tau = pm.HalfCauchy(f"{name}_hs_tau", p["hs_tau0"])
        nu, s = float(p["hs_slab_df"]), float(p["hs_slab_scale"])
        c2 = pm.InverseGamma(f"{name}_hs_c2", nu / 2.0, nu * s**2 / 2.0)

        def random(tau, c2, rng=None, size=None):
            lam = np.abs(rng.standard_cauchy(size))
            return tau * np.sqrt(c2 * lam**2 / (c2 + tau**2 * lam**2)) * np.abs(rng.standard_normal(size))

        x = pm.CustomDist(
            f"{name}_hs",
            tau,
            c2,
            logp=lambda v, tau, c2: horseshoe_logp(pt, v, tau, c2),
            random=random,
            support_point=lambda rv, size, tau, c2: pt.full_like(rv, 0.1) * tau,
            transform=pm.distributions.transforms.log,
            shape=n,
        )
        return scale * x
    w = pm.Beta(f"{name}_w", alpha=p["shape_a"], beta=p["shape_b"], shape=n)
    return scale * w / (1.0 - w)


def build_model(obs, priors: dict | None = None):
    """The PyMC model of an ObsTable (see the module docstring)."""
    import pymc as pm
    import pytensor.tensor as pt

    d = check_obs(obs) if not isinstance(obs, dict) else obs
    p = _merge_priors(priors)
    st = _structure(d)
    n = len(d["y"])
    coords = {
        "hardware": list(d["hardware_levels"]),
        "model_class": list(d["class_levels"]),
        "regime": list(F.REGIMES),
        "feature": list(F.BETA_NAMES),
        "alpha_feature": list(F.ALPHA_NAMES),
        "kind": list(KINDS),
        "obs_id": np.arange(n),
    }
    med = np.array([np.median(np.abs(d["y"][d["kind"] == k])) if np.any(d["kind"] == k) else 1.0 for k in range(len(KINDS))])
    s_abs_scale = np.maximum(p["s_abs_frac"] * med, 1e-3)
    with pm.Model(coords=coords) as model:
        X = pm.Data("X", d["X"], dims=("obs_id", "regime", "feature"))
        A = pm.Data("A", d["A"], dims=("obs_id", "alpha_feature"))
        kind = pm.Data("kind_idx", d["kind"], dims="obs_id")
        hw = pm.Data("hw_idx", d["hw"], dims="obs_id")
        cls = pm.Data("cls_idx", d["cls"], dims="obs_id")
        # (not "n_steps": that name is a NUTS sample stat, and numpyro's conversion then mixes the two)
        n_steps = pm.Data("n_steps_row", d["n_steps"], dims="obs_id")

        present = np.abs(d["X"]).sum(axis=(0, 1)) > 0
        fixed = np.isin(np.asarray(F.BETA_NAMES), p["exclude_features"])
        bln = p.get("beta_lognormal") or {}
        lnm = np.isin(np.asarray(F.BETA_NAMES), list(bln))
        ip, ia = np.flatnonzero(present & ~fixed & ~lnm), np.flatnonzero(~present & ~fixed & ~lnm)
        il = np.flatnonzero(~fixed & lnm)  # present or not: their own physics prior
        bp = pt.zeros(F.N_BETA)
        bp = pt.set_subtensor(bp[ip], _ard(pm, pt, "beta_pop", np.asarray(p["beta_scale"])[ip], p))
        if il.size:
            # physics priors of named terms (priors "beta_lognormal"), e.g. the TP all-reduce latency
            med = np.log([bln[F.BETA_NAMES[i]][0] for i in il])
            sdl = np.array([bln[F.BETA_NAMES[i]][1] for i in il])
            bp = pt.set_subtensor(bp[il], pm.LogNormal("beta_pop_lognormal", med, sdl, shape=il.size))
        if ia.size:
            phys = pm.LogNormal("beta_pop_physics", np.log(p["physics_prior_median"]), p["physics_prior_sd"], shape=ia.size)
            bp = pt.set_subtensor(bp[ia], phys)
        beta_pop = pm.Deterministic("beta_pop", bp, dims="feature")
        # alpha: the intercept (arrival-to-queue delay, > 0 in every server) is not an ARD
        # candidate; like a regression intercept it gets a weakly informative prior of its own
        # (LogNormal, priors "alpha_lognormal"). Under the BetaPrime(1/2, .) spike its posterior
        # (5 +- 2 ms on the real rows) leaked toward 0: a long left tail in log-odds space,
        # bulk / tail ESS 344 / 161 of 8,000 draws, the slowest of the fit.
        names_a = list(F.ALPHA_NAMES)
        lognorm = {k: v for k, v in (p.get("alpha_lognormal") or {}).items() if k in names_a}
        ial = np.array([names_a.index(k) for k in names_a if k in lognorm], dtype=int)
        ish = np.array([i for i in range(F.N_ALPHA) if i not in set(ial.tolist())], dtype=int)
        ap = pt.zeros(F.N_ALPHA)
        if ish.size:
            ap = pt.set_subtensor(ap[ish], _ard(pm, pt, "alpha_pop", np.asarray(p["alpha_scale"])[ish], p))
        if ial.size:
            med = np.log([lognorm[names_a[i]][0] for i in ial])
            sdl = np.array([lognorm[names_a[i]][1] for i in ial])
            ap = pt.set_subtensor(ap[ial], pm.LogNormal("alpha_pop_lognormal", med, sdl, shape=ial.size))
        alpha_pop = pm.Deterministic("alpha_pop", ap, dims="alpha_feature")

        # level scales: log-normal around a small median (few levels -> mostly prior; keeping the
        # scale away from 0 removes the funnel's neck)
        sd = p["sigma_log_sd"]
        sig_hw = pm.LogNormal("sigma_hw", np.log(p["sigma_hw"]), sd)
        sig_cls = pm.LogNormal("sigma_cls", np.log(p["sigma_cls"]), sd)
        sig_reg = pm.LogNormal("sigma_regime", np.log(p["sigma_regime"]), sd)
        sig_ahw = pm.LogNormal("sigma_alpha_hw", np.log(p["sigma_alpha_hw"]), sd)
        sig_acls = pm.LogNormal("sigma_alpha_cls", np.log(p["sigma_alpha_cls"]), sd)

        H, C, R = len(coords["hardware"]), len(coords["model_class"]), len(F.REGIMES)  # noqa: F841
        # Deviations sum to zero over the levels of their own axis (ZeroSumNormal), non-centred.
        # Without the constraint, log beta_pop + dev_cls + dev_regime has an exact ridge (shift the
        # population up, every deviation down), only pinned by the N(0, sigma) priors: NUTS then
        # crawls along a funnel between sigma, the offsets and beta_pop (measured: R-hat 1.38,
        # bulk ESS 5 on 1,320 real rows). With it, beta_pop is the geometric mean over the levels.
        # An unseen level is drawn as N(0, sigma) (coefficient_draws).
        # Regime: one multiplicative speed factor per regime shared by every feature (e.g. mixed
        # steps leave the CUDA-graph path). Per-feature regime deviations were not identified by
        # real data (windows mix regimes; many (regime, feature) cells have no rows): measured
        # sigma_regime -> 2.4 and saturated trees. See docs/method.md.
        # features held at 0 get no class deviation either (it would multiply a zero coefficient:
        # a dimension informed by its prior alone)
        cen = _centred_cells(d, no_class=set(p["no_class_deviation"]) | set(p["exclude_features"]))
        # Regime factors relative to decode (or, without decode rows, the regime with the most
        # rows): its factor is 1, so beta_pop is the decode-regime coefficient, pinned by most
        # rows. The others deviate by N(0, sigma_regime) on the log scale, centred where >= 100
        # rows inform them, non-centred where fewer do (prefill-heavy / KV-bound: 22 / 41 of
        # 1,320 real rows; centring KV-bound coupled it to the MoE decode-KV deviation).
        # A zero-sum vector cannot mix the two (measured: sigma_regime bulk ESS 15).
        ref, rcen = cen["regime_ref"], cen["regime_centred"]
        rdev = pt.zeros(R)
        for r in range(R):
            if r == ref:
                continue
            if rcen[r]:
                rdev = pt.set_subtensor(rdev[r], pm.Normal(f"u_dev_regime_{F.REGIMES[r]}", 0.0, sig_reg))
            else:
                rdev = pt.set_subtensor(rdev[r], sig_reg * pm.Normal(f"z_dev_regime_{F.REGIMES[r]}", 0.0, 1.0))
        dev = pm.Deterministic("dev_regime", rdev, dims="regime")[None, None, :, None]
        if p.get("regime_by_class") and st["use_cls"] and C > 1:
            # each class's regime factor: the shared one times a zero-sum deviation over the
            # classes (the reference regime stays 1 in every class)
            sig_rcls = pm.LogNormal("sigma_regime_cls", np.log(p["sigma_regime_cls"]), sd)
            rcls = _zerosum(
                pm,
                "dev_regime_cls",
                sig_rcls,
                ("model_class", "regime"),
                axis=0,
                centred=np.array([bool(rcen[r]) for r in range(R)]),
                active=np.arange(R) != ref,
            )
            dev = dev + rcls[None, :, :, None]
        adev = pt.zeros((H, C, F.N_ALPHA))
        if st["use_hw"]:
            dev = dev + _zerosum(pm, "dev_hw", sig_hw, ("hardware", "feature"), axis=0)[:, None, None, :]
            adev = adev + _zerosum(pm, "dev_alpha_hw", sig_ahw, ("hardware", "alpha_feature"), axis=0)[:, None, :]
        if st["use_cls"]:
            dev = (
                dev
                + _zerosum(
                    pm,
                    "dev_cls",
                    sig_cls,
                    ("hardware", "model_class", "feature"),
                    axis=1,
                    centred=cen["cls"],
                    active=cen["cls_active"],
                )[:, :, None, :]
            )
            adev = adev + _zerosum(
                pm,
                "dev_alpha_cls",
                sig_acls,
                ("hardware", "model_class", "alpha_feature"),
                axis=1,
                centred=cen["alpha_cls"],
                active=cen["alpha_cls_active"],
            )
        beta = pm.Deterministic("beta", beta_pop * pt.exp(dev), dims=("hardware", "model_class", "regime", "feature"))
        alpha = pm.Deterministic("alpha", alpha_pop * pt.exp(adev), dims=("hardware", "model_class", "alpha_feature"))

        mu_b = (X * beta[hw, cls]).sum(axis=(1, 2))
        mu_a = (A * alpha[hw, cls]).sum(axis=1)
        # Deployment level, only in the "fit" mode (priors "deployment_level"): zero-sum over the
        # deployments of each (hardware, class) group with >= 2 of them, centred (hundreds of
        # rows pin each deployment); a group with one deployment has none (its factor is the
        # group's coefficients). In that mode sigma_dep is in the model even without such a
        # group, so that a new deployment can be drawn with it.
        dkeys, didx, dep_groups = _deployment_groups(d)
        model.add_coord("deployment", dkeys.tolist())
        if p["deployment_level"] == "fit" and p["sigma_dep"] > 0:
            sig_dep = pm.LogNormal("sigma_dep", np.log(p["sigma_dep"]), sd)
            sig_adep = pm.LogNormal("sigma_alpha_dep", np.log(max(p["sigma_alpha_dep"], 1e-6)), sd)
        else:
            dep_groups = []
        if dep_groups:
            n_free = sum(len(g) - 1 for g in dep_groups)
            ub = pm.Normal("u_dev_dep", 0.0, sig_dep, shape=n_free)
            ua = pm.Normal("u_dev_alpha_dep", 0.0, sig_adep, shape=n_free)
            db, da, o = pt.zeros(len(dkeys)), pt.zeros(len(dkeys)), 0
            for g in dep_groups:
                Q = _zerosum_basis(len(g))
                db = pt.set_subtensor(db[g], pt.dot(Q, ub[o : o + len(g) - 1]))
                da = pt.set_subtensor(da[g], pt.dot(Q, ua[o : o + len(g) - 1]))
                o += len(g) - 1
            db = pm.Deterministic("dev_dep", db, dims="deployment")
            da = pm.Deterministic("dev_alpha_dep", da, dims="deployment")
            mu_g = mu_b * pt.exp(db)[didx] + mu_a * pt.exp(da)[didx]
        else:
            mu_g = mu_b + mu_a
        # Run level: one multiplicative factor per run (software state, contention, clocks: what
        # the features do not see), non-centred. A new run draws it from N(0, sigma_run): this is
        # what makes workload-level intervals honest rather than parameter-uncertainty only.
        # (sigma_run = 0 in the priors switches the run level off)
        if p["sigma_run"] > 0:
            runs, run_idx = np.unique(np.asarray(d["run"]).astype(str), return_inverse=True)
            model.add_coord("run", runs.tolist())
            sig_run = pm.HalfNormal("sigma_run", p["sigma_run"])
            z_run = pm.Normal("z_run", 0.0, 1.0, dims="run")
            mu = pm.Deterministic("run_factor", pt.exp(sig_run * z_run), dims="run")[run_idx] * mu_g
        else:
            mu = mu_g

        s_abs = pm.HalfNormal("s_abs", s_abs_scale, dims="kind")
        s_rel = pm.HalfNormal("s_rel", p["s_rel"], dims="kind")
        # one tail weight per kind: TTFT rows carry queueing the reconstruction cannot see (heavy
        # tails), step and window rows are close to Gaussian. A shared nu was pulled to 2.03 by
        # the TTFT outliers (its log-scale funnel stalled a chain: 344 divergences).
        nu_m2 = pm.Gamma("nu_m2", alpha=p["nu_alpha"], beta=p["nu_beta"], dims="kind")
        nu = pm.Deterministic("nu", 2.0 + nu_m2, dims="kind")
        # s_sys: the relative error that does not average out over the steps of a window (a
        # run's steps all a few % slower than its features say). Without it a long window's
        # scale shrinks as 1/sqrt(n) and a 30% misfit of one overloaded run is a 20-sigma
        # outlier: nu fell to 2.05 and the chains switched modes (R-hat 1.1).
        # Only for the multi-step kinds (step rows span up to 32 steps, windows hundreds): a TTFT
        # row spans 1-3 prefill steps and an alpha row none, where s_sys and s_rel / sqrt(n) are
        # (nearly) the same term (measured: bulk ESS 304 along that ridge on the real TTFT rows).
        # Bin means (rows worth n_eff > 1 independent rows, bayeslat.data.obs.collapse): the row noise
        # s_abs + s_rel / sqrt(n) averages out over a bin's rows, s_sys does not: it is the error
        # common to the rows of a bin as to the steps of a row (the run's state at that time, the
        # features' misfit at that design). Dividing it too left bin means 20-sigma apart and
        # nu[ttft] at 2.2. A bin of TTFT rows spans hundreds of prefill steps, so s_sys is
        # identified for every kind there.
        binned = bool(np.any(d["n_eff"] != 1.0))
        sys_kinds = list(KINDS) if binned else list(SYS_KINDS)
        model.add_coord("sys_kind", sys_kinds)
        s_sys_k = pm.HalfNormal("s_sys", p["s_sys"], dims="sys_kind")
        s_sys = pt.concatenate([s_sys_k, pt.zeros(len(KINDS) - len(sys_kinds))]) if len(sys_kinds) < len(KINDS) else s_sys_k
        row = s_abs[kind] + s_rel[kind] / pt.sqrt(pt.maximum(n_steps, 1.0)) * mu
        if binned:
            row = row / pt.sqrt(pm.Data("n_eff_row", d["n_eff"], dims="obs_id"))
        scale = row + s_sys[kind] * mu
        pm.StudentT("y", nu=nu[kind], mu=mu, sigma=scale, observed=d["y"], dims="obs_id")
    return model
