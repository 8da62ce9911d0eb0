"""SPEC files: a deployment plus a workload, read and resolved for ``predict``, ``check`` and
``update``.

A SPEC.yaml names a model config, a GPU datasheet, a server config and a workload (a request file or an
inference-perf profile). :func:`load_spec` validates it field by field (errors name the SPEC file and
the field) and resolves the deployment with :func:`bayeslat.deployment.resolve`, the one resolver.
"""

from __future__ import annotations

from pathlib import Path

from bayeslat import config as C
from bayeslat.data import datasets
from bayeslat.data import workload as W
from bayeslat.deployment import resolve, sim_server
from bayeslat.errors import SpecError, read_yaml


def _resolve_rel(value, base: Path | None):
    """A path relative to the SPEC file if it exists there, else the value as given (spec key)."""
    if value is None:
        return None
    p = Path(str(value))
    if base is not None and not p.is_absolute() and (base / p).exists():
        return base / p
    return p if p.exists() else value


def load_spec(path, require_workload: bool = True) -> dict:
    """Read and validate a predict SPEC.yaml; returns {model, hardware, server (ServerConfig),
    workload (Workload), ctx, kv_blocks, cpu_kv_blocks, spec_path}."""
    path = Path(path)
    file = str(path)
    if not path.exists():
        raise SpecError("no such file", file=file)
    if not path.is_file():
        raise SpecError("is a directory, not a SPEC.yaml file", file=file)
    return spec_from_dict(read_yaml(path), file, path.parent, require_workload)


def spec_from_dict(spec, file: str = "<dict>", base: Path | None = None, require_workload: bool = True) -> dict:
    """Validate and resolve a mapping in the SPEC.yaml format; ``file`` is named in its errors and
    relative paths are looked up under ``base`` first (the SPEC file's directory)."""
    if not isinstance(spec, dict):
        raise SpecError("SPEC must be a mapping with model, hardware, server, workload", file=file)
    for k in ("model", "hardware", "workload") if require_workload else ("model", "hardware"):
        if k not in spec:
            raise SpecError("missing key (need model, hardware, server, workload)", file=file, field=k)
    for k in ("model", "hardware"):
        if not isinstance(spec[k], str) or not spec[k].strip():
            raise SpecError(f"must be a file path or a bundled key (a string), got {spec[k]!r}", file=file, field=k)

    def named_here(load, key, field):
        # a reference that resolves to nothing is an error of this SPEC's field; an error inside a
        # file it names stays that file's
        ref = _resolve_rel(spec[key], base)
        try:
            return load(ref)
        except SpecError as e:
            if e.file != str(ref):
                raise
            raise SpecError(f"{spec[key]!r}: {e.reason}", file=file, field=field) from None

    def in_server(e: SpecError) -> SpecError:
        # errors of an inline server mapping come back as file '<dict>': they are this SPEC's
        if e.file != "<dict>":
            return e
        field = e.field if e.field and e.field.split(".")[0] == "server" else f"server.{e.field}" if e.field else "server"
        return SpecError(e.reason, file=file, field=field)

    model = named_here(C.load_model, "model", "model")
    hw = named_here(C.load_hardware, "hardware", "hardware")
    srv_in = spec.get("server") or {}
    if isinstance(srv_in, (str, Path)):
        server = named_here(C.load_server, "server", "server")
    elif isinstance(srv_in, dict):
        try:
            server = C.load_server(dict(srv_in))
        except SpecError as e:
            raise in_server(e) from None
    else:
        raise SpecError(f"must be a mapping of server settings or a server YAML path, got {srv_in!r}", file=file, field="server")
    try:
        dep = resolve(model, hw, server, name=file, file=file)
    except SpecError as e:
        raise in_server(e) from None
    wl = spec.get("workload")
    if wl is None:  # only when not require_workload (check / update: the probe is the workload)
        return dep.spec(None, file)
    if not isinstance(wl, dict):
        raise SpecError("workload must be a mapping with `requests:` or `inference_perf:`", file=file, field="workload")
    seed = wl.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SpecError(f"must be a non-negative integer, got {seed!r}", file=file, field="workload.seed")
    timeout = wl.get("timeout_s", W.DEFAULT_TIMEOUT_S)
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0):
        raise SpecError(f"must be a number > 0 (or null: no timeout), got {timeout!r}", file=file, field="workload.timeout_s")
    n_req = wl.get("num_requests")
    if n_req is not None and (isinstance(n_req, bool) or not isinstance(n_req, int) or n_req < 1):
        raise SpecError(f"must be an integer >= 1, got {n_req!r}", file=file, field="workload.num_requests")
    if "requests" in wl:
        wpath = _resolve_rel(wl["requests"], base)
        if not Path(str(wpath)).exists():
            raise SpecError(f"no such file {wl['requests']!r}", file=file, field="workload.requests")
        workload = W.from_file(wpath, timeout_s=timeout)
    elif "inference_perf" in wl:
        prof = wl["inference_perf"]
        if not isinstance(prof, dict):
            raise SpecError("must be a mapping (data, load)", file=file, field="workload.inference_perf")
        if "data" not in prof and "shared_prefix" in prof:
            prof = {"data": {"shared_prefix": prof["shared_prefix"]}, "load": {"stages": prof.get("stages", [])}}
        try:
            workload = W.from_inference_perf(
                prof, seed=seed, num_requests=wl.get("num_requests"), arrivals=wl.get("arrivals", "poisson"), timeout_s=timeout
            )
        except SpecError as e:
            fld = (
                "workload.arrivals"
                if e.field in ("arrivals", "inference_perf.arrivals")
                else f"workload.inference_perf.{e.field}"
                if e.field
                else "workload.inference_perf"
            )
            raise SpecError(e.reason, file=file, field=fld) from None
    else:
        raise SpecError("need `requests:` (CSV/Parquet) or `inference_perf:` (profile)", file=file, field="workload")
    return dep.spec(workload, file)


def make_spec(model, hardware, server=None, workload=None, name: str = "") -> dict:
    """A resolved spec (the dict of :func:`load_spec`) from spec keys / paths /
    objects. ``server``: dict, path, key or ServerConfig; ``workload``: a Workload (or None)."""
    return resolve(model, hardware, server, name=name, kv="derive").spec(workload)


def spec_for_run(run: str, *, hardware=None, model=None, server_overrides: dict | None = None, workload=None) -> dict:
    """The resolved spec of a bundled run (its model, GPU, server with the recorded KV capacity and
    its replayed workload), optionally with the hardware / model / server fields replaced."""
    info = datasets.run_info(run)
    srv = {"vllm_version": datasets.VLLM_VERSION, **info["server"]}
    if hardware is not None or model is not None:
        srv.pop("kv_blocks", None)  # the recorded capacity belongs to the recorded deployment
    srv.update(server_overrides or {})
    wl = workload if workload is not None else W.from_run(info["run"])
    return make_spec(model or info["model_spec"], hardware or info["hardware_spec"], srv, wl, name=info["run"])


def resolve_spec(spec) -> dict:
    """SPEC.yaml path, resolved dict (has ``ctx``) or raw dict in the SPEC.yaml format."""
    if isinstance(spec, (str, Path)):
        # the workload is optional here: a check without one reports the configuration-level
        # distances and step intervals; an update takes its workload from the probe
        return load_spec(spec, require_workload=False)
    if not isinstance(spec, dict):
        raise SpecError("spec must be a SPEC.yaml path or a dict", field="spec")
    if "ctx" in spec:
        return spec
    wl = spec.get("workload")
    if wl is not None and not isinstance(wl, dict):  # a Workload object
        return make_spec(spec["model"], spec["hardware"], spec.get("server"), wl)
    return spec_from_dict(spec)


def spec_sim_server(s: dict) -> dict:
    """The simulator's server settings of a resolved spec dict."""
    return sim_server(s["server"], s["kv_blocks"], s.get("cpu_kv_blocks") or 0)
