"""What the hardware level (:mod:`bayeslat.model.hardware`) says about a step fit's coefficients
on another GPU, and the ``hardware_level`` group a step fit carries it in.

A step fit is measured on one GPU (the *reference*; the H100 for the shipped default). On another
GPU ``g`` its GPU-bound coefficients change the way the kernels change:

- **Decode terms, projected** (:data:`PROJECTED`). A set of canonical decode steps (every bundled
  BF16 model spec x TP 1-8 x batch 1-256 x contexts 256 / 1,024 / 4,096) is timed as the sum of
  the roofline parts of its kernels (launch floors apart) under the hardware fit's efficiencies
  for ``g`` (its datasheet, its fitted or drawn efficiencies) and regressed, per posterior draw,
  on the step features of ``g`` (non-negative least squares on the relative scale): coefficients
  ``c_g`` in the step model's own units. The step coefficient on ``g`` is the reference's times
  ``c_g / c_ref``, except ``decode_compute`` (:data:`DIFFERENCE`), which takes the reference's
  plus ``c_g - c_ref``: the bundled runs leave it near 0 on the H100, where the GEMMs of a decode
  batch are bound by the weights; on an A100 (a lower FLOP / byte ridge) the same GEMMs turn
  compute bound inside the batch range, which the difference carries and a ratio of ~0 would erase.
- **Compute-bound and per-call terms, as ratios** (:data:`RATIO_MAP`): prefill compute scales
  with the GEMM FLOP efficiency, prefill KV with the decode-attention byte efficiency, the per-layer,
  per-MoE-layer and per-collective overheads with the launch floors of the GEMM, fused-MoE and
  all-reduce calls: ``exp(a_g - a_ref)``.
- **CPU-side terms** (request, context, step and prefill overheads; alpha) have no kernel: they keep
  the step model's own hardware population.

A GPU outside the hardware fit draws its efficiencies from the hardware population and runs the
same projection on its datasheet (a bundled one, :func:`bayeslat.config.hardware.hardware_key`).
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pandas as pd

from bayeslat import config as C
from bayeslat import features as F
from bayeslat.config.hardware import hardware_key, load_hardware
from bayeslat.data import kernels as K
from bayeslat.errors import SpecError
from bayeslat.model.hardware import (
    DEFAULT_HW_PRIORS,
    TERMS,
    _flat,
    _inputs,
    _log_time,
    efficiency_draws,
    json_attr,
    tp_slope_draws,
)
from bayeslat.model.io import put_group

HW_GROUP = "hardware_level"
HW_VARS = ("a", "mu", "sigma", "ver", "p", "s", "nu_m2", "tp_slope", "mu_tp", "sigma_tp")
PROJECTED = ("decode_compute", "weight_load", "decode_kv", "tp_comm")
# projected terms that change by the difference of the projections (a reference coefficient near
# 0 is not evidence that the term is 0 on every GPU); the others by their ratio
DIFFERENCE = ("decode_compute",)
RATIO_MAP = {
    "prefill_compute": ("gemm", "flop"),
    "prefill_kv": ("decode", "byte"),
    "layer_overhead": ("gemm", "call"),
    "moe_layer_overhead": ("moe", "call"),
    "tp_sync_overhead": ("allreduce", "call"),
}
#: the step features of the TP all-reduce, which change with the GPUs it spans (``tp_slope``)
TP_FEATURES = ("tp_comm", "tp_sync_overhead")
BATCH = (1, 2, 4, 8, 16, 32, 64, 96, 128, 192, 256)
CONTEXTS = (256.0, 1024.0, 4096.0)
TPS = (1, 2, 4, 8)


@functools.lru_cache(maxsize=1)
def canonical_models() -> tuple:
    """The bundled model specs the projection times: BF16 weights (the kernel tables' dtype),
    without latent (MLA) attention (not in the tables)."""
    out = []
    for p in sorted((C.files.specs_dir() / "models").iterdir()):
        m = C.load_model(p.name)
        if m.weight_bytes == 2.0 and not m.kv_lora_rank:
            out.append(m)
    return tuple(out)


@functools.lru_cache(maxsize=16)
def decode_steps(hw) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The canonical decode steps on datasheet ``hw``: their unique kernel calls (a kernel-table
    frame), the count matrix ``(steps, calls)`` and the steps' :data:`PROJECTED` features."""
    from bayeslat.deployment import resolve

    keys, counts, feats = {}, [], []
    for m in canonical_models():
        for tp in TPS:
            try:
                dep = resolve(m, hw, {"tensor_parallel": tp}, kv="optional")
            except SpecError:
                continue  # TP does not shard this model
            for c in CONTEXTS:
                stats = np.zeros((len(BATCH), F.N_STATS))
                stats[:, F.S["n_decode"]] = BATCH
                stats[:, F.S["decode_ctx_tokens"]] = np.asarray(BATCH) * (c + 1)
                x, _ = F.step_features(stats, dep.ctx)
                feats.append(x[:, [F.B[f] for f in PROJECTED]])
                for b in BATCH:
                    row = {}
                    for fam, shape, n in K.decode_step_calls(m, tp, b, c):
                        k = (fam, shape)
                        j = keys.setdefault(k, len(keys))
                        row[j] = row.get(j, 0.0) + n
                    counts.append(row)
    M = np.zeros((len(counts), len(keys)))
    for i, row in enumerate(counts):
        for j, n in row.items():
            M[i, j] = n
    rows = pd.DataFrame(
        [{"family": fam, **{f"s{i}": (shape[i] if i < len(shape) else 0.0) for i in range(K.N_SHAPE)}} for fam, shape in keys]
    )
    return rows, M, np.vstack(feats)


def decode_step_ms(a: np.ndarray, p: np.ndarray, hw, floors: bool = True) -> np.ndarray:
    """Kernel-sum time (ms) ``(D, steps)`` of the canonical decode steps (:func:`decode_steps`) on
    datasheet ``hw`` under log efficiencies ``a`` ``(D, family, term)`` and smooth-max exponents
    ``p`` ``(D, family)``; ``floors=False`` leaves out every call's launch floor."""
    rows, M, _ = decode_steps(hw)
    flop, byte = _inputs(rows, hw, benchmark_loop=False)
    fam = pd.Categorical(rows["family"], categories=K.FAMILIES).codes
    e = a[:, fam]
    call = e[..., 2] if floors else np.full_like(e[..., 2], -np.inf)
    return np.exp(_log_time(e[..., 0], e[..., 1], call, p[:, fam], flop[None], byte[None], np)) @ M.T


def projected_coefficients(a: np.ndarray, p: np.ndarray, hw) -> np.ndarray:
    """Per draw, the :data:`PROJECTED` step coefficients ``(D, len(PROJECTED))`` of a GPU with
    log efficiencies ``a`` ``(D, family, term)`` and smooth-max exponents ``p`` ``(D, family)`` on
    datasheet ``hw`` (see the module docstring)."""
    from scipy.optimize import nnls

    _, _, X = decode_steps(hw)
    # the roofline part of each call, without its launch floor (the floors scale the per-layer and
    # per-collective overheads, RATIO_MAP): no constant competes with the weight term
    y = decode_step_ms(a, p, hw, floors=False)  # (D, steps)
    out = np.empty((a.shape[0], len(PROJECTED)))
    for d in range(a.shape[0]):
        out[d] = nnls(X / y[d][:, None], np.ones(X.shape[0]))[0]
    return out


def hardware_names(hw_idata) -> list[str]:
    """The datasheet names of a hardware fit's GPUs."""
    post = hw_idata[HW_GROUP] if HW_GROUP in hw_idata.groups() else hw_idata.posterior
    return [K.datasheet(str(g)).name if str(g) in K.GPU_DATASHEETS else str(g) for g in post.coords["gpu"].values]


def attach_hardware_level(idata, hw_idata, reference: str | None = None, max_draws: int = 1000):
    """Attach a hardware fit (:func:`bayeslat.model.hardware.fit_hardware`) to a step fit as group
    ``hardware_level``, its GPUs named by their datasheets (``"A100 SXM 80GB"``), with the
    projected decode coefficients of every fitted GPU (``step_coef``). ``reference``: the step
    fit's hardware level the changes are taken from (default: the one with the most rows; it must
    be in the hardware fit). A cut: the step rows do not inform the kernel efficiencies, nor the
    kernels the step coefficients. Returns ``idata``."""
    import xarray as xr

    post = hw_idata[HW_GROUP] if HW_GROUP in hw_idata.groups() else hw_idata.posterior
    # kernel-table names (a100_sxm) -> datasheet names; a carried-over group is named already
    names = dict(zip((str(g) for g in post.coords["gpu"].values), hardware_names(hw_idata)))
    ds = xr.Dataset({v: post[v] for v in HW_VARS if v in post}).assign_coords(
        gpu=[names[str(g)] for g in post.coords["gpu"].values]
    )
    nd = ds.sizes["chain"] * ds.sizes["draw"]
    if nd > max_draws:
        ds = ds.stack(sample=("chain", "draw")).isel(sample=slice(None, None, int(np.ceil(nd / max_draws))))
        ds = ds.drop_vars(["chain", "draw", "sample"]).rename({"sample": "draw"}).expand_dims("chain")
        ds = ds.transpose("chain", "draw", ...).assign_coords(chain=[0], draw=np.arange(ds.sizes["draw"]))
    levels = [str(v) for v in idata.posterior.coords["hardware"].values]
    rows = np.asarray(json.loads(idata.attrs.get("group_rows", "[]")) or np.ones((len(levels), 1)))
    gpus = [str(g) for g in ds.coords["gpu"].values]
    if reference is None:
        reference = next((levels[i] for i in np.argsort(-rows.sum(axis=1)) if levels[i] in gpus), None)
    if reference is None or reference not in gpus or reference not in levels:
        raise SpecError(f"no hardware level of the step fit ({levels}) is in the hardware fit ({gpus})", field="reference")
    kernel_names = {v: k for k, v in names.items()}
    coef = np.stack(
        [
            projected_coefficients(_flat(ds, "a")[:, i], _flat(ds, "p"), K.datasheet(kernel_names.get(g, g)))
            for i, g in enumerate(gpus)
        ],
        axis=1,
    )
    coef = coef.reshape((ds.sizes["chain"], ds.sizes["draw"]) + coef.shape[1:])
    ds["step_coef"] = xr.DataArray(coef, dims=("chain", "draw", "gpu", "projected"))
    ds = ds.assign_coords(projected=list(PROJECTED))
    put_group(idata, HW_GROUP, ds)
    meta = json_attr(hw_idata, HW_GROUP, None) or {
        "kernel_rows": json_attr(hw_idata, "kernel_rows", {}),
        "kernel_table_hash": hw_idata.attrs.get("kernel_table_hash"),
        "hw_priors": json_attr(hw_idata, "hw_priors", DEFAULT_HW_PRIORS),
        "sampling_seconds": hw_idata.attrs.get("sampling_seconds"),
        "health": json_attr(hw_idata, "health", None),
        "package_version": hw_idata.attrs.get("package_version"),
        "kernel_gpus": kernel_names,
    }
    meta["reference"] = reference
    idata.attrs[HW_GROUP] = json.dumps(meta)
    return idata


def step_hardware_deviation(idata, hardware: str, sel: np.ndarray, tensor_parallel: int | None = None):
    """For a step fit with a hardware level: how ``hardware``'s coefficients differ from the fit's
    reference hardware, per step draw ``sel`` (kernel draws paired by index, modulo their
    number). Returns ``(log_ratio, ratio_mask, delta, delta_mask, fitted)``: ``log_ratio``
    ``(len(sel), N_BETA)`` for the :data:`RATIO_MAP` features, ``delta`` for the
    :data:`PROJECTED` ones (added to the reference's coefficient), and whether ``hardware`` was in
    the kernel fit. None without a hardware level, or for a GPU outside it with no bundled
    datasheet (its deviation then stays the step model's population draw).

    ``tensor_parallel``: the deployment's TP degree. The projection times the all-reduce at its
    2-GPU efficiency; at TP ``n`` > 2 the all-reduce terms (``tp_comm``, ``tp_sync_overhead``) also
    change by ``(tp_slope_g - tp_slope_ref) log2(n / 2)`` (:mod:`bayeslat.model.hardware`): a PCIe
    GPU's ring over 4 or 8 GPUs is slower per byte than its pair. None: the 2-GPU level."""
    if HW_GROUP not in idata.groups():
        return None
    meta = json_attr(idata, HW_GROUP, {})
    ds = idata[HW_GROUP]
    gpus = [str(g) for g in ds.coords["gpu"].values]
    ref = meta["reference"]
    fitted = hardware in gpus
    coef = _flat(ds, "step_coef")
    if fitted:
        a, _ = efficiency_draws(ds, hardware)
        c = coef[:, gpus.index(hardware)]
    else:
        try:
            key = hardware_key(hardware)
        except SpecError:
            key = None
        if key is None:
            return None
        a, _ = efficiency_draws(ds, hardware)
        c = _cached_projection(hardware, key, a, _flat(ds, "p"))
    r, _ = efficiency_draws(ds, ref)
    c_ref = coef[:, gpus.index(ref)]
    idx = np.asarray(sel) % a.shape[0]
    fi, ti = list(K.FAMILIES), list(TERMS)
    log_ratio = np.zeros((len(idx), F.N_BETA))
    ratio_mask = np.zeros(F.N_BETA, dtype=bool)
    for f, (k, j) in RATIO_MAP.items():
        log_ratio[:, F.B[f]] = (a[:, fi.index(k), ti.index(j)] - r[:, fi.index(k), ti.index(j)])[idx]
        ratio_mask[F.B[f]] = True
    delta = np.zeros((len(idx), F.N_BETA))
    delta_mask = np.zeros(F.N_BETA, dtype=bool)
    for i, f in enumerate(PROJECTED):
        if f in DIFFERENCE:
            delta[:, F.B[f]] = (c[:, i] - c_ref[:, i])[idx]
            delta_mask[F.B[f]] = True
        else:
            log_ratio[:, F.B[f]] = np.log(np.maximum(c[:, i], 1e-9) / np.maximum(c_ref[:, i], 1e-9))[idx]
            ratio_mask[F.B[f]] = True
    if tensor_parallel is not None and int(tensor_parallel) > 2:
        shift = (tp_slope_draws(ds, hardware) - tp_slope_draws(ds, ref))[idx] * np.log2(int(tensor_parallel) / 2.0)
        for f in TP_FEATURES:
            log_ratio[:, F.B[f]] += shift
    return log_ratio, ratio_mask, delta, delta_mask, fitted


_PROJ_CACHE: dict = {}


def _cached_projection(hardware: str, key: str, a: np.ndarray, p: np.ndarray) -> np.ndarray:
    # a GPU outside the kernel fit: its projection (about a second) once per hardware level draws
    k = (hardware, key, a.shape, float(a.sum()), float(p.sum()))
    if k not in _PROJ_CACHE:
        if len(_PROJ_CACHE) > 32:
            _PROJ_CACHE.clear()
        _PROJ_CACHE[k] = projected_coefficients(a, p, load_hardware(key))
    return _PROJ_CACHE[k]


#: posterior draws of the hardware level :func:`version_shift` times the canonical steps under
VERSION_SHIFT_DRAWS = 200
_SHIFT_CACHE: dict = {}


def version_log_change(ds, gpu: str, hw, *, draws: int = VERSION_SHIFT_DRAWS) -> np.ndarray:
    """Log change of each canonical decode step's kernel time (:func:`decode_steps`, launch floors
    included) from the first vLLM release of hardware level ``ds`` to each later one, on ``gpu``
    (datasheet ``hw``): ``(versions - 1, draws, steps)``, over ``draws`` evenly spaced posterior draws."""
    a, _ = efficiency_draws(ds, gpu)
    ver, p = _flat(ds, "ver"), _flat(ds, "p")
    idx = np.linspace(0, a.shape[0] - 1, min(int(draws), a.shape[0])).astype(int)
    t = [decode_step_ms(a[idx] + ver[idx, v], p[idx], hw) for v in range(ver.shape[1])]
    return np.stack([np.log(tv / t[0]) for tv in t[1:]])


def version_shift(ds, gpu: str, hw, *, draws: int = VERSION_SHIFT_DRAWS) -> dict | None:
    """How far a decode step's kernel time moves from one vLLM release to another, per release.

    ``ds``: a hardware level (a step fit's ``hardware_level`` group or a hardware fit's posterior)
    with at least two versions; ``gpu``: one of its GPUs, ``hw`` its datasheet. The canonical decode
    steps are timed as the sum of their kernels under the GPU's efficiencies plus the fit's version
    term ``ver`` of each version (:func:`version_log_change`). A release changes some kernels and
    not others, so the step-time change is modelled as a random walk over minor releases: its
    variance per release is the mean squared log change divided by the releases between the two
    versions (:func:`bayeslat.config.release_distance`). Returns ``{"gpu", "versions", "releases",
    "rms_log_change" (per later version), "per_release_sd", "steps"}``, or None with one version."""
    from bayeslat.config import release_distance

    versions = [str(v) for v in ds.coords["version"].values]
    if len(versions) < 2:
        return None
    key = (gpu, hw.name, float(_flat(ds, "a").sum()), float(_flat(ds, "ver").sum()), int(draws))
    if key in _SHIFT_CACHE:
        return _SHIFT_CACHE[key]
    d = version_log_change(ds, gpu, hw, draws=draws)
    rel = [max(release_distance(versions[0], v), 1) for v in versions[1:]]
    ms = [float(np.mean(x**2)) for x in d]
    rms = [float(np.sqrt(m)) for m in ms]
    var = [m / n for m, n in zip(ms, rel)]
    out = {
        "gpu": gpu,
        "versions": versions,
        "releases": rel,
        "rms_log_change": rms,
        "per_release_sd": float(np.sqrt(np.mean(var))),
        "steps": int(d.shape[-1]),
    }
    if len(_SHIFT_CACHE) > 8:
        _SHIFT_CACHE.clear()
    _SHIFT_CACHE[key] = out
    return out
