"""Fitting: :func:`fit` runs NUTS on the model of an ObsTable and records the fit (thinned draws,
pointwise log-likelihood, data and attrs), then its cut stages, exact on grids: the
between-deployment and the between-run spread."""

from __future__ import annotations

import json
import time

import numpy as np
import xarray as xr

from bayeslat import features as F
from bayeslat._version import __version__
from bayeslat.data import design
from bayeslat.errors import SpecError
from bayeslat.model.build import _structure, build_model, check_obs
from bayeslat.model.priors import FORMAT, KINDS, _merge_priors
from bayeslat.model.sample import (
    DEFAULT_BACKEND,
    DEFAULT_SAMPLER,
    _sample,
    available_backends,
    data_hash,
    library_versions,
)
from bayeslat.model.spread import attach_run_spread, estimate_deployment_spread

MAX_SAVED_DRAWS = 1000  # per chain, after thinning (fit)

# Variables that are re-parameterisation helpers, not quantities of interest (left out of diagnostics).
OFFSET_PREFIXES = ("z_", "u_")
HELPER_VARS = ("beta_pop_w", "alpha_pop_w", "beta_pop_physics", "alpha_pop_lognormal", "beta_pop_lognormal")
# (the horseshoe's coefficients <name>_hs, global scale and slab are parameters, diagnosed like
# any other; its local scales are integrated out)


def data_groups(d: dict) -> dict:
    """The ``observed_data`` and ``constant_data`` groups a fit stores for its rows (``check_obs``'s
    dict): what ``obs_from_idata`` reads back and what ``update --refit`` refits on."""
    oid = np.arange(len(d["y"]))
    return {
        "observed_data": xr.Dataset({"y": ("obs_id", d["y"])}, coords={"obs_id": oid}),
        "constant_data": xr.Dataset(
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
                "n_rows": ("obs_id", d["n_rows"]),
                "n_eff": ("obs_id", d["n_eff"]),
            },
            coords={
                "obs_id": oid,
                "regime": list(F.REGIMES),
                "feature": list(F.BETA_NAMES),
                "alpha_feature": list(F.ALPHA_NAMES),
            },
        ),
    }


def raw_rows(d: dict) -> dict:
    """Per row kind, the raw records behind the rows the likelihood sees: the engine steps a step
    or window row sums (``n_steps``; a step row is up to 32 traced steps, a window row the decode
    steps of one request's inter-token window), one request per TTFT or alpha row; a bin mean
    (``n_rows`` rows) counts all of its rows'."""
    kind, ns = np.asarray(d["kind"]), np.maximum(np.asarray(d["n_steps"], float), 1.0)
    m = np.asarray(d.get("n_rows", np.ones(len(kind))), float)
    return {
        k: int(round((m * ns)[kind == i].sum())) if k in ("step", "window") else int(m[kind == i].sum())
        for i, k in enumerate(KINDS)
    }


def rows_used(d: dict) -> dict:
    """Per row kind, the raw rows behind the likelihood's rows (one per step pair, window, TTFT or
    alpha row; a bin mean counts its ``n_rows``)."""
    kind = np.asarray(d["kind"])
    m = np.asarray(d.get("n_rows", np.ones(len(kind))), int)
    return {k: int(m[kind == i].sum()) for i, k in enumerate(KINDS)}


def fit(
    obs,
    *,
    backend: str | None = None,
    draws: int | None = None,
    tune: int | None = None,
    chains: int | None = None,
    seed: int = 0,
    progressbar: bool = True,
    priors: dict | None = None,
    target_accept: float | None = None,
    attrs: dict | None = None,
):
    """Fit the hierarchical model to an ObsTable with NUTS; return ``arviz.InferenceData``.

    With ``deployment_level = "spread"`` (the default prior) the between-deployment spread is
    estimated from the fit's residuals on a grid and attached as group ``deployment_spread``
    (:func:`estimate_deployment_spread`; ``bayeslat calibrate`` re-estimates it from held-out
    deployments).

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
    idata = _sample(
        model,
        backend,
        int(cfg["draws"]),
        int(cfg["tune"]),
        int(cfg["chains"]),
        int(seed),
        progressbar,
        float(cfg["target_accept"]),
    )
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
    idata.add_groups(**data_groups(d))
    st = _structure(d)
    present = np.abs(d["X"]).sum(axis=(0, 1)) > 0
    info = {
        "format": FORMAT,
        "spec_version": F.SPEC_VERSION,
        "package_version": __version__,
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
        "raw_rows": json.dumps(raw_rows(d)),
        "rows_used": json.dumps(rows_used(d)),
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
    txt = design.training_specs_json(specs, runs=set(d["run"].tolist())) if specs else None
    if txt:
        info["training_deployments"] = txt
    for k, v in (attrs or {}).items():
        info[k] = v if isinstance(v, (str, int, float)) else json.dumps(v)
    idata.attrs.update(info)
    p = json.loads(info["priors"])
    if p["deployment_level"] == "spread" and p["sigma_dep"] > 0:
        estimate_deployment_spread(idata, seed=seed)
    attach_run_spread(idata, seed=seed)
    return idata
