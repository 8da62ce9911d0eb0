"""The hardware level: per-GPU kernel efficiencies fitted to real kernel timings
(:mod:`bayeslat.data.kernels`), pooled over GPUs, and what they say about a step's features.

Model
-----
A kernel call of family k on GPU g under vLLM version v takes::

    t = smoothmax(E_flop * flop_ms, E_byte * byte_ms; p_k) + E_call * 0.01 ms
    log E_j = a[g, k, j] + ver[v, k, j]              j in (flop, byte, call)
    a[g, k, j] ~ N(mu[k, j], sigma[k, j])            the hardware population
    log t_obs ~ StudentT(nu_k, log t + tp_slope[g] * log2(n / 2) [all-reduce of n GPUs], s_k)
    tp_slope[g] ~ N(mu_tp, sigma_tp)

``flop_ms`` and ``byte_ms`` are roofline times from the GPU's datasheet (dense BF16 peak; DRAM or
link bandwidth), so ``E`` are multipliers over the datasheet roofline (1 = the roofline; 1.25 = 80%
of it) and the call term is the launch floor in units of 10 us. ``smoothmax(x, y; p) = (x^p +
y^p)^(1/p)`` bends from the memory-bound to the compute-bound side as a real kernel does (the sum
the step model uses overstates the knee by up to 2x, and by a different amount on each GPU, since
the knee sits at a different arithmetic intensity on each). The version is its own term (the
first version is the reference), identified by the GPU measured under both, so that a kernel
change between releases never hides in a GPU's efficiency.

``tp_slope`` is the all-reduce's change per doubling of the GPUs it spans, beyond the ring's own
byte count: about 0 where every GPU pair has an NVLink / NVSwitch path, large where a ring of 4 or
8 crosses PCIe switches and host bridges (the L40S: 3.6x its link roofline at 2 GPUs, 18x at 4,
37x at 8). One efficiency for every GPU count would put the L40S's 2-GPU all-reduce 5x too slow
and its 8-GPU one 2x too fast; ``a`` of the all-reduce is the 2-GPU efficiency.

A GPU of the fit has its ``a[g]``; any other GPU draws ``a ~ N(mu, sigma)`` per posterior draw:
what its datasheet alone can say, with the spread the fitted GPUs show.

What it tells a step fit about another GPU: :mod:`bayeslat.model.hardware_steps`.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from bayeslat.data import kernels as K
from bayeslat.errors import SpecError

HW_FORMAT = "bayeslat-hardware/1"
TERMS = ("flop", "byte", "call")
CALL_MS = 0.01
# the terms each family has: attention FLOPs of one decode query are 1 per KV byte per query
# head group (memory bound at every shape), prefill attention is compute bound (its Q/K/V bytes
# are < 1% of its time), and an all-reduce moves bytes only. A term a family lacks is not a
# parameter (a prior-only dimension would only slow the sampler).
ACTIVE = {
    "gemm": ("flop", "byte", "call"),
    "prefill": ("flop", "call"),
    "decode": ("byte", "call"),
    "moe": ("flop", "byte", "call"),
    "allreduce": ("byte", "call"),
}
ACTIVE_MASK = np.array([[t in ACTIVE[f] for t in TERMS] for f in K.FAMILIES])
DEFAULT_HW_PRIORS = {
    "mu": [0.3, 1.0],  # N(mean, sd) of the population log multiplier (0.3: 74% of roofline)
    "sigma": [0.25, 0.5],  # LogNormal(log median, sd) of the between-GPU scale of log E
    "ver_sd": 0.3,  # N(0, ver_sd): a version's log change of E
    "p": [3.0, 0.3],  # LogNormal(log median, sd) of the smooth-max exponent
    "s": 0.3,  # HalfNormal scale of the log-time noise per family
    "tp_mu": [0.0, 0.5],  # N(mean, sd) of the population all-reduce change per doubling of GPUs (log)
    "tp_sigma": [0.25, 0.5],  # LogNormal(log median, sd) of its between-GPU scale
}
#: the family whose time changes with the GPUs a call spans (``tp_slope``)
TP_FAMILY = "allreduce"


def design(df: pd.DataFrame, gpus: list[str] | None = None, versions: list[str] | None = None) -> dict:
    """Kernel rows as arrays for :func:`build_hardware_model`: ``y`` (log ms), ``flop_ms``,
    ``byte_ms``, family / GPU / version indices and their levels. ``gpus`` / ``versions`` fix the
    level order (default: sorted values of the table)."""
    if len(df) == 0:
        raise SpecError("no kernel rows", field="kernels")
    gpus = sorted(df["gpu"].unique()) if gpus is None else list(gpus)
    versions = (
        sorted(df["version"].unique(), key=lambda v: tuple(int(x) for x in v.split("."))) if versions is None else list(versions)
    )
    flop, byte = np.zeros(len(df)), np.zeros(len(df))
    for g, idx in df.groupby("gpu").indices.items():
        flop[idx], byte[idx] = _inputs(df.iloc[idx], K.datasheet(g))
    fam = pd.Categorical(df["family"], categories=K.FAMILIES).codes.astype(np.int64)
    return {
        "y": np.log(df["latency_ms"].to_numpy(np.float64)),
        "flop_ms": flop,
        "byte_ms": byte,
        "doublings": tp_doublings(df),
        "fam": fam,
        "gpu": pd.Categorical(df["gpu"], categories=gpus).codes.astype(np.int64),
        "ver": pd.Categorical(df["version"], categories=versions).codes.astype(np.int64),
        "gpus": gpus,
        "versions": versions,
    }


def tp_doublings(df: pd.DataFrame) -> np.ndarray:
    """``log2(n / 2)`` of the all-reduce rows of kernel rows ``df`` over ``n`` GPUs (0 for the other
    families): the covariate of ``tp_slope``."""
    fam = df["family"].to_numpy()
    n = df[K.SHAPE_COLS[0]].to_numpy(np.float64)
    return np.where(fam == TP_FAMILY, np.log2(np.maximum(n, 1.0) / 2.0), 0.0)


def _inputs(df: pd.DataFrame, hw, benchmark_loop: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(flop_ms, byte_ms) of kernel rows on ``hw``, 0 where the family lacks the term."""
    ph = K.kernel_physics(df, hw, benchmark_loop=benchmark_loop)
    fam = pd.Categorical(df["family"], categories=K.FAMILIES).codes
    return np.where(ACTIVE_MASK[fam, 0], ph["flop_ms"], 0.0), np.where(ACTIVE_MASK[fam, 1], ph["byte_ms"], 0.0)


def _log_time(a_flop, a_byte, a_call, p, flop_ms, byte_ms, xp):
    """log(smoothmax(E_f x_f, E_b x_b; p) + E_c CALL_MS) for arrays (numpy or pytensor ``xp``)."""
    f = xp.exp(a_flop) * flop_ms
    b = xp.exp(a_byte) * byte_ms
    hi = xp.maximum(f, b)
    lo = xp.minimum(f, b)
    # floored: a family without one of the two terms has lo = 0, and d(0^p)/dp = 0 * log(0) is nan
    ratio = xp.maximum(lo / xp.maximum(hi, 1e-30), 1e-12)
    sm = hi * (1.0 + ratio**p) ** (1.0 / p)
    return xp.log(sm + xp.exp(a_call) * CALL_MS)


def build_hardware_model(d: dict, priors: dict | None = None):
    """The PyMC model of :func:`design` rows (see the module docstring)."""
    import pymc as pm
    import pytensor.tensor as pt

    p = {**DEFAULT_HW_PRIORS, **(priors or {})}
    for key, levels in (("gpu", "gpus"), ("ver", "versions"), ("fam", None)):
        bad = np.flatnonzero(d[key] < 0)
        if bad.size:
            known = d[levels] if levels else list(K.FAMILIES)
            raise SpecError(f"{bad.size} rows outside the levels {known} (first: row {bad[0]})", field=key)
    G, V, Kf, J = len(d["gpus"]), len(d["versions"]), len(K.FAMILIES), len(TERMS)
    coords = {"gpu": d["gpus"], "version": d["versions"], "family": list(K.FAMILIES), "term": list(TERMS)}
    with pm.Model(coords=coords) as model:
        # centred: thousands of rows pin each GPU's efficiencies; inactive terms are 0
        fi, ti = np.nonzero(ACTIVE_MASK)
        mu_raw = pm.Normal("mu_raw", p["mu"][0], p["mu"][1], shape=fi.size)
        sig_raw = pm.LogNormal("sigma_raw", np.log(p["sigma"][0]), p["sigma"][1], shape=fi.size)
        pm.Deterministic("mu", pt.set_subtensor(pt.zeros((Kf, J))[fi, ti], mu_raw), dims=("family", "term"))
        pm.Deterministic("sigma", pt.set_subtensor(pt.zeros((Kf, J))[fi, ti], sig_raw), dims=("family", "term"))
        a_raw = pm.Normal("a_raw", mu_raw[None], sig_raw[None], shape=(G, fi.size))
        a = pm.Deterministic("a", pt.set_subtensor(pt.zeros((G, Kf, J))[:, fi, ti], a_raw), dims=("gpu", "family", "term"))
        if V > 1:
            vr = pm.Normal("ver_raw", 0.0, p["ver_sd"], shape=(V - 1, fi.size))
            ver = pt.set_subtensor(pt.zeros((V, Kf, J))[1:, fi, ti], vr)
            ver = pm.Deterministic("ver", ver, dims=("version", "family", "term"))
        else:
            ver = pm.Deterministic("ver", pt.zeros((1, Kf, J)), dims=("version", "family", "term"))
        pexp = pm.LogNormal("p", np.log(p["p"][0]), p["p"][1], dims="family")
        s = pm.HalfNormal("s", p["s"], dims="family")
        nu_m2 = pm.Gamma("nu_m2", 2.0, 0.2, dims="family")
        e = a[d["gpu"], d["fam"]] + ver[d["ver"], d["fam"]]  # (n, J)
        mu_tp = pm.Normal("mu_tp", p["tp_mu"][0], p["tp_mu"][1])
        sigma_tp = pm.LogNormal("sigma_tp", np.log(p["tp_sigma"][0]), p["tp_sigma"][1])
        # centred: each GPU's all-reduce rows at 2, 4 and 8 GPUs pin its slope
        tp_slope = pm.Normal("tp_slope", mu_tp, sigma_tp, dims="gpu")
        mu_y = _log_time(e[:, 0], e[:, 1], e[:, 2], pexp[d["fam"]], d["flop_ms"], d["byte_ms"], pt)
        mu_y = mu_y + tp_slope[d["gpu"]] * d["doublings"]
        pm.StudentT("y", nu=2.0 + nu_m2[d["fam"]], mu=mu_y, sigma=s[d["fam"]], observed=d["y"])
    return model


def subsample(df: pd.DataFrame, per_family: int = 300, seed: int = 0) -> pd.DataFrame:
    """The same ``per_family`` shapes of each family on every GPU and version that has them (all
    of a family with fewer), so GPUs are compared on one grid."""
    rng = np.random.default_rng(seed)
    keys = ["family", *K.SHAPE_COLS]
    parts = []
    for fam, d in df.groupby("family", sort=True):
        shapes = d[keys].drop_duplicates().sort_values(keys).reset_index(drop=True)
        take = shapes if len(shapes) <= per_family else shapes.iloc[np.sort(rng.choice(len(shapes), per_family, replace=False))]
        parts.append(d.merge(take, on=keys, how="inner"))
    return pd.concat(parts, ignore_index=True)


def fit_hardware(
    df: pd.DataFrame | None = None,
    per_family: int = 300,
    draws: int = 500,
    tune: int = 500,
    chains: int = 2,
    seed: int = 0,
    priors: dict | None = None,
    progressbar: bool = False,
):
    """Fit the hardware level to kernel rows (default: the bundled table) with nutpie; return
    the InferenceData, with the rows used and the table's hash in its attrs."""
    import json
    import time

    import nutpie

    from bayeslat._version import __version__

    df = K.serving_shapes(K.load()) if df is None else df
    sub = subsample(df, per_family=per_family, seed=seed)
    d = design(sub)
    model = build_hardware_model(d, priors)
    compiled = nutpie.compile_pymc_model(model)
    t0 = time.perf_counter()
    idata = nutpie.sample(compiled, draws=draws, tune=tune, chains=chains, seed=seed, progress_bar=progressbar)
    idata.attrs["sampling_seconds"] = round(time.perf_counter() - t0, 1)
    idata.attrs["sampler"] = json.dumps({"backend": "nutpie", "draws": draws, "tune": tune, "chains": chains, "seed": seed})
    idata.attrs["per_family"] = per_family
    idata.attrs["package_version"] = __version__
    idata.attrs["kernel_rows"] = json.dumps(sub.groupby("family").size().astype(int).to_dict())
    idata.attrs["kernel_table_hash"] = K.table_hash(df)
    idata.attrs["hw_priors"] = json.dumps({**DEFAULT_HW_PRIORS, **(priors or {})})
    return idata


def _draw_index(D: int, n: int | None, seed: int) -> np.ndarray:
    """The posterior draws a call with ``n`` draws and ``seed`` takes (every draw when ``n`` is None):
    the same selection in :func:`efficiency_draws`, :func:`tp_slope_draws` and :func:`predict_kernels`."""
    return np.arange(D) if n is None else np.random.default_rng(seed).choice(D, size=int(n), replace=int(n) > D)


def _flat(post, name):
    v = post[name].values
    return v.reshape((-1,) + v.shape[2:])


def efficiency_draws(idata, gpu: str, version: str | None = None, n: int | None = None, seed: int = 0) -> tuple[np.ndarray, bool]:
    """Log efficiency multipliers ``(D, family, term)`` of ``gpu`` (a kernel-table GPU name) under
    ``version``, and whether the GPU was fitted. An unfitted GPU draws from ``N(mu, sigma)`` (one
    fixed standard-normal vector per draw, seeded by the GPU's name); an unknown version adds
    ``N(0, ver_sd)`` per draw."""
    post = idata.posterior if hasattr(idata, "posterior") else idata
    gpus = [str(x) for x in post.coords["gpu"].values]
    versions = [str(x) for x in post.coords["version"].values]
    mu, sig = _flat(post, "mu"), _flat(post, "sigma")
    D = mu.shape[0]
    sel = _draw_index(D, n, seed)
    fitted = gpu in gpus
    if fitted:
        a = _flat(post, "a")[:, gpus.index(gpu)]
    else:
        z = np.random.default_rng(zlib.crc32(f"hw|{gpu}".encode())).standard_normal(mu.shape)
        a = mu + sig * z
    if version is None:
        pass
    elif version in versions:
        a = a + _flat(post, "ver")[:, versions.index(version)]
    else:
        sd = json_attr(idata, "hw_priors", DEFAULT_HW_PRIORS)["ver_sd"]
        a = a + sd * np.random.default_rng(zlib.crc32(f"ver|{version}".encode())).standard_normal(mu.shape)
    return a[sel], fitted


def tp_slope_draws(idata, gpu: str, n: int | None = None, seed: int = 0) -> np.ndarray:
    """Draws ``(D,)`` of ``gpu``'s all-reduce change per doubling of GPUs (``tp_slope``), aligned with
    :func:`efficiency_draws` of the same ``n`` and ``seed``; an unfitted GPU draws
    ``N(mu_tp, sigma_tp)`` (one fixed standard normal per draw, seeded by its name). Zeros for a fit
    without the term."""
    post = idata.posterior if hasattr(idata, "posterior") else idata
    D = _flat(post, "mu").shape[0]
    sel = _draw_index(D, n, seed)
    if "tp_slope" not in post:
        return np.zeros(len(sel))
    gpus = [str(x) for x in post.coords["gpu"].values]
    if gpu in gpus:
        t = _flat(post, "tp_slope")[:, gpus.index(gpu)]
    else:
        z = np.random.default_rng(zlib.crc32(f"tp|{gpu}".encode())).standard_normal(D)
        t = _flat(post, "mu_tp") + _flat(post, "sigma_tp") * z
    return t[sel]


def json_attr(idata, key, default):
    import json

    attrs = getattr(idata, "attrs", {}) or {}
    return json.loads(attrs[key]) if key in attrs else default


def predict_kernels(idata, df: pd.DataFrame, gpu: str, n: int | None = None, seed: int = 0, noise: bool = True) -> np.ndarray:
    """Predictive draws ``(D, rows)`` of the latency (ms) of kernel rows ``df`` on ``gpu`` (its
    datasheet from :func:`bayeslat.data.kernels.datasheet`; rows of one version). ``noise``: add
    the per-row Student-t noise of the fit (a new measurement), else the mean curve."""
    vers = df["version"].unique()
    if len(vers) != 1:
        raise SpecError(f"rows of one version expected, got {sorted(vers)}", field="version")
    post = idata.posterior
    a, _ = efficiency_draws(idata, gpu, str(vers[0]), n=n, seed=seed)
    D = a.shape[0]
    flop, byte = _inputs(df, K.datasheet(gpu))
    fam = pd.Categorical(df["family"], categories=K.FAMILIES).codes
    rng = np.random.default_rng(seed)
    sel = _draw_index(_flat(post, "p").shape[0], n, seed)
    p = _flat(post, "p")[sel][:, fam]
    e = a[:, fam]  # (D, n, J)
    ly = _log_time(e[..., 0], e[..., 1], e[..., 2], p, flop[None], byte[None], np)
    ly = ly + tp_slope_draws(idata, gpu, n=n, seed=seed)[:, None] * tp_doublings(df)[None]
    if noise:
        s = _flat(post, "s")[sel][:, fam]
        nu = 2.0 + _flat(post, "nu_m2")[sel][:, fam]
        ly = ly + s * rng.standard_t(nu, size=(D, len(df)))
    return np.exp(ly)


DEFAULT_HARDWARE = Path(__file__).parent.parent / "data" / "models" / "hardware.nc"
SAVED_VARS = ("a", "mu", "sigma", "ver", "p", "s", "nu_m2", "tp_slope", "mu_tp", "sigma_tp")


def summarize_fit(idata) -> dict:
    """Sampler health of a hardware fit (divergences, worst R-hat and bulk / tail ESS over the
    free parameters), recorded in the saved file's attrs."""
    import arviz as az

    free = [
        v
        for v in ("mu_raw", "sigma_raw", "a_raw", "ver_raw", "p", "s", "nu_m2", "mu_tp", "sigma_tp", "tp_slope")
        if v in idata.posterior
    ]
    s = az.summary(idata, var_names=free, kind="diagnostics")
    return {
        "divergences": int(idata.sample_stats["diverging"].sum()),
        "max_r_hat": float(s["r_hat"].max()),
        "min_ess_bulk": float(s["ess_bulk"].min()),
        "min_ess_tail": float(s["ess_tail"].min()),
        "draws": int(idata.posterior.sizes["chain"] * idata.posterior.sizes["draw"]),
    }


def save_hardware(idata, path, max_draws: int = 1000) -> Path:
    """Write a hardware fit compactly: the posterior of :data:`SAVED_VARS` thinned to at most
    ``max_draws`` draws, its sampler health (:func:`summarize_fit`, over every draw) and fit
    record in the attrs."""
    import json

    import arviz as az

    path = Path(path)
    health = summarize_fit(idata) if "sample_stats" in idata.groups() else json_attr(idata, "health", {})
    post = idata.posterior[[v for v in SAVED_VARS if v in idata.posterior]]
    nd = post.sizes["chain"] * post.sizes["draw"]
    if nd > max_draws:
        post = post.isel(draw=slice(None, None, int(np.ceil(nd / max_draws))))
    out = az.InferenceData(posterior=post)
    out.attrs.update({k: v for k, v in idata.attrs.items() if isinstance(v, (str, int, float))})
    out.attrs["health"] = json.dumps(health)
    out.attrs["format"] = HW_FORMAT
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    out.to_netcdf(str(tmp))
    tmp.replace(path)
    return path


def load_hardware_fit(path=None):
    """A hardware fit written by :func:`save_hardware` (default: the shipped ``models/hardware.nc``)."""
    import arviz as az

    p = Path(path) if path is not None else DEFAULT_HARDWARE
    if not p.is_file():
        raise SpecError("hardware fit not found" + ("" if path else " (run `bayeslat hardware`)"), file=str(p))
    idata = az.from_netcdf(str(p))
    if idata.attrs.get("format") != HW_FORMAT:
        raise SpecError(f"not a bayeslat hardware fit (format {idata.attrs.get('format')!r})", file=str(p), field="format")
    return idata
