"""The specs of each run's deployment (``ObsTable.meta["specs"]``), and their compact JSON form that
a fit keeps (``idata.attrs["training_deployments"]``) for ``bayeslat check``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from dataclasses import fields as dc_fields

from bayeslat import config as S
from bayeslat.config import load_hardware, load_model, load_server
from bayeslat.data import datasets
from bayeslat.deployment import resolve, served_max_model_len
from bayeslat.errors import SpecError

#: format tag of :func:`training_specs_json` (``idata.attrs["training_deployments"]``)
TRAINING_SPECS_FORMAT = "bayeslat-training-deployments/1"


def spec_record(model, hw, server) -> dict:
    """One run's deployment as ``ObsTable.meta["specs"][run]``: {"model": ModelSpec, "hardware":
    HardwareSpec, "server": ServerConfig, "max_model_len": int}. A server without
    ``max_model_len`` serves the model's ``max_position_embeddings`` (4096 if unknown), the
    reading ``bayeslat check`` gives the configuration it checks."""
    return {"model": model, "hardware": hw, "server": server, "max_model_len": served_max_model_len(model, server)}


def bundled_spec(run: str) -> dict:
    """:func:`spec_record` of a bundled run (its model, GPU and recorded server config, with the
    bundle's vLLM version, :data:`bayeslat.data.datasets.VLLM_VERSION`, where the run records none)."""
    info = datasets.run_info(run)
    server = {"vllm_version": datasets.VLLM_VERSION, **info["server"]}
    return spec_record(load_model(info["model_spec"]), load_hardware(info["hardware_spec"]), load_server(server))


def _spec_fields(obj) -> dict:
    # the local file a spec was read from says nothing about the deployment
    return {k: v for k, v in asdict(obj).items() if k != "source" and v is not None}


def training_specs_json(specs: dict, runs=None) -> str | None:
    """Compact JSON of ``{run: spec_record}`` (only ``runs`` when given; None if none is left):
    ``{"format", "models": {name: ModelSpec fields}, "hardware": {name: HardwareSpec fields},
    "runs": {run: {"model": name, "hardware": name, "server": ServerConfig fields (None values
    left out), "max_model_len", "deployment": features.deployment_key}}}``. Each model config and
    datasheet is written once (a second, different one of the same name gets ``name#2``)."""
    sel = sorted(r for r in specs if runs is None or r in set(runs))
    if not sel:
        return None
    models, hws, out = {}, {}, {}

    def _ref(store, d):
        k, i = str(d.get("name", "")), 1
        while k in store and store[k] != d:
            i += 1
            k = f"{d.get('name', '')}#{i}"
        store[k] = d
        return k

    for run in sel:
        rec = specs[run]
        try:
            key = resolve(rec["model"], rec["hardware"], rec["server"], kv="optional").key
        except SpecError:
            key = None
        out[run] = {
            "model": _ref(models, _spec_fields(rec["model"])),
            "hardware": _ref(hws, _spec_fields(rec["hardware"])),
            "server": _spec_fields(rec["server"]),
            "max_model_len": int(rec["max_model_len"]),
            "deployment": key,
        }
    return json.dumps(
        {"format": TRAINING_SPECS_FORMAT, "models": models, "hardware": hws, "runs": out}, sort_keys=True, separators=(",", ":")
    )


def training_specs_from_json(text) -> tuple[dict, dict]:
    """Inverse of :func:`training_specs_json`: ({run: spec_record}, {run: why its spec could not
    be rebuilt}). Fields a spec class does not have (a later bayeslat) are ignored; a missing
    required one makes that run's spec unknown."""
    if not text:
        return {}, {}
    try:
        d = json.loads(text) if isinstance(text, (str, bytes)) else text
    except ValueError as e:
        return {}, {"*": f"unreadable training specs: {e}"}
    if not isinstance(d, dict) or d.get("format") != TRAINING_SPECS_FORMAT:
        return {}, {"*": f"training specs of an unknown format {d.get('format') if isinstance(d, dict) else type(d).__name__!r}"}

    def build(cls, v):
        names = {f.name for f in dc_fields(cls)}
        return cls(**{k: x for k, x in v.items() if k in names})

    out, bad = {}, {}
    for run, r in (d.get("runs") or {}).items():
        try:
            m = build(S.ModelSpec, d["models"][r["model"]])
            hw = build(S.HardwareSpec, d["hardware"][r["hardware"]])
            srv = build(S.ServerConfig, r.get("server") or {})
            out[run] = {"model": m, "hardware": hw, "server": srv, "max_model_len": int(r["max_model_len"])}
        except (KeyError, TypeError, ValueError) as e:
            bad[run] = f"its stored spec could not be rebuilt ({type(e).__name__}: {e})"
    return out, bad
