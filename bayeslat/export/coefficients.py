"""The bayeslat coefficient export (json / yaml) of one group: per regime and feature the
posterior mean, sd and 90% interval; written by :func:`export`, read back by :func:`read_export`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from bayeslat import features as F
from bayeslat.errors import SpecError
from bayeslat.export.blis import blis_coefficients, target_tp
from bayeslat.export.groups import _parse_group
from bayeslat.model import KINDS, coefficient_draws

FORMAT = "bayeslat-coefficients/1"


def _attrs(idata) -> dict:
    out = {}
    for k, v in idata.attrs.items():
        if isinstance(v, str) and v[:1] in "[{":
            try:
                out[k] = json.loads(v)
                continue
            except json.JSONDecodeError:
                pass
        out[k] = v.item() if hasattr(v, "item") else v
    return out


def _kinds(n: int) -> list:
    return list(KINDS[:n]) if n <= len(KINDS) else [str(i) for i in range(n)]


def _summ(x: np.ndarray) -> dict:
    return {
        "mean": float(np.mean(x)),
        "sd": float(np.std(x, ddof=1)) if x.size > 1 else 0.0,
        "q05": float(np.quantile(x, 0.05)),
        "q95": float(np.quantile(x, 0.95)),
    }


def coefficients(idata, group=("H100 SXM", "dense"), n: int | None = None, seed: int = 0) -> dict:
    """The bayeslat export as a dict (see :mod:`bayeslat.export`)."""
    hw, cls = _parse_group(group)
    cd = coefficient_draws(idata, hw, cls, n=n, seed=seed, new_run=False)
    beta = {}
    for r, reg in enumerate(F.REGIMES):
        beta[reg] = {}
        for f, name in enumerate(F.BETA_NAMES):
            beta[reg][name] = dict(_summ(cd.beta[:, r, f]), unit=f"ms per {F.BETA_SCALE[f]:g} {F.BETA_UNITS[f]}")
    alpha = {
        name: dict(_summ(cd.alpha[:, a]), unit=f"ms per {F.ALPHA_SCALE[a]:g} {F.ALPHA_UNITS[a]}")
        for a, name in enumerate(F.ALPHA_NAMES)
    }
    return {
        "format": FORMAT,
        "spec_version": F.SPEC_VERSION,
        "group": {"hardware": hw, "model_class": cls, "new_levels": list(cd.new_levels), "draws": int(cd.beta.shape[0])},
        "beta": beta,
        "alpha": alpha,
        "noise": {
            "sigma_rel_step": _summ(cd.sigma_rel),
            "nu": _summ(np.asarray(cd.nu).reshape(len(cd.sigma_rel), -1)[:, 0]),
            "nu_by_kind": {
                k: _summ(np.asarray(cd.nu).reshape(len(cd.sigma_rel), -1)[:, i])
                for i, k in enumerate(_kinds(np.asarray(cd.nu).reshape(len(cd.sigma_rel), -1).shape[1]))
            },
        },
        "features": {
            "beta": [
                {"name": n_, "unit": u, "scale": float(s), "doc": F.BETA_DOC[n_]}
                for n_, u, s in zip(F.BETA_NAMES, F.BETA_UNITS, F.BETA_SCALE)
            ],
            "alpha": [
                {"name": n_, "unit": u, "scale": float(s), "doc": F.ALPHA_DOC[n_]}
                for n_, u, s in zip(F.ALPHA_NAMES, F.ALPHA_UNITS, F.ALPHA_SCALE)
            ],
            "stats": list(F.STATS),
            "regimes": list(F.REGIMES),
        },
        "fit": _attrs(idata),
    }


def export(idata, group=("H100 SXM", "dense"), fmt: str = "json", tp: int | None = None, server=None) -> str:
    """Coefficients of one group as text: ``fmt`` is "json", "yaml" or "blis".

    blis: for a target of TP ``tp`` (or ``server``'s ``tensor_parallel``); with neither, TP 1 where
    every fit row of the group is at TP 1 (an ``# assumption:`` line says so) and a SpecError where
    any is at TP > 1 (``blis.target_tp``)."""
    if fmt == "json":
        return json.dumps(coefficients(idata, group), indent=2, default=str) + "\n"
    if fmt == "yaml":
        return yaml.safe_dump(json.loads(json.dumps(coefficients(idata, group), default=str)), sort_keys=False)
    if fmt == "blis":
        tp, assumed = target_tp(idata, group, tp, server)
        b = blis_coefficients(idata, group, tp=tp)
        lines = [
            f"# bayeslat -> BLIS trained-physics coefficients (us), group {b['group'][0]}/{b['group'][1]}, "
            f"target TP {b['tp']}" + (f", new levels drawn from the population: {b['new_levels']}" if b["new_levels"] else ""),
            "# posterior means; regime coefficients averaged with feature-load weights of the fit rows",
        ]
        lines += ["# " + n for n in b["notes"] if n not in b["assumptions"]]
        lines += ["# assumption: " + n for n in b["assumptions"] + ([assumed] if assumed else [])]
        fmtn = lambda xs: ",".join(f"{x:.6g}" for x in xs)  # noqa: E731
        lines.append(f"--alpha-coeffs {fmtn(b['alpha'])} --beta-coeffs {fmtn(b['beta'])}")
        return "\n".join(lines) + "\n"
    raise SpecError(f"unknown format {fmt!r} (json, yaml, blis)", field="format")


def read_export(path) -> dict:
    """Read a bayeslat json/yaml export; check its format tag."""
    path = Path(path)
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        d = yaml.safe_load(text)
    else:
        try:
            d = json.loads(text)
        except json.JSONDecodeError:
            d = yaml.safe_load(text)
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise SpecError(f"expected format {FORMAT!r}", file=str(path), field="format")
    if d.get("spec_version") != F.SPEC_VERSION:
        raise SpecError(f"spec_version {d.get('spec_version')!r} != {F.SPEC_VERSION!r}", file=str(path), field="spec_version")
    return d
