"""GPU datasheets: :class:`HardwareSpec` from a datasheet JSON (:func:`load_hardware`, strict
schema), BLIS ``hardware_config.json`` entries, and the bundled datasheets' names and aliases.
A bare key (``"h100-sxm"``) resolves under the bundled ``bayeslat/data/specs/hardware``.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bayeslat.config import files
from bayeslat.config.files import GiB, _read_json, _resolve
from bayeslat.errors import SpecError

HARDWARE_SCHEMA: dict[str, Any] = {
    "name": str,
    "vendor": str,
    "architecture": str,
    "form_factor": str,
    "datasheet_id": str,
    "mig_partitions": int,
    "notes": str,
    "compute": {
        "fp64": float,
        "fp64_tensor_core": float,
        "fp32": float,
        "tf32_tensor_core": float,
        "bf16_tensor_core": float,
        "fp16_tensor_core": float,
        "fp8_tensor_core": float,
        "int8_tensor_core": float,
        "fp4_tensor_core": float,
        "int4_tensor_core": float,
        "with_sparsity": bool,
    },
    "memory": {"capacity_gb": float, "bandwidth_tb_s": float, "visible_gib": float, "l2_cache_mb": float},
    "interconnect": {"nvlink_bandwidth_gb_s": float, "pcie_bandwidth_gb_s": float},
    "power": {"tdp_watts": float},
}
HARDWARE_REQUIRED = ("name", "compute.bf16_tensor_core", "memory.capacity_gb", "memory.bandwidth_tb_s")
VISIBLE_FRACTION = 0.99  # GiB visible to torch per marketed GB (H100 80GB -> 79.2 GiB)


@dataclass(frozen=True)
class HardwareSpec:
    """One GPU, from a datasheet JSON.

    Datasheet schema (strict: any other key, top level or nested, is a SpecError)::

        name: str (required, the hardware group, e.g. "H100 SXM")
        vendor, architecture, form_factor, datasheet_id, notes: str; mig_partitions: int
        compute:  TFLOP/s as printed: bf16_tensor_core (required), fp16_tensor_core,
                  fp8_tensor_core, int8_tensor_core, fp4/int4_tensor_core, tf32_tensor_core,
                  fp32, fp64, fp64_tensor_core; with_sparsity: bool (tensor-core figures are
                  2:4-sparse numbers; dense = half)
        memory:   capacity_gb (marketed GB), bandwidth_tb_s (TB/s), visible_gib (optional:
                  memory torch sees, default 0.99 GiB per marketed GB), l2_cache_mb
                  (optional: the last-level cache; a working set that fits is not DRAM traffic
                  in a kernel benchmark loop, :mod:`bayeslat.data.kernels`)
        interconnect: nvlink_bandwidth_gb_s (GB/s, 0 = none), pcie_bandwidth_gb_s (GB/s)
        power:    tdp_watts
    """

    name: str
    bf16_flops: float  # dense BF16 tensor-core FLOP/s
    fp8_flops: float  # dense FP8 FLOP/s (= bf16_flops when the GPU has no FP8)
    hbm_bandwidth: float  # bytes/s
    memory_bytes: float  # marketed capacity, bytes
    visible_memory_bytes: float  # memory torch reports (total_memory), bytes
    nvlink_bandwidth: float  # bytes/s (0 = no NVLink)
    pcie_bandwidth: float  # bytes/s
    source: str | None = None
    l2_bytes: float = 0.0  # last-level cache, bytes (0 = not on the datasheet)

    @property
    def link_bandwidth(self) -> float:
        """GPU-GPU bytes/s: NVLink if present, else PCIe."""
        return self.nvlink_bandwidth if self.nvlink_bandwidth > 0 else self.pcie_bandwidth

    def peak_flops(self, weight_bytes: float = 2.0) -> float:
        """Dense tensor-core FLOP/s for weights of ``weight_bytes`` bytes (FP8 peak for <= 1)."""
        return self.fp8_flops if weight_bytes <= 1.0 else self.bf16_flops

    def to_dict(self) -> dict:
        return asdict(self)


def _check_schema(d: Mapping, schema: Mapping, file: str, prefix: str = "") -> None:
    for k, v in d.items():
        path = prefix + k
        if k not in schema:
            raise SpecError(f"unknown field (allowed: {', '.join(sorted(schema))})", file=file, field=path)
        t = schema[k]
        if isinstance(t, dict):
            if not isinstance(v, Mapping):
                raise SpecError("must be an object", file=file, field=path)
            _check_schema(v, t, file, path + ".")
        elif t is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise SpecError(f"must be a non-negative number, got {v!r}", file=file, field=path)
        elif t is int:
            if isinstance(v, bool) or not isinstance(v, int):
                raise SpecError(f"must be an integer, got {v!r}", file=file, field=path)
        elif t is bool:
            if not isinstance(v, bool):
                raise SpecError(f"must be true/false, got {v!r}", file=file, field=path)
        elif t is str and not isinstance(v, (str, int)):
            raise SpecError(f"must be a string, got {v!r}", file=file, field=path)


def hardware_from_dict(d: Mapping, file: str = "<dict>") -> HardwareSpec:
    """Validate a datasheet dict against :data:`HARDWARE_SCHEMA` and build a :class:`HardwareSpec`."""
    if not isinstance(d, Mapping):
        raise SpecError("datasheet must be a JSON object", file=file)
    _check_schema(d, HARDWARE_SCHEMA, file)
    for req in HARDWARE_REQUIRED:
        node = d
        for part in req.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is None:
            raise SpecError("required field is missing", file=file, field=req)
    c, m, ic = d["compute"], d["memory"], d.get("interconnect", {})
    div = 2.0 if c.get("with_sparsity", False) else 1.0
    bf16 = float(c["bf16_tensor_core"]) * 1e12 / div
    if bf16 <= 0:
        raise SpecError("must be > 0", file=file, field="compute.bf16_tensor_core")
    fp8 = float(c["fp8_tensor_core"]) * 1e12 / div if c.get("fp8_tensor_core") else bf16
    bw = float(m["bandwidth_tb_s"]) * 1e12
    if bw <= 0:
        raise SpecError("must be > 0", file=file, field="memory.bandwidth_tb_s")
    cap = float(m["capacity_gb"])
    if cap <= 0:
        raise SpecError("must be > 0", file=file, field="memory.capacity_gb")
    visible = float(m.get("visible_gib", cap * VISIBLE_FRACTION)) * GiB
    return HardwareSpec(
        name=str(d["name"]),
        bf16_flops=bf16,
        fp8_flops=fp8,
        hbm_bandwidth=bw,
        memory_bytes=cap * 1e9,
        visible_memory_bytes=visible,
        nvlink_bandwidth=float(ic.get("nvlink_bandwidth_gb_s", 0.0)) * 1e9,
        pcie_bandwidth=float(ic.get("pcie_bandwidth_gb_s", 64.0)) * 1e9,
        source=file,
        l2_bytes=float(m.get("l2_cache_mb", 0.0)) * 1e6,
    )


# Other names of the bundled datasheets (normalised by _norm_gpu: lower case, alphanumerics only,
# without "nvidia"): BLIS's GPU names and what nvidia-smi prints. A bare "A100" is ambiguous (the
# 40 GB part has 1.56 TB/s, the bundled 80 GB one 2.04) and is refused.
HARDWARE_ALIASES = {
    "h100": "h100-sxm",
    "h100sxm5": "h100-sxm",
    "h10080gbhbm3": "h100-sxm",
    "h100sxm580gb": "h100-sxm",
    "h100sxm80gb": "h100-sxm",
    "h10094gbnvl": "h100-nvl",
    "h100nvl94gb": "h100-nvl",
    "h200": "h200-sxm",
    "h200sxm141gb": "h200-sxm",
    "h200141gbhbm3e": "h200-sxm",
    "a10080": "a100-sxm-80gb",
    "a10080gb": "a100-sxm-80gb",
    "a100sxm480gb": "a100-sxm-80gb",
    "a100sxm80": "a100-sxm-80gb",
    "a100sxm80gb": "a100-sxm-80gb",
    "a10080gbsxm": "a100-sxm-80gb",
}
AMBIGUOUS_GPUS = {"a100": "A100 40 GB or 80 GB", "a100sxm": "A100 SXM 40 GB or 80 GB", "a100sxm4": "A100 SXM4 40 GB or 80 GB"}
# BLIS's hardware_config.json entry (dense TFLOP/s, TB/s, GiB): accepted as a datasheet
BLIS_HARDWARE_KEYS = {"TFlopsPeak", "TFlopsFP8", "BwPeakTBs", "MemoryGiB"}


def _norm_gpu(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower()).replace("nvidia", "")


def _bundled_hardware() -> dict[str, Mapping]:
    out = {}
    for f in sorted((files.specs_dir() / "hardware").glob("*.json")):
        try:
            out[f.stem] = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
    return out


def hardware_key(key: str) -> str | None:
    """The bundled datasheet key a GPU name stands for (file stem, datasheet ``name`` or alias)."""
    n = _norm_gpu(key)
    bundled = _bundled_hardware()
    for stem, d in bundled.items():
        if n in (_norm_gpu(stem), _norm_gpu(d.get("name", ""))):
            return stem
    if n in HARDWARE_ALIASES and HARDWARE_ALIASES[n] in bundled:
        return HARDWARE_ALIASES[n]
    if n in AMBIGUOUS_GPUS:
        raise SpecError(
            f"ambiguous GPU name ({AMBIGUOUS_GPUS[n]}?): name the part, e.g. 'a100-sxm-80gb', or give a "
            f"datasheet JSON; bundled: {', '.join(sorted(bundled))}",
            file=str(key),
            field="hardware",
        )
    return None


def match_bundled_hardware(hw: HardwareSpec, rtol: float = 0.03) -> HardwareSpec | None:
    """The bundled datasheet with the same dense BF16 FLOP/s, HBM bandwidth and memory as ``hw``
    (each within ``rtol``), else None: the GPU the fit knows under its bundled name."""
    for stem, d in _bundled_hardware().items():
        try:
            b = hardware_from_dict(d, file=stem)
        except SpecError:
            continue
        if all(
            abs(x - y) <= rtol * y
            for x, y in ((hw.bf16_flops, b.bf16_flops), (hw.hbm_bandwidth, b.hbm_bandwidth), (hw.memory_bytes, b.memory_bytes))
        ):
            return b
    return None


def hardware_from_blis(d: Mapping, file: str = "<dict>", name: str | None = None) -> HardwareSpec:
    """A BLIS ``hardware_config.json`` entry (``TFlopsPeak`` dense BF16, ``TFlopsFP8``,
    ``BwPeakTBs``, ``MemoryGiB``). It has no interconnect: a GPU matching a bundled datasheet
    (:func:`match_bundled_hardware`) takes that one's name and NVLink / PCIe bandwidths; any other
    gets PCIe 64 GB/s and no NVLink, with a warning (tensor-parallel communication then runs over PCIe)."""
    for k in ("TFlopsPeak", "BwPeakTBs", "MemoryGiB"):
        v = d.get(k)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise SpecError(f"must be a positive number, got {v!r}", file=file, field=k)
    bf16 = float(d["TFlopsPeak"]) * 1e12
    fp8 = float(d["TFlopsFP8"]) * 1e12 if d.get("TFlopsFP8") else bf16
    cap = float(d["MemoryGiB"])
    hw = HardwareSpec(
        name=str(name or d.get("name") or Path(file).stem),
        bf16_flops=bf16,
        fp8_flops=fp8,
        hbm_bandwidth=float(d["BwPeakTBs"]) * 1e12,
        memory_bytes=cap * 1e9,
        visible_memory_bytes=cap * VISIBLE_FRACTION * GiB,
        nvlink_bandwidth=0.0,
        pcie_bandwidth=64e9,
        source=file,
    )
    b = match_bundled_hardware(hw)
    if b is not None:
        return replace(hw, name=b.name, nvlink_bandwidth=b.nvlink_bandwidth, pcie_bandwidth=b.pcie_bandwidth)
    warnings.warn(
        f"{file}: BLIS datasheet '{hw.name}' has no interconnect and matches no bundled GPU: assuming PCIe 64 GB/s and no NVLink",
        stacklevel=2,
    )
    return hw


def load_hardware(path_or_key: str | Path) -> HardwareSpec:
    """Load a GPU datasheet JSON: a path, a key under ``specs/hardware`` (``"h100-sxm"``), or a GPU
    name (the datasheet's ``name``, BLIS's ``"H100"`` / ``"A100-80"`` / ``"L40S"``, nvidia-smi's
    ``"NVIDIA H100 80GB HBM3"``; see :data:`HARDWARE_ALIASES`).

    Also reads BLIS's ``hardware_config.json`` entries (:func:`hardware_from_blis`); for a file of
    several GPUs, choose one with ``path#NAME``. A datasheet whose name the fit does not know but
    whose FLOP/s, bandwidth and memory match a bundled one (within 3%) takes the bundled name, so it
    is the fitted hardware level, not a new one (a warning says so)."""
    key, _, pick = str(path_or_key).partition("#") if not Path(str(path_or_key)).exists() else (str(path_or_key), "", "")
    try:
        p = _resolve(key, "hardware", None, (".json",))
    except SpecError:
        alias = hardware_key(key)
        if alias is None:
            raise SpecError(
                f"no such file, nor a bundled hardware key or GPU name (bundled: {', '.join(sorted(_bundled_hardware()))})",
                file=str(path_or_key),
                field="hardware",
            ) from None
        p = _resolve(alias, "hardware", None, (".json",))
    d = _read_json(p, "datasheet")
    if (
        isinstance(d, Mapping)
        and not (BLIS_HARDWARE_KEYS & set(d))
        and d
        and all(isinstance(v, Mapping) and BLIS_HARDWARE_KEYS & set(v) for v in d.values())
    ):
        # BLIS's hardware_config.json: {gpu name: entry}
        names = list(d)
        if not pick and len(names) == 1:
            pick = names[0]
        if pick not in d:
            got = {_norm_gpu(n): n for n in names}.get(_norm_gpu(pick)) if pick else None
            if got is None:
                raise SpecError(
                    f"several GPUs in this file: choose one with '{p}#NAME' ({', '.join(names)})"
                    if not pick
                    else f"no GPU '{pick}' in this file ({', '.join(names)})",
                    file=str(p),
                    field="hardware",
                )
            pick = got
        return hardware_from_blis(d[pick], file=f"{p}#{pick}", name=pick)
    if isinstance(d, Mapping) and BLIS_HARDWARE_KEYS & set(d):
        return hardware_from_blis(d, file=str(p))
    hw = hardware_from_dict(d, file=str(p))
    if hw.name not in {str(b.get("name")) for b in _bundled_hardware().values()}:
        b = match_bundled_hardware(hw)
        if b is not None:
            warnings.warn(
                f"{p}: datasheet '{hw.name}' has the FLOP/s, bandwidth and memory of the bundled "
                f"'{b.name}' (within 3%): using that hardware level",
                stacklevel=2,
            )
            hw = replace(hw, name=b.name)
    return hw
