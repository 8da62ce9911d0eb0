"""The NUTS backends and what a fit records of its sampling: :func:`_sample` (nutpie, PyMC,
numpyro), the default sampler settings, the sampler's health, library versions and the data hash."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from importlib import metadata

import numpy as np

from bayeslat.errors import SpecError
from bayeslat.model.build import check_obs

BACKENDS = ("nutpie", "pymc", "numpyro")
# Chosen from benchmarks/fit_backends.py (ESS per second incl. compilation, see docs/method.md).
DEFAULT_BACKEND = "nutpie"
# The shipped default: 2 x (1000 tune + 2000 draws) at target_accept 0.95 on the bin means of every
# real row (984 rows). Measured on them: 0 divergences, min bulk / tail ESS 678 / 648, 107 s of
# sampling; at 0.9, 3 divergences; at 0.99 (the setting of the 1,320-row subsample, where 0.97
# diverged) the trees are twice as deep for the same ESS.
DEFAULT_SAMPLER = {"draws": 2000, "tune": 1000, "chains": 2, "target_accept": 0.95}


#: the libraries whose versions a fit records (attrs ``library_versions``)
VERSIONED_LIBRARIES = ("numpy", "scipy", "pymc", "pytensor", "nutpie", "numba", "numpyro", "jax", "arviz")


def library_versions() -> dict:
    """Python's and the installed :data:`VERSIONED_LIBRARIES`' versions, as a fit stores them
    (attrs ``library_versions``): a seed reproduces a fit draw for draw in one environment; a
    release of the sampler or of numpy may not, and the attrs then say what differs."""
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
    for k in ("n_rows", "n_eff"):  # bin means only (the hash of raw rows is unchanged)
        if k in d and np.any(np.asarray(d[k]) != 1):
            h.update(k.encode() + np.ascontiguousarray(d[k]).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Sampling
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


def blas_note(backend: str) -> str:
    """One line on what compiles the sampler's model and whether pytensor's C backend (the
    log-likelihood pass only) links a BLAS: what replaces pytensor's five-line warning."""
    import pytensor

    engine = {"nutpie": "numba-compiled", "numpyro": "JAX-compiled", "pymc": "pytensor C backend"}.get(backend, backend)
    blas = "a BLAS" if pytensor.config.blas__ldflags else "no BLAS (pip install)"
    where = "everything" if backend == "pymc" else "the log-likelihood pass only"
    return f"sampler {backend} ({engine}); pytensor's C backend links {blas} and runs {where}"


def _sample(model, backend, draws, tune, chains, seed, progressbar, target_accept):
    import pymc as pm

    cores = max(1, min(chains, os.cpu_count() or 1))
    if backend == "nutpie":
        import nutpie

        compiled = nutpie.compile_pymc_model(model)
        idata = nutpie.sample(
            compiled,
            draws=draws,
            tune=tune,
            chains=chains,
            cores=cores,
            seed=seed,
            progress_bar=progressbar,
            save_warmup=False,
            target_accept=target_accept,
            # the additive log-scale decomposition (population + levels) leaves a
            # few strongly correlated directions: the low-rank mass matrix learns them
            low_rank_modified_mass_matrix=True,
        )
    elif backend in ("pymc", "numpyro"):
        kw = {"nuts_sampler": "numpyro"} if backend == "numpyro" else {}
        if backend == "numpyro" and "jax" not in __import__("sys").modules:
            # one XLA host device per chain, or JAX runs the chains one after the other
            flags = os.environ.get("XLA_FLAGS", "")
            if "xla_force_host_platform_device_count" not in flags:
                os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={cores}".strip()
        with model:
            idata = pm.sample(
                draws=draws,
                tune=tune,
                chains=chains,
                cores=cores,
                random_seed=seed,
                progressbar=progressbar,
                target_accept=target_accept,
                compute_convergence_checks=False,
                **kw,
            )
    else:
        raise SpecError(f"unknown backend {backend!r}; choose from {BACKENDS}", field="backend")
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
