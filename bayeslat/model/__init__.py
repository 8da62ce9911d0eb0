"""The hierarchical latency model (the only ``import pymc`` in bayeslat).

Model (see ``specs/method.md`` for the derivation and the choices)
-----------------------------------------------------------------
For an observation row i of group (h, c) = (hardware, model class)::

    mu_i = exp(dep_b[d_i]) * sum_r X_i[r] . beta[h, c, r, :] + exp(dep_a[d_i]) * A_i . alpha[h, c, :]
    y_i ~ StudentT(nu[k_i], mu_i, s_abs[k_i] + (s_rel[k_i] / sqrt(max(n_steps_i, 1)) + s_sys[k_i]) * mu_i)

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

Public API: :func:`fit`, :func:`save`, :func:`load`, :func:`coefficient_draws`,
:func:`predict_mean`, :func:`posterior_predictive`, :func:`simulate_obs`, :func:`cli_fit`.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from bayeslat import features as F
from bayeslat.errors import SpecError

FORMAT = "bayeslat-posterior/1"
KINDS = ("step", "window", "ttft", "alpha")
DEPLOYMENT_LEVELS = ("spread", "fit", "off")
SYS_KINDS = KINDS[:2]  # kinds with a systematic relative noise term s_sys (multi-step rows)
BACKENDS = ("nutpie", "pymc", "numpyro")
# Chosen from benchmarks/fit_backends.py (ESS per second incl. compilation, see specs/method.md).
DEFAULT_BACKEND = "nutpie"
# The shipped default: 2 x (1000 tune + 4000 draws) at target_accept 0.99 on 1,320 real rows
# (models/default_diagnostics.json; at 0.97: 3 divergences in 8,000 draws; at 3,000 draws: bulk
# ESS 304 before the TTFT s_sys ridge was removed).
MAX_SAVED_DRAWS = 1000  # per chain, after thinning (fit)
SPREAD_DRAWS = 1000  # draws (and tune) of the deployment-spread fit (fit, "spread" mode)
# Run spread (attach_run_spread): how much a new run of a configuration differs from the runs the
# fit saw, as one multiplicative factor on the step time and one on the CPU / queueing (alpha)
# part. HalfNormal prior scales of the two sigmas (a fit of one run per deployment has only
# these), the sd of the deployment offset they are measured around, the grid and the draws kept.
RUN_SPREAD = {"prior_step": 0.05, "prior_alpha": 0.3, "deployment_sd": 2.0, "grid": 600, "draws": 1000,
              "min_step_rows": 20, "min_ttft_rows": 10, "boot": 200}
DEFAULT_SAMPLER = {"draws": 4000, "tune": 1000, "chains": 2, "target_accept": 0.99}

# Variables that are re-parameterisation helpers, not quantities of interest (left out of diagnostics).
OFFSET_PREFIXES = ("z_", "u_")
HELPER_VARS = ("beta_pop_w", "alpha_pop_w", "beta_pop_physics", "alpha_pop_lognormal", "beta_pop_lognormal")

DEFAULT_PRIORS = {
    # beta_pop[f] / beta_scale[f] ~ BetaPrime(shape_a, shape_b), beta_scale in ms per scaled unit; with
    # shape (1/2, 2) the prior median is 0.14 x beta_scale and the 95th percentile 1.9 x
    # (small medians: mass near zero prunes what the data do not support; the x^-1.5 tail leaves
    # well-identified terms unshrunk)
    # Scales are the physically plausible magnitudes (bambi-style tiers scaled to the units):
    # roofline terms are efficiency multipliers (1 = exactly the roofline time); layer / MoE-layer
    # overheads in ms per 100 layers (BLIS: ~3 ms); request overhead ms per 100 requests; the
    # step constant in ms; prefill overhead in ms per 10 prefilling requests; context overhead in
    # ms per 100k KV tokens held (2 ms = 20 ns per token).
    "beta_scale": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 0.5, 2.0, 0.5, 0.5, 2.0, 2.0],
    "alpha_scale": [2.0, 0.5, 0.5, 2.0],
    # alpha features with a LogNormal(log median, sd) prior instead of the sparsity prior:
    # {name: [median (ms per scaled unit), sd of the log]}. The intercept: vLLM's API server
    # always spends some ms between arrival and queueing (HTTP, tokenisation, scheduling);
    # 90% prior range 0.4-10 ms.
    "alpha_lognormal": {"const": [2.0, 1.0]},
    # beta features with a LogNormal(log median, sd) physics prior instead of the sparsity prior
    # (same form). tp_sync_overhead: one TP all-reduce call of a decode-sized message costs a
    # few to ~20 us of latency (vLLM's custom all-reduce on NVLink), 1.0 ms per 100 calls = 10 us,
    # 90% prior range 4.4-23 us. Under the sparsity prior it was only separated from
    # layer_overhead by the one TP1 model: without it (leave-one-model-out) tp_sync went
    # 1.06 -> 3.89 and layer_overhead 5.9 -> 0.79, and the TP1 model's fixed step cost came out
    # 1.5x too small.
    # decode_kv: the decode-attention kernel's time per KV byte relative to the HBM roofline,
    # measured on H100 microbenchmarks of FlashAttention decode (shared/data/bench/mha/decode,
    # benchmarks/kernel_priors.py: slope 1.04-1.08 x roofline over 6 head layouts x TP 1/2/4, plus a
    # 20-80 us floor per call); LogNormal(log 1.05, 0.25) leaves room for other GPUs and
    # kernels. Under the sparsity prior decode_kv and context_overhead (both grow with the
    # decode contexts) traded off freely.
    "beta_lognormal": {"tp_sync_overhead": [1.0, 0.5], "decode_kv": [1.05, 0.25]},
    # beta features without a model-class deviation (shared by the classes of a hardware level).
    # context_overhead: a per-token software cost of the engine, not of the model's shapes; with
    # one MoE deployment its class deviation and decode_kv's were collinear (the MoE runs'
    # decode contexts drive both): R-hat 1.022, bulk ESS 50 in the default fit.
    "no_class_deviation": ["context_overhead"],
    # BetaPrime(1/2, b): the horseshoe's spike at zero (ARD pruning); b = 2 regularises the tail
    # (x^-3 instead of the horseshoe's x^-1.5, cf. the regularised horseshoe's slab) so weakly
    # identified terms do not send NUTS into a Cauchy tail.
    "shape_a": 0.5,
    "shape_b": 2.0,
    # features the training data never exercise (all-zero columns, e.g. CPU offload or EP
    # dispatch when no run used them) keep a physics prior instead of the sparsity prior:
    # LogNormal(log(physics_prior_median), physics_prior_sd) -> they transfer as roofline time.
    "physics_prior_median": 1.0,
    "physics_prior_sd": 0.5,
    # medians of the log-normal priors of the multiplicative (log-scale) deviation scales
    "sigma_hw": 0.2,
    "sigma_cls": 0.3,
    "sigma_regime": 0.2,
    "sigma_alpha_hw": 0.2,
    "sigma_alpha_cls": 0.3,
    "sigma_log_sd": 0.5,
    # run-level multiplicative deviation: sigma_run ~ HalfNormal(sigma_run). Tight on purpose:
    # with HalfNormal(0.1) the run factors absorbed the model-to-model differences (7B 0.79,
    # 70B 1.18; sigma_run 0.17) that the physics features explain to ~2%, which broke transfer.
    # Default 0 = off: measured, it made accuracy worse. In-sample E2E error 18.6% with it,
    # 1.6% without; on the 11 aggregate-only runs, 16% vs 2.0%. Honest intervals need another
    # source of run-level spread (see the closing notes of issue 5).
    "sigma_run": 0.0,
    # deployment level (model x GPU x TP x dtype, features.deployment_key): one multiplicative
    # factor on the step time (beta part) and one on the CPU / queueing part (alpha) per
    # deployment, zero-sum within each (hardware, class) group so that it cannot absorb the
    # group's coefficients, only what makes one model of a class faster or slower than the
    # physics features say (kernel efficiency of its shapes). A new deployment draws its factors
    # from N(0, sigma_dep): the honest width of a prediction for a model / TP never run. Prior
    # medians from BLIS trained-physics' held-out errors across models (E2E ~7%, TTFT ~18%), not
    # from our runs; sigma_log_sd (0.5) lets the data move them.
    "sigma_dep": 0.07,
    "sigma_alpha_dep": 0.15,
    # How the deployment level enters (measured on leave-one-model-out, specs/method.md):
    # "fit": its factors are in the likelihood. They absorb the cross-model contrasts that
    #   identify the per-deployment constant features (weights, layers, TP sync): held-out median
    #   E2E error 27% (coverage 94%) vs 9.8% without.
    # "spread" (default): the coefficients are fit without it; a second, short fit with it
    #   ("cut" / modular inference: no feedback into the coefficients) estimates sigma_dep,
    #   whose draws are attached to the fit (group deployment_spread) and scale the factor a new
    #   deployment draws. Without a group of >= 2 deployments the prior above is used.
    # "off": no deployment spread (parameter uncertainty only).
    "deployment_level": "spread",
    # noise: s_abs[k] ~ HalfNormal(s_abs_frac * median(y_k)); s_rel[k] ~ HalfNormal(s_rel)
    "s_abs_frac": 0.5,
    "s_rel": 0.3,
    # s_sys[k] ~ HalfNormal(s_sys): relative error common to all steps of a row
    "s_sys": 0.05,
    # nu[kind] = 2 + nu_m2[kind], nu_m2 ~ Gamma(nu_alpha, nu_beta) (mean 10): the location is the mean (nu > 2).
    # Mean 10, not 20: the traced-step rows are near Gaussian but for rare slow steps; with the
    # prior mean at 20 one 12-step window of 70B general at +10% of its prediction (6 sigma of the
    # step noise) had Pareto k 0.84 (nu 13 [5, 27]); at mean 10: k 0.67-0.69, nu 9.8, coefficients
    # unchanged to 1%. Windows and TTFT rows sit at nu ~2.1 under either prior.
    "nu_alpha": 2.0,
    "nu_beta": 0.2,
    # beta features held at 0 (not fitted). step_overhead: a constant per step is not identified
    # next to layer_overhead (L), tp_sync_overhead (2L at TP > 1) and weight loading when the
    # training set has fewer deployments than per-deployment constants (the 4 bundled ones);
    # measured on the real data: bulk ESS 8-35 along that ridge for any prior shape. Fitting data
    # with more deployments can release it: priors={"exclude_features": []}.
    # prefill_overhead: with chunked prefill a step holds 1-2 prefilling requests at these budgets,
    # so the count is identified only by the mixed-vs-decode contrast, which the regime factor
    # already carries; next to context_overhead (prefill contexts) it was pruned anyway.
    "exclude_features": ["step_overhead", "prefill_overhead"],
}

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
    for k in ("kind", "n_steps", "hw", "cls", "run", "request", "deployment"):
        if out[k].shape != (n,):
            raise SpecError(f"expected shape ({n},), got {out[k].shape}", field=k)
    if n == 0:
        raise SpecError("no observations", field="y")
    for k in ("y", "X", "A", "n_steps"):
        if not np.all(np.isfinite(out[k])):
            raise SpecError("non-finite values", field=k)
    if np.any(out["X"] < 0) or np.any(out["A"] < 0):
        raise SpecError("features must be non-negative", field="X/A")
    if out["kind"].min() < 0 or out["kind"].max() >= len(KINDS):
        raise SpecError(f"kind must index {KINDS}", field="kind")
    if out["hw"].min() < 0 or out["hw"].max() >= len(out["hardware_levels"]):
        raise SpecError("hw index out of range of hardware_levels", field="hw")
    if out["cls"].min() < 0 or out["cls"].max() >= len(out["class_levels"]):
        raise SpecError("cls index out of range of class_levels", field="cls")
    return out


#: the libraries whose versions a fit records (attrs ``library_versions``)
VERSIONED_LIBRARIES = ("numpy", "scipy", "pymc", "pytensor", "nutpie", "numba", "numpyro", "jax", "arviz")


def library_versions() -> dict:
    """Python's and the installed :data:`VERSIONED_LIBRARIES`' versions, as a fit stores them
    (attrs ``library_versions``): a seed reproduces a fit draw for draw in one environment; a
    release of the sampler or of numpy may not, and the attrs then say what differs."""
    import platform
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in VERSIONED_LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def data_hash(obs) -> str:
    """sha256 of the design arrays and levels of an ObsTable (order-sensitive)."""
    d = check_obs(obs) if not isinstance(obs, dict) else obs
    h = hashlib.sha256()
    for k in ("kind", "y", "X", "A", "n_steps", "hw", "cls", "request"):
        a = np.ascontiguousarray(d[k])
        h.update(k.encode())
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    h.update("\x1f".join(d["run"].tolist()).encode())
    h.update(json.dumps([d["hardware_levels"], d["class_levels"]]).encode())
    return h.hexdigest()


def _merge_priors(priors: dict | None) -> dict:
    p = json.loads(json.dumps(DEFAULT_PRIORS))
    for k, v in (priors or {}).items():
        if k not in p:
            raise SpecError(f"unknown prior {k!r}; known: {sorted(p)}", field="priors")
        p[k] = v
    if p["deployment_level"] not in DEPLOYMENT_LEVELS:
        raise SpecError(f"deployment_level must be one of {DEPLOYMENT_LEVELS}, got {p['deployment_level']!r}", field="priors")
    for key in ("exclude_features", "no_class_deviation"):
        unknown = sorted(set(p[key]) - set(F.BETA_NAMES))
        if unknown:
            raise SpecError(f"{key}: unknown beta features {unknown}; known: {list(F.BETA_NAMES)}", field="priors")
    for key, names in (("alpha_lognormal", F.ALPHA_NAMES), ("beta_lognormal", F.BETA_NAMES)):
        ln = p[key] or {}
        bad = sorted(set(ln) - set(names))
        if bad:
            raise SpecError(f"{key}: unknown features {bad}; known: {list(names)}", field="priors")
        for k, v in ln.items():
            if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) and x > 0 for x in v)):
                raise SpecError(f"{key}[{k!r}] must be [median > 0, sd > 0], got {v!r}", field="priors")
    for k, names in (("beta_scale", F.BETA_NAMES), ("alpha_scale", F.ALPHA_NAMES)):
        v = np.asarray(p[k], dtype=float)
        if v.ndim > 1 or (v.ndim == 1 and v.size not in (1, len(names))):
            raise SpecError(f"{k} must be one number or {len(names)} ({', '.join(names)}), got {v.size}: {p[k]!r}",
                            field="priors")
        p[k] = [float(x) for x in np.broadcast_to(v, (len(names),))]
    return p


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
    cmask = np.zeros(cells, dtype=bool) if centred is None else np.broadcast_to(np.asarray(centred, dtype=bool), tuple(other)).ravel()
    amask = np.ones(cells, dtype=bool) if active is None else np.broadcast_to(np.asarray(active, dtype=bool), tuple(other)).ravel()
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
    # alpha class deviations: centred for alpha features that vary within every class (prompt
    # length, queue depth), non-centred for the constant (identified only by the class's level)
    A = d["A"]
    acls = np.zeros((H, F.N_ALPHA), dtype=bool)
    for h in range(H):
        ok, seen = np.ones(F.N_ALPHA, dtype=bool), 0
        for c in range(C):
            m = (d["hw"] == h) & (d["cls"] == c) & (A.sum(axis=1) > 0)
            if not m.any():
                continue
            seen += 1
            v = A[m]
            mean = v.mean(axis=0)
            cv = np.where(mean > 0, v.std(axis=0) / np.maximum(mean, 1e-300), 0.0)
            ok &= (m.sum() >= min_rows) & (cv >= min_cv)
        acls[h] = ok & (seen >= 2)
    return {"regime": bool((reg_rows >= min_rows).all()), "cls": cls, "cls_active": cls, "alpha_cls": acls,
            "regime_ref": 0 if reg_rows[0] >= min_rows else int(np.argmax(reg_rows)),
            "regime_centred": reg_rows >= 100, "regime_rows": reg_rows}


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

        a, b = p["shape_a"], p["shape_b"]
        present = np.abs(d["X"]).sum(axis=(0, 1)) > 0
        fixed = np.isin(np.asarray(F.BETA_NAMES), p["exclude_features"])
        bln = p.get("beta_lognormal") or {}
        lnm = np.isin(np.asarray(F.BETA_NAMES), list(bln))
        ip, ia = np.flatnonzero(present & ~fixed & ~lnm), np.flatnonzero(~present & ~fixed & ~lnm)
        il = np.flatnonzero(~fixed & lnm)  # present or not: their own physics prior
        w = pm.Beta("beta_pop_w", alpha=a, beta=b, shape=ip.size)
        bp = pt.zeros(F.N_BETA)
        bp = pt.set_subtensor(bp[ip], np.asarray(p["beta_scale"])[ip] * w / (1.0 - w))
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
            wa = pm.Beta("alpha_pop_w", alpha=a, beta=b, shape=ish.size)
            ap = pt.set_subtensor(ap[ish], np.asarray(p["alpha_scale"])[ish] * wa / (1.0 - wa))
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
        # sigma_regime -> 2.4 and saturated trees. See specs/method.md.
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
        adev = pt.zeros((H, C, F.N_ALPHA))
        if st["use_hw"]:
            dev = dev + _zerosum(pm, "dev_hw", sig_hw, ("hardware", "feature"), axis=0)[:, None, None, :]
            adev = adev + _zerosum(pm, "dev_alpha_hw", sig_ahw, ("hardware", "alpha_feature"), axis=0)[:, None, :]
        if st["use_cls"]:
            dev = dev + _zerosum(pm, "dev_cls", sig_cls, ("hardware", "model_class", "feature"), axis=1,
                                 centred=cen["cls"], active=cen["cls_active"])[:, :, None, :]
            adev = adev + _zerosum(pm, "dev_alpha_cls", sig_acls, ("hardware", "model_class", "alpha_feature"), axis=1,
                                   centred=cen["alpha_cls"])
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
                db = pt.set_subtensor(db[g], pt.dot(Q, ub[o:o + len(g) - 1]))
                da = pt.set_subtensor(da[g], pt.dot(Q, ua[o:o + len(g) - 1]))
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
        model.add_coord("sys_kind", list(SYS_KINDS))
        s_sys_k = pm.HalfNormal("s_sys", p["s_sys"], dims="sys_kind")
        s_sys = pt.concatenate([s_sys_k, pt.zeros(len(KINDS) - len(SYS_KINDS))])
        scale = s_abs[kind] + (s_rel[kind] / pt.sqrt(pt.maximum(n_steps, 1.0)) + s_sys[kind]) * mu
        pm.StudentT("y", nu=nu[kind], mu=mu, sigma=scale, observed=d["y"], dims="obs_id")
    return model


# ---------------------------------------------------------------------------------------------
# Fitting
# ---------------------------------------------------------------------------------------------
def available_backends() -> list[str]:
    out = []
    for name, mod in (("nutpie", "nutpie"), ("pymc", "pymc"), ("numpyro", "numpyro")):
        try:
            __import__(mod)
            out.append(name)
        except ImportError:
            pass
    return out


def _sample(model, backend, draws, tune, chains, seed, progressbar, target_accept):
    import pymc as pm

    cores = max(1, min(chains, os.cpu_count() or 1))
    if backend == "nutpie":
        import nutpie

        compiled = nutpie.compile_pymc_model(model)
        idata = nutpie.sample(compiled, draws=draws, tune=tune, chains=chains, cores=cores, seed=seed,
                              progress_bar=progressbar, save_warmup=False, target_accept=target_accept,
                              # the additive log-scale decomposition (population + levels) leaves a
                              # few strongly correlated directions: the low-rank mass matrix learns them
                              low_rank_modified_mass_matrix=True)
    elif backend in ("pymc", "numpyro"):
        kw = {"nuts_sampler": "numpyro"} if backend == "numpyro" else {}
        if backend == "numpyro" and "jax" not in __import__("sys").modules:
            # one XLA host device per chain, or JAX runs the chains one after the other
            flags = os.environ.get("XLA_FLAGS", "")
            if "xla_force_host_platform_device_count" not in flags:
                os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={cores}".strip()
        with model:
            idata = pm.sample(draws=draws, tune=tune, chains=chains, cores=cores, random_seed=seed,
                              progressbar=progressbar, target_accept=target_accept,
                              compute_convergence_checks=False, **kw)
    else:
        raise SpecError(f"unknown backend {backend!r}; choose from {BACKENDS}", field="backend")
    return idata


def fit(obs, *, backend: str | None = None, draws: int | None = None, tune: int | None = None,
        chains: int | None = None, seed: int = 0, progressbar: bool = True, priors: dict | None = None,
        target_accept: float | None = None, attrs: dict | None = None, spread_draws: int | None = None):
    """Fit the hierarchical model to an ObsTable with NUTS; return ``arviz.InferenceData``.

    With ``deployment_level = "spread"`` (the default prior) and a (hardware, class) group of >= 2
    deployments, a second fit with the deployment level (``spread_draws`` draws and as many tune
    steps, default ``min(draws, SPREAD_DRAWS)``) estimates the between-deployment spread, attached
    as group ``deployment_spread`` (:func:`attach_deployment_spread`).

    The result has groups posterior (named dims hardware, model_class, regime, feature,
    alpha_feature), sample_stats, log_likelihood (``y``, for PSIS-LOO), observed_data and
    constant_data, and ``attrs`` with the format, feature names / units / scales, spec version,
    levels, seed, sampler config, backend, package version, priors and the data hash, and (where
    ``obs.meta["specs"]`` has them) ``training_deployments``: each training run's model config,
    datasheet and server config (:func:`bayeslat.data.design.training_specs_json`), what
    ``bayeslat check`` compares a configuration with. Extra
    ``attrs`` (e.g. ``{"bundled_data_hash": datasets.data_hash()}``) are stored too.
    """
    import arviz as az
    import pymc as pm
    import xarray as xr

    import bayeslat

    d = check_obs(obs)
    backend = backend or DEFAULT_BACKEND
    if backend not in available_backends():
        raise SpecError(f"backend {backend!r} is not installed (available: {available_backends()})", field="backend")
    cfg = dict(DEFAULT_SAMPLER)
    for k, v in (("draws", draws), ("tune", tune), ("chains", chains), ("target_accept", target_accept)):
        if v is not None:
            cfg[k] = v
    model = build_model(d, priors)
    t0 = time.perf_counter()
    idata = _sample(model, backend, int(cfg["draws"]), int(cfg["tune"]), int(cfg["chains"]), int(seed), progressbar,
                    float(cfg["target_accept"]))
    t_sample = time.perf_counter() - t0
    keep = [g for g in ("posterior", "sample_stats") if g in idata.groups()]
    idata = az.InferenceData(**{g: idata[g] for g in keep})
    # Thin to at most MAX_SAVED_DRAWS per chain before the pointwise log-likelihood (which is
    # rows x draws): long chains are for ESS, not for storage. The divergences of every draw
    # are kept in the attrs (diagnose reports the larger count).
    n_div_all = int(idata.sample_stats["diverging"].sum()) if "diverging" in idata.sample_stats else 0
    thin = max(1, -(-int(cfg["draws"]) // MAX_SAVED_DRAWS))
    if thin > 1:
        idata = idata.isel(draw=slice(None, None, thin))
    with model:
        pm.compute_log_likelihood(idata, var_names=["y"], extend_inferencedata=True, progressbar=False)
    n = len(d["y"])
    oid = np.arange(n)
    idata.add_groups(
        observed_data=xr.Dataset({"y": ("obs_id", d["y"])}, coords={"obs_id": oid}),
        constant_data=xr.Dataset(
            {
                "X": (("obs_id", "regime", "feature"), d["X"]),
                "A": (("obs_id", "alpha_feature"), d["A"]),
                "kind": ("obs_id", d["kind"]),
                "n_steps": ("obs_id", d["n_steps"]),
                "hw": ("obs_id", d["hw"]),
                "cls": ("obs_id", d["cls"]),
                "run": ("obs_id", d["run"].astype("U")),
                "deployment": ("obs_id", d["deployment"].astype("U")),
                "request": ("obs_id", d["request"]),
            },
            coords={"obs_id": oid, "regime": list(F.REGIMES), "feature": list(F.BETA_NAMES),
                    "alpha_feature": list(F.ALPHA_NAMES)},
        ),
    )
    st = _structure(d)
    present = (np.abs(d["X"]).sum(axis=(0, 1)) > 0)
    info = {
        "format": FORMAT,
        "spec_version": F.SPEC_VERSION,
        "package_version": bayeslat.__version__,
        "library_versions": json.dumps(library_versions()),
        "backend": backend,
        "seed": int(seed),
        "sampler": json.dumps(cfg),
        "sampling_seconds": float(t_sample),
        "priors": json.dumps(_merge_priors(priors)),
        "data_hash": data_hash(d),
        "n_obs": int(n),
        "kinds": json.dumps(list(KINDS)),
        "kind_counts": json.dumps(np.bincount(d["kind"], minlength=len(KINDS)).tolist()),
        "hardware_levels": json.dumps(list(d["hardware_levels"])),
        "class_levels": json.dumps(list(d["class_levels"])),
        "group_rows": json.dumps(st["group_rows"]),
        "deployments": json.dumps(sorted(set(d["deployment"].tolist()))),
        "use_hw": st["use_hw"],
        "use_cls": st["use_cls"],
        "feature_names": json.dumps(list(F.BETA_NAMES)),
        "feature_units": json.dumps(list(F.BETA_UNITS)),
        "feature_scales": json.dumps(F.BETA_SCALE.tolist()),
        "feature_present": json.dumps([F.BETA_NAMES[i] for i in np.flatnonzero(present)]),
        "alpha_feature_names": json.dumps(list(F.ALPHA_NAMES)),
        "alpha_feature_units": json.dumps(list(F.ALPHA_UNITS)),
        "alpha_feature_scales": json.dumps(F.ALPHA_SCALE.tolist()),
        "regimes": json.dumps(list(F.REGIMES)),
        "offset_vars": json.dumps([v for v in idata.posterior.data_vars if v.startswith(OFFSET_PREFIXES)] + list(HELPER_VARS)),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "thin": int(thin),
        "divergences_all_draws": n_div_all,
    }
    # each training run's model config, datasheet and server config (ObsTable meta "specs"), so
    # that `bayeslat check` can compare a configuration with the training deployments of any fit,
    # bundled or not (transfer.training_deployments)
    specs = (getattr(obs, "meta", None) or {}).get("specs")
    from bayeslat.data import design
    txt = design.training_specs_json(specs, runs=set(d["run"].tolist())) if specs else None
    if txt:
        info["training_deployments"] = txt
    for k, v in (attrs or {}).items():
        info[k] = v if isinstance(v, (str, int, float)) else json.dumps(v)
    idata.attrs.update(info)
    p = json.loads(info["priors"])
    if p["deployment_level"] == "spread" and p["sigma_dep"] > 0:
        if _deployment_groups(d)[2]:
            sd_n = int(spread_draws or min(int(cfg["draws"]), SPREAD_DRAWS))
            t1 = time.perf_counter()
            sp = fit(obs, backend=backend, draws=sd_n, tune=sd_n, chains=cfg["chains"], seed=seed,
                     progressbar=progressbar, priors=(priors or {}) | {"deployment_level": "fit"},
                     target_accept=cfg["target_accept"])
            attach_deployment_spread(idata, sp, {"wall_seconds": time.perf_counter() - t1})
    attach_run_spread(idata, seed=seed)
    return idata


def save(idata, path) -> Path:
    """Write a fitted InferenceData to netCDF (creating parent directories). The file is written
    next to ``path`` and moved over it, so a fit loaded from ``path`` (whose arrays may still be
    read lazily from it) can be saved back to it, and a failed write leaves the old file."""
    path = Path(path)
    if idata.attrs.get("format") != FORMAT:
        raise SpecError(f"not a bayeslat fit (format {idata.attrs.get('format')!r})", file=str(path), field="format")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        idata.to_netcdf(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load(path):
    """Read a fit written by :func:`save`; refuse files of another format."""
    import arviz as az

    path = Path(path)
    if not path.exists():
        raise SpecError("no such file", file=str(path))
    if path.is_dir():
        raise SpecError("is a directory, not a fitted netCDF file", file=str(path))
    try:
        idata = az.from_netcdf(str(path))
    except (OSError, ValueError) as e:  # what netCDF4 / h5py / xarray raise for a file that is no netCDF
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SpecError(f"not a netCDF file of a bayeslat fit ({msg})", file=str(path)) from None
    fmt = idata.attrs.get("format")
    if fmt != FORMAT:
        raise SpecError(f"expected format {FORMAT!r}, got {fmt!r}", file=str(path), field="format")
    sv = idata.attrs.get("spec_version")
    if sv != F.SPEC_VERSION:
        raise SpecError(f"fitted on features {sv!r}, this bayeslat computes {F.SPEC_VERSION!r}: refit it "
                        "(bayeslat fit) with this version", file=str(path), field="spec_version")
    return idata


DEFAULT_MODEL = Path(__file__).parent.parent / "data" / "models" / "default.nc"


def load_default():
    """The shipped default fit (``models/default.nc``: the bundled real runs)."""
    return load_or_default(None)


def load_or_default(path=None):
    """Load the fit at ``path``, or the shipped default when ``path`` is None; a missing file is
    a SpecError naming it."""
    mpath = Path(path) if path else DEFAULT_MODEL
    if not mpath.exists():
        raise SpecError("fitted model not found" + ("" if path else " (no default fit shipped: run `bayeslat fit`"
                                                    " and pass --model PATH)"), file=str(mpath))
    return load(mpath)


def attr_json(idata, key, default=None):
    v = idata.attrs.get(key, None)
    if v is None:
        return default
    try:
        return json.loads(v) if isinstance(v, str) else v
    except json.JSONDecodeError:
        return v


# ---------------------------------------------------------------------------------------------
# Posterior coefficient draws (seen and unseen groups)
# ---------------------------------------------------------------------------------------------
@dataclass
class CoefDraws:
    beta: np.ndarray       # (D, N_REGIMES, N_BETA) ms per scaled unit
    alpha: np.ndarray      # (D, N_ALPHA) ms per scaled unit
    sigma_rel: np.ndarray  # (D,) relative per-step noise (s_rel of step rows)
    new_levels: list       # "hardware" / "model_class" drawn from the population distribution
    class_from: list = field(default_factory=list)  # hardware whose class deviation a new hardware x class cell took
    s_abs: np.ndarray | None = None  # (D, n_kinds)
    s_rel: np.ndarray | None = None  # (D, n_kinds)
    s_sys: np.ndarray | None = None  # (D, n_kinds) relative error common to the steps of a row
    nu: np.ndarray | None = None     # (D, n_kinds) Student-t degrees of freedom per kind
    draw_index: np.ndarray | None = None  # (D,) which flattened posterior draws were used
    new_deployment: bool = False     # the deployment factors were drawn from N(0, sigma_dep)
    sim_sd: dict | None = None       # {"ttft"|"itl"|"e2e"[_p90|_p99]: log-scale SD} of the simulator's run-level
    #                                  discrepancy (validate.attach_sim_discrepancy), for new runs


def _pad_kinds(v, n):
    """(D, k) per-kind values of the first k kinds -> (D, n), zeros for the others."""
    return v if v.shape[1] >= n else np.concatenate([v, np.zeros((v.shape[0], n - v.shape[1]))], axis=1)


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
    (``deployment_update.draw_weight``, :func:`bayeslat.transfer.update_deployment`), or None."""
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
    deployment read as a run (:func:`bayeslat.transfer.update_deployment`, ``level``): they
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
        return (np.exp(np.log(pri["sigma_dep"]) + sd * rng.standard_normal(n)),
                np.exp(np.log(pri.get("sigma_alpha_dep", pri["sigma_dep"])) + sd * rng.standard_normal(n)))
    sb, sa = _flat(src, "sigma_dep"), _flat(src, "sigma_alpha_dep")
    i = rng.choice(len(sb), size=n, replace=n > len(sb))
    return sb[i], sa[i]


def trained_deployment(idata, key: str) -> bool:
    """Whether the fit was trained on deployment ``key``: a level of its deployment factors ("fit"
    mode) or listed in its attrs ``deployments``."""
    post = idata.posterior
    return ("deployment" in post.coords and key in [str(v) for v in post.coords["deployment"].values]) \
        or key in (attr_json(idata, "deployments", []) or [])


def attach_deployment_spread(idata, spread_idata, info: dict | None = None):
    """Attach the sigma_dep / sigma_alpha_dep draws of a fit with the deployment level ("fit") to
    a fit without it, as group ``deployment_spread`` (the "spread" mode, see DEFAULT_PRIORS);
    ``spread_idata`` may also be a fit that has such a group (it is carried over). Returns
    ``idata``."""
    import xarray as xr

    carried = "deployment_spread" in spread_idata.groups()  # a fit with an attached spread: carry it over
    sp = spread_idata["deployment_spread"] if carried else spread_idata.posterior
    if "sigma_dep" not in sp:
        raise SpecError("the spread fit has no sigma_dep (fit it with priors={'deployment_level': 'fit'})", field="spread_idata")
    keep = ["sigma_dep", "sigma_alpha_dep"] + [v for v in ("dev_dep", "dev_alpha_dep") if v in sp]
    ds = xr.Dataset({v: sp[v] for v in keep})
    if "deployment_spread" in idata.groups():
        del idata["deployment_spread"]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a group outside the InferenceData schema
        idata.add_groups({"deployment_spread": ds})
    meta = (attr_json(spread_idata, "deployment_spread", {}) or {}) if carried else {
            "data_hash": spread_idata.attrs.get("data_hash"), "sampler": attr_json(spread_idata, "sampler"),
            "sampling_seconds": spread_idata.attrs.get("sampling_seconds"),
            "divergences": (int(spread_idata.sample_stats["diverging"].sum())
                            if "sample_stats" in spread_idata.groups() and "diverging" in spread_idata.sample_stats else None)}
    if not carried:
        # the spread fit's sample stats are not kept: what diagnose checks of them is recorded here
        # (its divergences over every draw too: the stats it keeps are thinned)
        meta |= sampler_health(spread_idata)
        if spread_idata.attrs.get("divergences_all_draws") is not None:
            meta["divergences_all_draws"] = int(spread_idata.attrs["divergences_all_draws"])
    idata.attrs["deployment_spread"] = json.dumps(meta | (info or {}))
    return idata


def sampler_health(idata) -> dict:
    """``min_bfmi`` (the smallest per-chain energy BFMI; NaN for a constant or non-finite energy)
    and ``tree_depth_saturation`` (the share of draws at the maximum tree depth) of a fit's sample
    stats; a value the stats have nothing for is left out (diagnose reports it as missing)."""
    import arviz as az

    out = {}
    if "sample_stats" not in idata.groups():
        return out
    ss = idata.sample_stats
    if "energy" in ss:
        with np.errstate(all="ignore"):
            b = np.asarray(az.bfmi(idata), dtype=float)
        out["min_bfmi"] = float(b.min()) if b.size else float("nan")
    for key in ("maxdepth_reached", "reached_max_treedepth"):
        if key in ss:
            out["tree_depth_saturation"] = float(np.mean(ss[key].values))
            break
    return out


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


def run_residuals(idata, seed: int = 0) -> "pd.DataFrame":
    """Per training run of a fit: its deployment and how far its rows sit from the fit, as log
    factors with bootstrap standard errors. ``step``: log(sum y / sum mu) of its step and window
    rows; ``alpha``: the log of the factor f on the CPU part that best explains its TTFT rows,
    ``y ~ mu_step + f mu_cpu`` in absolute error (a weighted median, robust to the queueing
    outliers of TTFT rows); NaN where the run has fewer rows than ``RUN_SPREAD`` asks."""
    import pandas as pd

    cd = idata.constant_data
    y = idata.observed_data["y"].values
    kind = cd["kind"].values.astype(int)
    run = cd["run"].values.astype(str)
    dep = cd["deployment"].values.astype(str) if "deployment" in cd else run
    mub, mua = _row_means(idata)
    rng = np.random.default_rng(seed + 11)
    cfg = RUN_SPREAD
    out = []
    for r in np.unique(run):
        m = run == r
        row = {"run": r, "deployment": dep[m][0], "step": np.nan, "step_se": np.nan, "alpha": np.nan, "alpha_se": np.nan,
               "step_rows": 0, "ttft_rows": 0}
        s = m & (kind <= 1) & (mub + mua > 0)
        ys, ms = y[s], (mub + mua)[s]
        row["step_rows"] = int(s.sum())
        if s.sum() >= cfg["min_step_rows"]:
            row["step"] = float(np.log(ys.sum() / ms.sum()))
            b = rng.integers(0, len(ys), (cfg["boot"], len(ys)))
            row["step_se"] = float(np.std(np.log(ys[b].sum(1) / ms[b].sum(1))))
        t = m & (kind == KINDS.index("ttft")) & (mua > 0)
        row["ttft_rows"] = int(t.sum())
        if t.sum() >= cfg["min_ttft_rows"]:
            ratio, w = (y[t] - mub[t]) / mua[t], mua[t]
            f = [_weighted_median(ratio, w)]
            for _ in range(cfg["boot"]):
                i = rng.integers(0, len(ratio), len(ratio))
                f.append(_weighted_median(ratio[i], w[i]))
            f = np.log(np.maximum(np.asarray(f), 0.05))
            row["alpha"], row["alpha_se"] = float(f[0]), float(np.std(f[1:]))
        out.append(row)
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
            C = dep_sd ** 2 * np.ones((k, k)) + np.diag(sg ** 2 + se[m] ** 2)
            sign, logdet = np.linalg.slogdet(C)
            logp[i] += -0.5 * (logdet + e[m] @ np.linalg.solve(C, e[m]))
    p = np.exp(logp - logp.max())
    return grid, p / p.sum()


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
    import xarray as xr

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
        info[part] = {"runs_informing": int(counts[counts >= 2].sum()), "median": float(np.median(draws)),
                      "q05": float(np.quantile(draws, 0.05)), "q95": float(np.quantile(draws, 0.95))}
    if "run_spread" in idata.groups():
        del idata["run_spread"]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a group outside the InferenceData schema
        idata.add_groups({"run_spread": xr.Dataset(ds, coords={"chain": [0], "draw": np.arange(int(cfg["draws"]))})})
    idata.attrs["run_spread"] = json.dumps(info)
    return idata


def coefficient_draws(idata, hardware: str, model_class: str, n: int | None = None, seed: int = 0,
                      new_run: bool = True, deployment: str | None = None) -> CoefDraws:
    """Posterior draws of the coefficients of group (hardware, model_class).

    A hardware not in the fit gets its deviation drawn from the fitted population distribution,
    ``N(0, sigma_hw)`` on the log scale per draw and feature, so its intervals are wider; a model
    class no hardware of the fit has seen gets ``N(0, sigma_cls)``. Those levels are listed in
    ``new_levels``. A class the fit saw on *other* hardware (dense on an A100 when the fit has
    dense on the H100) keeps that class deviation (the row-weighted mean over the hardware it was
    fit on; ``class_from`` names them) plus an unmeasured hardware x class interaction drawn from
    ``N(0, sigma_hw)``: what makes a class differ from the population (MoE grouped GEMMs, the
    per-layer work of dense models) is architecture, not the GPU. Drawing the whole class
    deviation afresh instead mixes up "how different the classes are" (``sigma_cls``, 0.66 in the
    default fit, from dense vs MoE) with "how a class differs between GPUs": with 15 independent
    ``exp(N(0, 0.66))`` factors the draws' median step time is far above the physics (default
    fit, Llama-2-7B codegen on an A100: median ITL 18 ms, against 11 ms with the H100 dense
    coefficients; on an L40S 109 ms against 35 ms).

    ``deployment`` (:func:`bayeslat.features.deployment_key` of the configuration): a deployment
    of the fit gets its fitted factors; any other key is a new deployment whose factors are drawn
    from ``N(0, sigma_dep)`` / ``N(0, sigma_alpha_dep)`` (``new_deployment``), which is what a
    prediction for a configuration never run must carry. None: the group's coefficients (the
    geometric mean over its deployments; what ``export`` writes, with ``new_run=False``).

    A new level's deviation is one fixed standard-normal vector per posterior draw, seeded by the
    level's name: the same in every call for that draw, whatever ``n`` and ``seed`` select. After
    a probe update of ``deployment`` (:func:`bayeslat.transfer.update_deployment`), the draws are
    resampled by the update's weights (``deployment_update.draw_weight``, :func:`update_weights`).

    ``new_run`` (default True): the draws are for a new run, so each also carries a between-run
    factor, ``exp(sigma_run_step z)`` on beta and ``exp(sigma_run_alpha z')`` on alpha (group
    ``run_spread``, :func:`attach_run_spread`): what every prediction of a workload needs. False:
    the coefficients themselves (exports, point summaries, the fit's own rows); their means are
    not inflated by the ``exp(sigma^2 / 2)`` of the run factors. After a probe update of a trained
    ``deployment`` read as a run (:func:`run_update_factors`), its draws carry the probed run's
    factors instead of a new run's: the prediction is of the probed run. With ``new_run``, ``sim_sd`` also
    carries the fit's simulator discrepancy (attrs ``sim_discrepancy``), which widens the workload
    intervals of :func:`bayeslat.simulate.posterior_predictive`.
    """
    post = idata.posterior
    hw_levels = [str(v) for v in post.coords["hardware"].values]
    cls_levels = [str(v) for v in post.coords["model_class"].values]
    rows = np.asarray(attr_json(idata, "group_rows", np.ones((len(hw_levels), len(cls_levels)))))
    use_hw = "dev_hw" in post
    use_cls = "dev_cls" in post
    beta_pop = _flat(post, "beta_pop")
    D = beta_pop.shape[0]
    rng = np.random.default_rng(seed)
    w = update_weights(idata, deployment) if deployment is not None else None
    if w is not None:  # a probe update reweighted the draws (transfer.update_deployment): resample
        sel = np.sort(rng.choice(D, size=D if n is None else int(n), replace=True, p=w))
    else:
        sel = np.arange(D) if n is None else rng.choice(D, size=int(n), replace=int(n) > D)
    beta_pop = beta_pop[sel]
    alpha_pop = _flat(post, "alpha_pop")[sel]
    Dn = len(sel)
    Fb, Fa = F.N_BETA, F.N_ALPHA
    g = {k: _flat(post, k)[sel] for k in ("sigma_hw", "sigma_cls", "sigma_regime", "sigma_alpha_hw", "sigma_alpha_cls")}

    def _z(tag: str, shape: tuple) -> np.ndarray:
        # standard normals of a new level: one fixed vector per posterior draw, seeded by the
        # level's name (not by ``seed``), so that a probe update (transfer.update_deployment,
        # which conditions each draw's deployment factors on that draw's coefficients) and every
        # later prediction see the same deviation of an unseen GPU / class in the same draw
        return np.random.default_rng(zlib.crc32(tag.encode())).standard_normal((D,) + shape)[sel]

    new = []
    h = hw_levels.index(hardware) if hardware in hw_levels and rows[hw_levels.index(hardware)].sum() > 0 else None
    c = cls_levels.index(model_class) if model_class in cls_levels else None
    if h is None:
        new.append("hardware")
    combo_seen = h is not None and c is not None and rows[h][c] > 0
    # the class fit on other hardware: its deviation transfers (row-weighted over those hardware)
    seen_h = [] if combo_seen or c is None else [i for i in range(len(hw_levels)) if rows[i][c] > 0]
    w_h = np.asarray([rows[i][c] for i in seen_h], dtype=np.float64)
    w_h = w_h / w_h.sum() if len(seen_h) else w_h
    if not combo_seen and not seen_h:
        new.append("model_class")

    def _transfer(name, sigma):
        # (D, ..., F): the class's row-weighted deviation on the hardware it was fit on, plus a
        # hardware x class interaction N(0, sigma) per draw and feature
        v = _flat(post, name)[sel][:, seen_h, c]
        v = np.einsum("dh...,h->d...", v, w_h)
        return v + sigma.reshape((-1,) + (1,) * (v.ndim - 1)) * _z(f"{name}|{hardware}|{model_class}", v.shape[1:])
    # hardware deviation
    if h is not None:
        dh = _flat(post, "dev_hw")[sel][:, h] if use_hw else np.zeros((Dn, Fb))
        ah = _flat(post, "dev_alpha_hw")[sel][:, h] if use_hw else np.zeros((Dn, Fa))
    else:
        dh = g["sigma_hw"][:, None] * _z(f"dev_hw|{hardware}", (Fb,))
        ah = g["sigma_alpha_hw"][:, None] * _z(f"dev_alpha_hw|{hardware}", (Fa,))
    # class and regime deviations
    if combo_seen:
        dc = _flat(post, "dev_cls")[sel][:, h, c] if use_cls else np.zeros((Dn, Fb))
        ac = _flat(post, "dev_alpha_cls")[sel][:, h, c] if use_cls else np.zeros((Dn, Fa))
    elif seen_h:
        dc = (_transfer("dev_cls", g["sigma_hw"]) if use_cls
              else g["sigma_hw"][:, None] * _z(f"dev_cls|{hardware}|{model_class}", (Fb,)))
        ac = (_transfer("dev_alpha_cls", g["sigma_alpha_hw"]) if use_cls
              else g["sigma_alpha_hw"][:, None] * _z(f"dev_alpha_cls|{hardware}|{model_class}", (Fa,)))
    else:
        dc = g["sigma_cls"][:, None] * _z(f"dev_cls|{hardware}|{model_class}", (Fb,))
        ac = g["sigma_alpha_cls"][:, None] * _z(f"dev_alpha_cls|{hardware}|{model_class}", (Fa,))
        # features the fit shares between classes (no_class_deviation) stay shared for a new class
        shared = attr_json(idata, "priors", {}).get("no_class_deviation", [])
        dc[:, np.isin(np.asarray(F.BETA_NAMES), shared)] = 0.0
    # (D, R): one factor per regime, shared by features and groups (build_model's only layout;
    # load() refuses fits of an older feature spec)
    dr = _flat(post, "dev_regime")[sel]
    beta = beta_pop[:, None, :] * np.exp(dh[:, None, :] + dc[:, None, :] + dr[:, :, None])
    alpha = alpha_pop * np.exp(ah + ac)
    new_dep = False
    if deployment is not None:
        # fitted factors: conditioned on a probe of this deployment (transfer.update_deployment),
        # else the fit's own ("fit" mode)
        upd = idata["deployment_update"] if "deployment_update" in idata.groups() else None
        f = _deployment_factors(upd, "probe_deployment", deployment, sel) or _deployment_factors(post, "deployment", deployment, sel)
        if f is None and not trained_deployment(idata, deployment):
            sig = deployment_spread_draws(idata, Dn, rng)
            if sig is not None:
                new_dep = True
                f = ((sig[0] * rng.standard_normal(Dn))[:, None], sig[1] * rng.standard_normal(Dn))
        if f is not None:
            beta = beta * np.exp(f[0])[:, None, :]  # (D, 1) or (D, N_BETA): over regimes
            alpha = alpha * np.exp(f[1])[:, None]
    rs_b = rs_a = None  # log run factors of a new run
    if new_run and "sigma_run" in post:
        # a new run of the group: its run-level factor is drawn from N(0, sigma_run) per draw
        # (new_run=False: the population-average coefficients)
        rs_b = rs_a = _flat(post, "sigma_run")[sel] * rng.standard_normal(Dn)
    elif new_run and "run_spread" in idata.groups():
        # a new run: step-time and CPU factors from the fit's between-run spread (attach_run_spread)
        s_step, s_alpha = run_spread_draws(idata, Dn, rng)
        rs_b = s_step * rng.standard_normal(Dn)
        rs_a = s_alpha * rng.standard_normal(Dn)
    ru = run_update_factors(idata, deployment, sel) if new_run and deployment is not None else None
    if ru is not None:
        # a probe of this (trained) deployment read as a run of it: the probed run's factors,
        # conditioned on the probe, instead of a new run's (transfer.update_deployment, level)
        rs_b, rs_a = ru
    if rs_b is not None:
        beta = beta * np.exp(rs_b)[:, None, None]
        alpha = alpha * np.exp(rs_a)[:, None]
    s_rel = _flat(post, "s_rel")[sel]
    nu = _flat(post, "nu")[sel]
    return CoefDraws(beta=beta, alpha=alpha, sigma_rel=s_rel[:, 0], new_levels=new,
                     class_from=[hw_levels[i] for i in seen_h],
                     s_abs=_flat(post, "s_abs")[sel], s_rel=s_rel, nu=nu, draw_index=sel,
                     s_sys=_pad_kinds(_flat(post, "s_sys")[sel], s_rel.shape[1]) if "s_sys" in post else np.zeros_like(s_rel),
                     new_deployment=new_dep,
                     sim_sd=(attr_json(idata, "sim_discrepancy", {}) or {}).get("sigma") if new_run else None)


def _group_draws(idata, obs, n, seed):
    """{(hw, cls, deployment): CoefDraws} for the groups of an ObsTable's rows (fitted deployments
    get their factors; others a new draw). A deployment with a run-level probe update
    (:func:`run_update_factors`) carries the probed run's factors: the rows are the probed run's."""
    d = check_obs(obs)
    groups = {}
    for hw_i, cls_i, dep in sorted(set(zip(d["hw"].tolist(), d["cls"].tolist(), d["deployment"].tolist()))):
        cd = coefficient_draws(idata, d["hardware_levels"][hw_i], d["class_levels"][cls_i], n=n,
                               seed=seed, new_run=False, deployment=dep)
        ru = run_update_factors(idata, dep, cd.draw_index)
        if ru is not None:
            cd = replace(cd, beta=cd.beta * np.exp(ru[0])[:, None, None], alpha=cd.alpha * np.exp(ru[1])[:, None])
        groups[(hw_i, cls_i, dep)] = cd
    return d, groups


def _group_mask(d, key):
    h, c, dep = key
    return (d["hw"] == h) & (d["cls"] == c) & (d["deployment"] == dep)


def _run_factors(idata, d, cd, seed, deployment=None):
    """(D, n_rows) run-level factors: the fitted one for runs in the fit, a new draw otherwise; 1
    for a deployment whose probed run's factors ``cd`` already carries (:func:`run_update_factors`)."""
    post = idata.posterior
    rows = np.asarray(d["run"]).astype(str)
    D = len(cd.draw_index)
    if "run_factor" not in post or (deployment is not None and run_update_factors(idata, deployment, cd.draw_index) is not None):
        return np.ones((D, len(rows)))
    fitted = [str(r) for r in post.coords["run"].values]
    rf = _flat(post, "run_factor")[cd.draw_index]
    rng = np.random.default_rng(seed + 7)
    out = np.empty((D, len(rows)))
    for r in np.unique(rows):
        m = rows == r
        if r in fitted:
            out[:, m] = rf[:, fitted.index(r)][:, None]
        else:
            out[:, m] = np.exp(_flat(post, "sigma_run")[cd.draw_index] * rng.standard_normal(D))[:, None]
    return out


def predict_mean(idata, obs, n: int | None = None, seed: int = 0) -> np.ndarray:
    """Posterior draws (D, n_rows) of the mean duration ``mu`` (ms) of every row of an ObsTable."""
    d, groups = _group_draws(idata, obs, n, seed)
    D = next(iter(groups.values())).beta.shape[0]
    mu = np.empty((D, len(d["y"])))
    for key, cd in groups.items():
        m = _group_mask(d, key)
        mu[:, m] = (np.einsum("nrf,drf->dn", d["X"][m], cd.beta) + cd.alpha @ d["A"][m].T) \
            * _run_factors(idata, {"run": np.asarray(d["run"])[m]}, cd, seed, deployment=key[2])
    return mu


def noise_terms(cd: CoefDraws, kind, n_steps) -> tuple[np.ndarray, np.ndarray]:
    """(s_abs, c_rel), each (D, n rows), of the likelihood's scale ``s_abs + c_rel * mu`` for rows of
    ``kind`` spanning ``n_steps`` steps (build_model: ``c_rel = s_rel / sqrt(n) + s_sys``)."""
    return cd.s_abs[:, kind], cd.s_rel[:, kind] / np.sqrt(np.maximum(n_steps, 1.0)) + cd.s_sys[:, kind]


def posterior_predictive(idata, obs, n: int | None = None, seed: int = 0, level_error: dict | None = None) -> np.ndarray:
    """Posterior predictive draws (D, n_rows) of observed durations (ms), Student-t noise included.

    ``level_error`` ({kind name: (mu, tau)}, log scale; default None): the rows are a slice of a
    run the fit has not seen, so the rows of one kind in one run share a level error
    ``e ~ N(mu, tau)`` per draw on top of their own noise (the between-run spread and the slice's
    offset from its run: :func:`bayeslat.transfer.probe_level_error`). None: the rows are scored
    as the fit's own (in-sample) rows. Kinds missing from the dict get no level error."""
    d, groups = _group_draws(idata, obs, n, seed)
    rng = np.random.default_rng(seed + 1)
    D = next(iter(groups.values())).beta.shape[0]
    out = np.empty((D, len(d["y"])))
    for key, cd in groups.items():
        m = _group_mask(d, key)
        mu = (np.einsum("nrf,drf->dn", d["X"][m], cd.beta) + cd.alpha @ d["A"][m].T) \
            * _run_factors(idata, {"run": np.asarray(d["run"])[m]}, cd, seed, deployment=key[2])
        k = d["kind"][m]
        if level_error:
            mu = mu * _level_factors(level_error, k, np.asarray(d["run"])[m], D, rng)
        s_abs, c_rel = noise_terms(cd, k, d["n_steps"][m])
        out[:, m] = mu + (s_abs + c_rel * mu) * rng.standard_t(cd.nu[:, k], size=mu.shape)
    return out


def _level_factors(level_error: dict, kind, run, D: int, rng) -> np.ndarray:
    """(D, n) factors exp(e), one e ~ N(mu, tau) per draw shared by the rows of a (run, kind)."""
    f = np.ones((D, len(kind)))
    for r in np.unique(run):
        for k in np.unique(kind):
            name = KINDS[int(k)]
            if name not in level_error:
                continue
            mu_k, tau_k = level_error[name]
            sel = (run == r) & (kind == k)
            f[:, sel] = np.exp(mu_k + tau_k * rng.standard_normal(D))[:, None]
    return f


# ---------------------------------------------------------------------------------------------
# Synthetic data (tests, benchmarks)
# ---------------------------------------------------------------------------------------------
def example_contexts() -> dict:
    """Three hand-built per-GPU FeatureContexts (roughly Llama-2-7B TP1 on H100/A100, Mixtral TP2 on H100)."""
    h100 = dict(peak_flops_per_us=989e6, hbm_bytes_per_us=3.35e6, link_bytes_per_us=4.5e5, pcie_bytes_per_us=6.4e4)
    a100 = dict(peak_flops_per_us=312e6, hbm_bytes_per_us=2.04e6, link_bytes_per_us=3.0e5, pcie_bytes_per_us=3.2e4)
    dense = dict(linear_flops_per_token=1.3e10, attn_flops_per_pair=5.2e5, lm_head_flops_per_seq=2.6e8,
                 dense_weight_bytes=13.5e9, expert_weight_bytes=0.0, num_experts=0.0, experts_per_token=0.0,
                 kv_bytes_per_token=524288.0, allreduce_bytes_per_token=0.0, dispatch_bytes_per_token=0.0,
                 num_layers=32.0, num_moe_layers=0.0)
    moe = dict(linear_flops_per_token=1.3e10, attn_flops_per_pair=2.6e5, lm_head_flops_per_seq=1.3e8,
               dense_weight_bytes=1.6e9, expert_weight_bytes=4.5e10, num_experts=8.0, experts_per_token=2.0,
               kv_bytes_per_token=65536.0, allreduce_bytes_per_token=524288.0, dispatch_bytes_per_token=0.0,
               num_layers=32.0, num_moe_layers=32.0)
    return {
        ("H100 SXM", "dense"): F.FeatureContext(**h100, **dense),
        ("H100 SXM", "moe"): F.FeatureContext(**h100, **moe),
        ("A100 SXM", "dense"): F.FeatureContext(**a100, **dense),
    }


# population truth for synthetic data: some features truly zero although present in the data
TRUE_BETA_POP = {
    "prefill_compute": 0.6, "decode_compute": 0.0, "weight_load": 1.3, "tp_comm": 0.8, "prefill_kv": 0.0,
    "decode_kv": 1.5, "moe_dispatch": 0.0, "kv_offload": 0.0, "layer_overhead": 0.3, "request_overhead": 0.5,
    "moe_layer_overhead": 0.5, "step_overhead": 0.15, "prefill_overhead": 0.0,
    "tp_sync_overhead": 0.0, "context_overhead": 1.0,
}
TRUE_ALPHA_POP = {"const": 8.0, "prompt_tokens": 1.5, "queue_depth": 2.0, "multiproc": 3.0}


def _scaled_context(ctx, k: float):
    """A deeper/wider sibling of a deployment: per-layer quantities times ``k`` (layers rounded)."""
    d = ctx.to_dict()
    for name in ("linear_flops_per_token", "attn_flops_per_pair", "dense_weight_bytes", "expert_weight_bytes",
                 "kv_bytes_per_token", "allreduce_bytes_per_token", "dispatch_bytes_per_token"):
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


def simulate_obs(rows: dict | None = None, *, seed: int = 0, dev_sd=(0.15, 0.15, 0.1), noise=(0.05, 0.08), nu: float = 8.0,
                 kind_mix=(0.6, 0.2, 0.1, 0.1), beta_pop=None, alpha_pop=None, runs_per_group: int = 1,
                 run_sd=(0.0, 0.0)):
    """Synthetic ObsTable from known coefficients and the real feature kernel on random batches.

    ``rows``: {(hardware, model_class): n_rows}; default 3 groups, the A100 one with little data.
    Returns ``(obs, truth)`` with ``truth = {"beta_pop", "alpha_pop", "beta": {group: (R, F)},
    "alpha": {group: (A,)}}``. Group deviations are drawn log-normally with ``dev_sd`` (hardware,
    class, regime); noise scale is ``s_abs + s_rel * mu / sqrt(n_steps)`` with ``noise = (s_abs, s_rel)``.
    ``runs_per_group > 1``: the rows of a group are dealt to that many runs of one deployment, each
    with a step-time factor ``exp(N(0, run_sd[0]))`` and a CPU-part factor ``exp(N(0, run_sd[1]))``
    (``truth["run_factors"]``: {run: (step, cpu)}; drawn from a separate stream, so the default
    output is unchanged).
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
                ctx = variants[int(rng.integers(len(variants)))]
                feats, reg = F.step_features(np.array(stats), ctx)
                for r in range(R):
                    Xr[r] = feats[reg == r].sum(axis=0)
            Ar = np.zeros(F.N_ALPHA)
            if k in (2, 3):
                Ar = F.alpha_features(np.array([rng.integers(50, 8000)]), np.array([rng.integers(0, 300)]),
                                      float(rng_mp.random() < 0.5))[0]
            run = f"sim-{h}-{c}"
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
    from bayeslat.data.design import ObsTable

    n_rows = len(cols["y"])
    obs = ObsTable(
        kind=np.array(cols["kind"], dtype=np.int64), y=np.array(cols["y"]), X=np.array(cols["X"]),
        A=np.array(cols["A"]), n_steps=np.array(cols["n_steps"], dtype=np.float64), hw=np.array(cols["hw"], dtype=np.int64),
        cls=np.array(cols["cls"], dtype=np.int64), run=np.array(cols["run"]), request=np.array(cols["request"], dtype=np.int64),
        t_frac=rng.uniform(0.0, 1.0, n_rows), hardware_levels=tuple(hw_levels), class_levels=tuple(cls_levels),
        meta={"synthetic": True, "seed": seed} | ({"deployments": deployments} if deployments else {}),
    )
    return obs, truth


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def _data_seed(args) -> int:
    """The seed of the rows a fit sees (the reconstruction's offset estimate and the stratified
    subsample), kept apart from the sampler's ``--seed`` so that changing the MCMC seed never
    changes the data."""
    v = getattr(args, "data_seed", None)
    return 0 if v is None else int(v) % 2**32


def _load_obs(args):
    import inspect

    from bayeslat.data import design
    extra = {}
    if args.data == "bundled":
        fn = design.bundled_obs
    else:
        fn = design.obs_from_tables
        extra["path"] = args.data
    dseed = _data_seed(args)
    sig = inspect.signature(fn).parameters
    kw = {k: v for k, v in (("runs", args.runs), ("exclude", args.exclude), ("seed", dseed)) if k in sig and v is not None}
    obs = fn(extra["path"], **kw) if "path" in extra else fn(**kw)
    n = getattr(args, "rows_per_run_kind", None)
    if n:
        # the likelihood sees a stratified subsample: n rows per (run, kind), spread evenly over
        # each run's timeline (the shipped default: 40, i.e. 1,320 real rows)
        obs = design.subsample(obs, int(n), seed=dseed)
    return obs


def cli_fit(args) -> int:
    """``bayeslat fit``: build the ObsTable, fit, write netCDF, print a one-line summary."""
    obs = _load_obs(args)
    attrs = {"data_source": str(args.data), "runs": json.dumps(args.runs), "exclude": json.dumps(args.exclude)}
    if args.data == "bundled":
        from bayeslat.data import datasets
        if hasattr(datasets, "data_hash"):
            attrs["bundled_data_hash"] = datasets.data_hash()
    seed = 0 if args.seed is None else args.seed
    attrs["rows_per_run_kind"] = int(getattr(args, "rows_per_run_kind", 0) or 0)
    attrs["data_seed"] = _data_seed(args)
    idata = fit(obs, backend=args.backend, draws=args.draws, tune=args.tune, chains=args.chains, seed=seed,
                progressbar=not args.no_progress, attrs=attrs, target_accept=getattr(args, "target_accept", None))
    if args.data == "bundled":
        # the simulator's run-level discrepancy on the training runs (replayed in-sample, seconds)
        from bayeslat import evaluate as validate
        validate.attach_sim_discrepancy(idata, seed=seed)
    path = save(idata, args.out)
    div = int(idata.sample_stats["diverging"].sum()) if "diverging" in idata.sample_stats else -1
    print(f"wrote {path}: {len(obs.y)} rows, backend {idata.attrs['backend']}, "
          f"{idata.attrs['sampling_seconds']:.1f} s sampling, {div} divergences")
    return 0
