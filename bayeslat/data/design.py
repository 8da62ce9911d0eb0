"""Reconstruction + FeatureContext -> :class:`ObsTable`, the model's design arrays.

Every observation row is a weighted window of steps of one run (see
:mod:`bayeslat.data.reconstruct`): ``X[r, g, :] = sum_k w_k * f_k * [regime_k == g]`` with ``f_k``
the scaled beta features of step k (:func:`bayeslat.features.step_features`), computed exactly
from per-run cumulative sums per regime. TTFT rows add alpha features
(:func:`bayeslat.features.alpha_features` of prompt tokens and queue depth at arrival, and
whether the deployment runs multi-process workers).

Sources: :func:`bundled_obs` (the real runs bundled in :mod:`bayeslat.data.datasets`) and
:func:`obs_from_tables` (the Parquet tables of ``bayeslat ingest ... --out DIR``; what
``bayeslat fit --data DIR`` reads), which run the same per-run pipeline (lifecycle
reconstruction -> :func:`build_obs`) and add, where the traces carry them, exact one-step rows
from step snapshots and alpha-only rows from journey events (:func:`run_obs`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from bayeslat import features as F
from bayeslat.data import reconstruct as R
from bayeslat.deployment import resolve, served_max_model_len
from bayeslat.errors import SpecError

KINDS = ("step", "window", "ttft", "alpha")
_ARRAYS = ("kind", "y", "X", "A", "n_steps", "hw", "cls", "run", "request", "t_frac")


@dataclass(frozen=True)
class ObsTable:
    """One row per observation (DEVELOPING.md). ``t_frac``: position of the row in its run's
    timeline (0..1; used by :func:`time_split` and :func:`subsample`)."""

    kind: np.ndarray
    y: np.ndarray
    X: np.ndarray
    A: np.ndarray
    n_steps: np.ndarray
    hw: np.ndarray
    cls: np.ndarray
    run: np.ndarray
    request: np.ndarray
    t_frac: np.ndarray
    hardware_levels: tuple
    class_levels: tuple
    meta: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        self.validate()

    def __len__(self) -> int:
        return len(self.y)

    def validate(self) -> "ObsTable":
        n = np.shape(self.y)[0] if np.ndim(self.y) == 1 else -1
        if n < 0:
            raise SpecError(f"y must be 1-d, got shape {np.shape(self.y)}", field="y")
        shapes = {"X": (n, len(F.REGIMES), F.N_BETA), "A": (n, F.N_ALPHA)}
        for k, shp in shapes.items():
            if np.shape(getattr(self, k)) != shp:
                raise SpecError(f"expected shape {shp}, got {np.shape(getattr(self, k))}", field=k)
        for k in ("kind", "n_steps", "hw", "cls", "run", "request", "t_frac"):
            if np.shape(getattr(self, k)) != (n,):
                raise SpecError(f"expected shape ({n},), got {np.shape(getattr(self, k))}", field=k)
        for k in ("y", "X", "A", "n_steps", "t_frac"):
            if not np.all(np.isfinite(getattr(self, k))):
                raise SpecError("non-finite values", field=k)
        if n and (np.any(self.X < 0) or np.any(self.A < 0)):
            raise SpecError("features must be non-negative", field="X" if np.any(self.X < 0) else "A")
        if n and (np.min(self.kind) < 0 or np.max(self.kind) >= len(KINDS)):
            raise SpecError(f"kind must index {KINDS}", field="kind")
        if n and (np.min(self.hw) < 0 or np.max(self.hw) >= len(self.hardware_levels)):
            raise SpecError("hw index out of range of hardware_levels", field="hw")
        if n and (np.min(self.cls) < 0 or np.max(self.cls) >= len(self.class_levels)):
            raise SpecError("cls index out of range of class_levels", field="cls")
        return self

    def subset(self, idx) -> "ObsTable":
        idx = np.asarray(idx)
        return replace(self, **{k: getattr(self, k)[idx] for k in _ARRAYS})

    def save(self, path) -> Path:
        path = Path(path)
        deps = self.meta.get("deployments", {})
        specs = training_specs_json(self.meta.get("specs") or {})
        np.savez_compressed(path, **{k: getattr(self, k) for k in _ARRAYS},
                            hardware_levels=np.array(self.hardware_levels), class_levels=np.array(self.class_levels),
                            deployment_runs=np.array(list(deps), dtype=str), deployment_keys=np.array(list(deps.values()), dtype=str),
                            specs_json=np.array(specs or "", dtype=str))
        return path if path.suffix == ".npz" else path.with_suffix(path.suffix + ".npz")

    @classmethod
    def load(cls, path) -> "ObsTable":
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _ARRAYS + ("hardware_levels", "class_levels") if k not in z.files]
            if missing:
                raise SpecError(f"missing array {missing[0]!r}", file=str(path), field=missing[0])
            d = {k: z[k] for k in _ARRAYS}
            deps = dict(zip(z["deployment_runs"].tolist(), z["deployment_keys"].tolist())) if "deployment_runs" in z.files else {}
            specs = training_specs_from_json(str(z["specs_json"]))[0] if "specs_json" in z.files and str(z["specs_json"]) else {}
            return cls(**d, hardware_levels=tuple(str(v) for v in z["hardware_levels"]),
                       class_levels=tuple(str(v) for v in z["class_levels"]), meta={"deployments": deps, "specs": specs})


def build_obs(recon: R.Reconstruction, ctx, hardware: str, model_class: str, *, trace_rows: pd.DataFrame | None = None,
              include_warmup: bool = False, hardware_levels=None, class_levels=None) -> ObsTable:
    """ObsTable of one run: decode windows, TTFT rows and (optionally) traced step rows
    (``trace_rows`` from :func:`bayeslat.data.reconstruct.trace_step_windows`)."""
    win = R.observation_windows(recon, include_warmup=include_warmup)
    if trace_rows is not None and len(trace_rows):
        win = pd.concat([trace_rows, win], ignore_index=True)
    stats = recon.steps[list(F.STATS)].to_numpy(np.float64)
    feat, reg = F.step_features(stats, ctx)
    per = np.zeros((len(stats), len(F.REGIMES), F.N_BETA))
    per[np.arange(len(stats)), reg, :] = feat
    X = R.window_sums(per, win["k0"], win["k1"], win["w0"], win["w1"])
    X = np.maximum(X, 0.0)  # cumulative-sum round-off
    kind = win["kind"].to_numpy(np.int64)
    A = np.zeros((len(win), F.N_ALPHA))
    tt = kind == R.KIND_TTFT
    A[tt] = F.alpha_features(win["prompt"].to_numpy()[tt], win["queue_depth"].to_numpy()[tt], F.multiproc(ctx))
    hl = tuple(hardware_levels or (hardware,))
    cl = tuple(class_levels or (model_class,))
    t_end = max(float(recon.steps["t_start_us"].iloc[-1]), 1.0)
    n = len(win)
    return ObsTable(kind=kind, y=win["y_ms"].to_numpy(np.float64), X=X, A=A, n_steps=win["n_steps"].to_numpy(np.float64),
                    hw=np.full(n, hl.index(hardware), dtype=np.int64), cls=np.full(n, cl.index(model_class), dtype=np.int64),
                    run=np.full(n, recon.run, dtype=object).astype(str), request=win["request"].to_numpy(np.int64),
                    t_frac=np.clip(win["t_us"].to_numpy(np.float64) / t_end, 0.0, 1.0),
                    hardware_levels=hl, class_levels=cl,
                    meta={"runs": [recon.run], "deployments": {recon.run: F.deployment_key(ctx, hardware)}})


def concat(tables) -> ObsTable:
    """Concatenate ObsTables, re-indexing hw / cls onto the union of their levels."""
    tables = [t for t in tables if t is not None]
    if not tables:
        raise SpecError("nothing to concatenate", field="tables")
    hl, cl = [], []
    for t in tables:
        hl += [h for h in t.hardware_levels if h not in hl]
        cl += [c for c in t.class_levels if c not in cl]
    parts = {k: [] for k in _ARRAYS}
    for t in tables:
        for k in _ARRAYS:
            v = getattr(t, k)
            if k == "hw":
                v = np.array([hl.index(t.hardware_levels[i]) for i in v], dtype=np.int64)
            elif k == "cls":
                v = np.array([cl.index(t.class_levels[i]) for i in v], dtype=np.int64)
            parts[k].append(np.asarray(v))
    d = {k: np.concatenate(v) for k, v in parts.items()}
    d["run"] = d["run"].astype(str)
    meta = {"runs": [r for t in tables for r in t.meta.get("runs", [])],
            "deployments": {r: k for t in tables for r, k in t.meta.get("deployments", {}).items()},
            "specs": {r: v for t in tables for r, v in (t.meta.get("specs") or {}).items()}}
    return ObsTable(**d, hardware_levels=tuple(hl), class_levels=tuple(cl), meta=meta)


def subsample(obs: ObsTable, n_per_run_kind: int = 200, seed: int = 0, n_time_bins: int = 10) -> ObsTable:
    """At most ``n_per_run_kind`` rows per (run, kind), stratified evenly over ``n_time_bins``
    slices of the run's timeline (load changes over time: the stages of the profile)."""
    rng = np.random.default_rng(seed)
    keep = []
    tb = np.minimum((obs.t_frac * n_time_bins).astype(int), n_time_bins - 1)
    df = pd.DataFrame({"run": obs.run, "kind": obs.kind, "tb": tb, "i": np.arange(len(obs))})
    for _, g in df.groupby(["run", "kind"], sort=True):
        if len(g) <= n_per_run_kind:
            keep.append(g["i"].to_numpy())
            continue
        bins = {b: rng.permutation(x["i"].to_numpy()) for b, x in g.groupby("tb")}
        quota = n_per_run_kind
        chosen = []
        # round-robin over time bins so each slice contributes equally where it can
        pos = {b: 0 for b in bins}
        while quota > 0:
            progressed = False
            for b in sorted(bins):
                if quota == 0:
                    break
                if pos[b] < len(bins[b]):
                    chosen.append(bins[b][pos[b]])
                    pos[b] += 1
                    quota -= 1
                    progressed = True
            if not progressed:
                break
        keep.append(np.array(chosen))
    idx = np.sort(np.concatenate(keep)) if keep else np.array([], dtype=int)
    return obs.subset(idx)


def time_split(obs: ObsTable, frac: float = 0.7) -> tuple[ObsTable, ObsTable]:
    """(train, test): rows in the first ``frac`` of each run's timeline vs the rest."""
    tr = obs.t_frac < frac
    return obs.subset(np.flatnonzero(tr)), obs.subset(np.flatnonzero(~tr))


# ---------------------------------------------------------------------------------------------
# The specs of each run's deployment (``meta["specs"]``; a fit keeps them for ``bayeslat check``)
# ---------------------------------------------------------------------------------------------
#: format tag of :func:`training_specs_json` (``idata.attrs["training_deployments"]``)
TRAINING_SPECS_FORMAT = "bayeslat-training-deployments/1"


def spec_record(model, hw, server) -> dict:
    """One run's deployment as ``ObsTable.meta["specs"][run]``: {"model": ModelSpec, "hardware":
    HardwareSpec, "server": ServerConfig, "max_model_len": int}. A server without
    ``max_model_len`` serves the model's ``max_position_embeddings`` (4096 if unknown), the
    reading ``bayeslat check`` gives the configuration it checks."""
    return {"model": model, "hardware": hw, "server": server, "max_model_len": served_max_model_len(model, server)}


def bundled_spec(run: str) -> dict:
    """:func:`spec_record` of a bundled run (its model, GPU and recorded server config)."""
    from bayeslat.data import datasets
    from bayeslat.config.specs import load_hardware, load_model, load_server

    info = datasets.run_info(run)
    return spec_record(load_model(info["model_spec"]), load_hardware(info["hardware_spec"]), load_server(info["server"]))


def _spec_fields(obj) -> dict:
    from dataclasses import asdict

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
    import json

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
        out[run] = {"model": _ref(models, _spec_fields(rec["model"])), "hardware": _ref(hws, _spec_fields(rec["hardware"])),
                    "server": _spec_fields(rec["server"]), "max_model_len": int(rec["max_model_len"]), "deployment": key}
    return json.dumps({"format": TRAINING_SPECS_FORMAT, "models": models, "hardware": hws, "runs": out},
                      sort_keys=True, separators=(",", ":"))


def training_specs_from_json(text) -> tuple[dict, dict]:
    """Inverse of :func:`training_specs_json`: ({run: spec_record}, {run: why its spec could not
    be rebuilt}). Fields a spec class does not have (a later bayeslat) are ignored; a missing
    required one makes that run's spec unknown."""
    import json
    from dataclasses import fields as dc_fields

    from bayeslat.config import specs as S
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


# ---------------------------------------------------------------------------------------------
# Bundled real runs
# ---------------------------------------------------------------------------------------------
def model_class_of(model_spec) -> str:
    mc = getattr(model_spec, "model_class", None)
    if isinstance(mc, str):
        return mc
    ne = getattr(model_spec, "num_experts", None) or getattr(model_spec, "num_local_experts", None) or 0
    return "moe" if ne else "dense"


def reconstruct_run(run: str):
    """Lifecycle reconstruction of one bundled run with its server config."""
    from bayeslat.data import datasets
    info = datasets.run_info(run)
    srv = info["server"]
    sp = info["profile"]["data"].get("shared_prefix", {})
    kv = srv.get("kv_blocks")
    return R.reconstruct_lifecycle(datasets.requests(info["run"]), run=info["run"], budget=srv["max_num_batched_tokens"],
                                   max_num_seqs=srv["max_num_seqs"], block_size=srv.get("block_size", 16),
                                   system_prompt_len=sp.get("system_prompt_len", 0),
                                   timeout_s=info.get("client_timeout_s", 300.0),
                                   kv_capacity_tokens=kv * srv.get("block_size", 16) if kv else None)


def skip_reason(rec, max_resid_steps: float = 2.0) -> str | None:
    """Why a run's lifecycle reconstruction is not used (None: it is): its step clock does not
    fit the decode windows (median ``|K(fin) - K(ft) - (n - 1)|`` above ``max_resid_steps``),
    with the likely cause from the reconstruction's diagnostics (see
    :mod:`bayeslat.data.reconstruct`, "Where it fails")."""
    i = rec.info
    if i["resid_steps_mad"] <= max_resid_steps:
        return None
    why = f"step clock does not fit: median |K(fin) - K(ft) - (n - 1)| = {i['resid_steps_mad']:.1f} steps > {max_resid_steps}"
    causes = []
    if i.get("kv_demand_ratio_p95", 0.0) > 1.0:
        causes.append(f"the rebuilt batches need {i['kv_demand_ratio_p95']:.2f}x the KV cache (p95): vLLM preempted "
                      "requests, so decode windows hold pauses")
    if i.get("failed_frac", 0.0) > 0.2:
        causes.append(f"{100 * i['failed_frac']:.0f}% of the requests failed (client timeout) after an unknown share "
                      "of service: the batches' composition is unknown")
    return why + ("; " + "; ".join(causes) if causes else "")


def _context_for(info: dict):
    dep = resolve(info["model_spec"], info["hardware_spec"], info["server"], kv="optional")
    return dep.ctx, model_class_of(dep.model)


def bundled_obs(runs=None, exclude=None, seed: int = 0, n_per_run_kind: int | None = 300, step_rows: bool = True,
                max_gap: int = 32, contexts: dict | None = None, max_resid_steps: float = 2.0) -> ObsTable:
    """ObsTable of the bundled real runs (all 16 by default), subsampled per (run, kind).

    ``contexts``: optional {run: (FeatureContext, model_class)} (else from bayeslat.config.specs).
    Step rows (kind 0) come from the 3 traced runs after the clock offset. Runs whose step clock
    does not fit (median |K(fin) - K(ft) - (n - 1)| > ``max_resid_steps``) are skipped and listed
    in ``meta["skipped"]``, with :func:`skip_reason` in ``meta["skip_reasons"]``: currently the
    overloaded Llama-2-7B reasoning run (KV cache exhausted: preemptions, 85% failed requests;
    see :mod:`bayeslat.data.reconstruct`, "Where it fails").

    ``max_gap`` (default 32): a step row spans the ``d <= max_gap`` steps between two consecutive
    sampled records (``n_steps = d``; y = server-clock time between their starts). The
    single-step ``cycle_time_us`` pairs (d = 1) disagree with the per-request ITL (median ~10 ms
    vs ~20 ms per token on Llama-2-70B) while the multi-step gaps agree with it and with the
    reconstruction to 1-2 % MAPE (benchmarks/reconstruct_agreement.py); use ``max_gap=1`` only
    for the contract's literal one-step rows."""
    from bayeslat.data import datasets
    all_runs = list(datasets.runs()["run"])
    sel = [r for r in all_runs if runs is None or any(r == x or r.endswith(x) or x in r for x in runs)]
    sel = [r for r in sel if not exclude or not any(r == x or x in r for x in exclude)]
    if not sel:
        raise SpecError(f"no bundled run matches runs={runs} exclude={exclude}", field="runs")
    trace = datasets.steps()
    tables, skipped, reasons = [], [], {}
    for run in sel:
        info = datasets.run_info(run)
        rec = reconstruct_run(run)
        why = skip_reason(rec, max_resid_steps)
        if why is not None:
            skipped.append(run)
            reasons[run] = why
            continue
        ctx, cls = contexts[run] if contexts and run in contexts else _context_for(info)
        rows = None
        tr = trace[trace["experiment_id"] == run]
        if step_rows and len(tr):
            off = R.estimate_offset(rec, tr, seed=seed)
            rows = R.trace_step_windows(rec, tr, off["offset_us"], max_gap=max_gap)
        t = build_obs(rec, ctx, info["hardware"], cls, trace_rows=rows)
        if not (contexts and run in contexts):  # a given context is not the bundled specs' deployment
            t.meta["specs"] = {run: bundled_spec(run)}
        tables.append(subsample(t, n_per_run_kind, seed) if n_per_run_kind else t)
    if not tables:
        raise SpecError(f"no usable run among {sel} (skipped: {skipped})", field="runs")
    out = concat(tables)
    out.meta["skipped"] = skipped
    out.meta["skip_reasons"] = reasons
    return out


# ---------------------------------------------------------------------------------------------
# Ingested tables (``bayeslat ingest ... --out DIR``)
# ---------------------------------------------------------------------------------------------
#: tables :func:`obs_from_tables` reads from an ingest directory (all of what ingest writes).
TABLE_FILES = ("requests", "request_events", "steps", "step_requests", "kv_steps", "experiments")
#: per-request sources in the order of preference for the lifecycle reconstruction of a run
#: (journey: server-side times and exact server token counts, on the step records' clock).
SOURCE_PREFERENCE = ("journey", "inference_perf", "upstream")


def table_dirs(path) -> list[Path]:
    """The ingest output directories under ``path``: ``path`` itself when it holds
    ``experiments.parquet``, else its immediate sub-directories that do (sorted)."""
    p = Path(path)
    if not p.is_dir():
        raise SpecError("not a directory of ingested tables (write one with `bayeslat ingest ... --out DIR`)",
                        file=str(p), field="data")
    if (p / "experiments.parquet").exists() or not any((d / "experiments.parquet").exists() for d in p.iterdir() if d.is_dir()):
        return [p]
    return sorted(d for d in p.iterdir() if d.is_dir() and (d / "experiments.parquet").exists())


def read_tables(path) -> dict:
    """{name: DataFrame} of one ingest output directory, each checked against its schema
    (:data:`bayeslat.data.ingest.tables.SCHEMAS`). A missing or unreadable table, or one lacking a
    schema column, raises ``IngestError`` naming the file (and the column)."""
    import pyarrow.parquet as pq

    from bayeslat.errors import IngestError
    from bayeslat.data.ingest import tables as T

    p = Path(path)
    out = {}
    for name in TABLE_FILES:
        f = p / f"{name}.parquet"
        if not f.exists():
            raise IngestError(f"missing table {name} (expected {f.name} written by `bayeslat ingest ... --out {p}`)",
                              file=str(f), field=name)
        try:
            t = pq.read_table(str(f))
        except Exception as e:  # noqa: BLE001 - any pyarrow failure: say which file
            raise IngestError(f"unreadable Parquet table: {e}", file=str(f), field=name) from None
        missing = [c for c in T.columns(name) if c not in t.column_names]
        if missing:
            raise IngestError(f"table lacks schema column(s) {missing}", file=str(f), field=missing[0])
        out[name] = T.from_arrow(t, name)
        T.check_schema(out[name], name)
    return out


def _resolve_model(name: str):
    from bayeslat.data.datasets import MODEL_SPEC
    from bayeslat.config.specs import load_model

    cands = [name, name.rsplit("/", 1)[-1], name.rsplit("/", 1)[-1].lower()]
    cands += [MODEL_SPEC[c] for c in list(cands) if c in MODEL_SPEC]
    err = None
    for c in dict.fromkeys(cands):
        try:
            return load_model(c)
        except SpecError as e:
            err = err or e
    raise err


def _resolve_hardware(name: str):
    from bayeslat.data.datasets import HARDWARE_SPEC
    from bayeslat.config.specs import load_hardware

    cands = [name, HARDWARE_SPEC.get(name, name), name.strip().lower().replace(" ", "-")]
    err = None
    for c in dict.fromkeys(cands):
        try:
            return load_hardware(c)
        except SpecError as e:
            err = err or e
    raise err


def experiment_context(exp: dict, *, model=None, hardware=None, server=None, file: str = "experiments") -> dict:
    """Specs of one ``experiments`` row (a dict of its columns): model / hardware resolved as a
    path, a bundled spec key, a HuggingFace id (``org/Name`` -> ``name``) or a datasheet name
    (``"H100 SXM"``); the server dict of ``server_json`` (keys that are not
    :class:`bayeslat.config.specs.ServerConfig` fields, e.g. ``kv_block_bytes``, are ignored).
    ``model`` / ``hardware`` / ``server`` override the row (e.g. the shared data's
    ``exp-config.yaml`` names no hardware). Returns {ctx, model_class, hardware (level name),
    model, hw, server, workload}."""
    import json
    from dataclasses import fields as dc_fields

    from bayeslat.config import specs as S
    def val(k):
        v = exp.get(k)
        return None if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA else v

    mname = model if model is not None else val("model")
    hname = hardware if hardware is not None else val("hardware")
    run = val("run")
    if mname is None:
        raise SpecError(f"run {run!r}: no model (set `model:` in the experiment YAML)", file=file, field="model")
    if hname is None:
        raise SpecError(f"run {run!r}: no hardware (set `hardware:` in the experiment YAML, e.g. 'H100 SXM', "
                        "or pass hardware=)", file=file, field="hardware")
    try:
        m = mname if isinstance(mname, S.ModelSpec) else _resolve_model(str(mname))
    except SpecError as e:
        if e.file != str(mname):  # an error inside the config.json it names is that file's
            raise
        raise SpecError(f"run {run!r}: {str(mname)!r}: {e.reason}", file=file, field="model") from None
    try:
        hw = hname if isinstance(hname, S.HardwareSpec) else _resolve_hardware(str(hname))
    except SpecError as e:
        if e.file != str(hname):
            raise
        raise SpecError(f"run {run!r}: {str(hname)!r}: {e.reason}", file=file, field="hardware") from None
    if server is None or isinstance(server, dict):
        d = json.loads(val("server_json") or "{}") if server is None else dict(server)
        known = {f.name for f in dc_fields(S.ServerConfig)} | set(S._SERVER_ALIASES)
        d = {k: v for k, v in d.items() if str(k).replace("-", "_") in known and k not in ("source",)}
        srv = S.server_from_dict(d, file=f"{file}: server_json of run {run!r}")
    else:
        srv = server
    wl = json.loads(val("workload_json") or "{}")
    dep = resolve(m, hw, srv, kv="optional")
    kv_tokens = float(dep.kv_blocks) * srv.block_size if dep.kv_blocks is not None else None
    return {"ctx": dep.ctx, "model_class": model_class_of(m), "hardware": hw.name,
            "model": m, "hw": hw, "server": srv, "workload": wl, "kv_capacity_tokens": kv_tokens}


def _lifecycle_frame(req: pd.DataFrame) -> tuple[pd.DataFrame, str | None, dict]:
    """The per-request columns :func:`bayeslat.data.reconstruct.reconstruct_lifecycle` needs, from the
    ``requests`` rows of one run: the preferred source (:data:`SOURCE_PREFERENCE`) with at least
    one successful request with a TTFT and an E2E. Rows without arrival or token counts are
    dropped (counted)."""
    info = {}
    for src in SOURCE_PREFERENCE:
        r = req[req["source"] == src]
        if not len(r):
            continue
        ok = (~r["has_error"].fillna(False).astype(bool)) & r["ttft_ms"].notna() & r["e2e_ms"].notna()
        if not ok.any():
            continue
        need = r["arrival_us"].notna() & r["input_tokens"].notna() & r["output_tokens"].notna()
        info = {"source": src, "n_requests": int(len(r)), "n_dropped_incomplete": int((~need).sum())}
        idx = r["index"].to_numpy(dtype="float64", na_value=np.nan)
        idx = np.where(np.isnan(idx), np.arange(len(r)), idx).astype(np.int64)[need.to_numpy()]
        r = r[need]
        df = pd.DataFrame({
            "index": idx,
            "arrival_us": r["arrival_us"].to_numpy(np.int64),
            "input_tokens": r["input_tokens"].to_numpy(np.int64),
            "output_tokens": r["output_tokens"].to_numpy(np.int64),
            "has_error": r["has_error"].fillna(False).to_numpy(bool),
            "ttft_ms": r["ttft_ms"].to_numpy(np.float64), "e2e_ms": r["e2e_ms"].to_numpy(np.float64),
            "arrival_ns": r["arrival_ns"].to_numpy(dtype="float64", na_value=np.nan),
        })
        return df.sort_values("arrival_us", kind="stable").reset_index(drop=True), src, info
    return pd.DataFrame(), None, info


def _per_regime(stats: np.ndarray, ctx) -> np.ndarray:
    feat, reg = F.step_features(np.asarray(stats, dtype=np.float64), ctx)
    per = np.zeros((len(feat), len(F.REGIMES), F.N_BETA))
    per[np.arange(len(feat)), reg, :] = feat
    return per


def exact_step_rows(steps: pd.DataFrame, step_requests: pd.DataFrame, kv_steps: pd.DataFrame | None = None,
                    block_size: int = 16) -> tuple[pd.DataFrame, dict]:
    """Exact one-step rows of one run from ``step.REQUEST_SNAPSHOT`` records (rich step tracing):
    the step's STATS from its per-request snapshots (:func:`bayeslat.data.reconstruct.from_step_requests`),
    ``offload_tokens`` from ``kv_steps`` (blocks offloaded + loaded in that scheduler step x
    ``block_size``), ``n_preempted`` from ``batch.num_preempted``; y = ``cycle_time_us`` (the next
    sampled step's start - this start). Kept: steps whose successor was sampled and whose
    snapshots are complete (as many scheduled PREFILL / DECODE snapshots as
    ``batch.num_prefill_reqs`` / ``batch.num_decode_reqs``, where recorded). A cycle that holds a
    wait for the next arrival is not a step time: vLLM runs one empty step (no snapshots, so no row
    here) after the last request finishes before it idles; where journey requests exist,
    :func:`idle_overlap` finds rows overlapping a time the server held no request.

    Returns (DataFrame with step_id, ts_start_ns, y_ms and the STATS columns, counts)."""
    cols = {"step.id": "step_id", "request.id": "request_id", "request.phase": "phase",
            "request.num_computed_tokens": "num_computed_tokens",
            "request.scheduled_tokens_this_step": "scheduled_tokens_this_step",
            "request.num_prompt_tokens": "num_prompt_tokens"}
    sr = step_requests[list(cols)].rename(columns=cols)
    num = ["step_id", "num_computed_tokens", "scheduled_tokens_this_step", "num_prompt_tokens"]
    complete_row = sr[num].notna().all(axis=1) & sr["phase"].notna()
    counts = {"snapshots": int(len(sr)), "snapshots_incomplete": int((~complete_row).sum())}
    sr = sr[complete_row]
    sr = pd.DataFrame({"step_id": sr["step_id"].to_numpy(np.int64), "request_id": sr["request_id"].astype(str).to_numpy(),
                       "phase": sr["phase"].astype(str).to_numpy(),
                       **{c: sr[c].to_numpy(np.float64) for c in num[1:]}})
    sr = sr[sr["phase"].str.upper().isin(["PREFILL", "DECODE"]) | (sr["scheduled_tokens_this_step"] <= 0)]
    st = pd.DataFrame({"step_id": steps["step.id"].to_numpy(np.int64), "ts_start_ns": steps["step.ts_start_ns"].to_numpy(np.int64),
                       "cycle_time_us": steps["cycle_time_us"].to_numpy(np.float64)})
    if not len(sr):
        return pd.DataFrame(columns=["step_id", "ts_start_ns", "y_ms", *F.STATS]), {**counts, "steps_exact": 0}
    res = R.from_step_requests(sr, st)
    # completeness against the step record's own request counts
    rec = steps.drop_duplicates("step.id").set_index("step.id")
    npf = rec["batch.num_prefill_reqs"].reindex(res["step_id"]).to_numpy(dtype="float64", na_value=np.nan)
    ndc = rec["batch.num_decode_reqs"].reindex(res["step_id"]).to_numpy(dtype="float64", na_value=np.nan)
    # a snapshot labelled PREFILL whose computed tokens cover the prompt counts as a decode in
    # from_step_requests; vLLM's batch counters count requests, so compare the totals
    tot = npf + ndc
    got = (res["n_prefill"] + res["n_decode"]).to_numpy()
    complete = np.isnan(tot) | (got == tot)
    npre = rec["batch.num_preempted"].reindex(res["step_id"]).to_numpy(dtype="float64", na_value=np.nan)
    res["n_preempted"] = np.nan_to_num(npre)
    if kv_steps is not None and len(kv_steps):
        kv = kv_steps.groupby(kv_steps["step"].to_numpy(dtype="float64", na_value=np.nan))[["blocks_offloaded", "blocks_loaded"]].sum()
        moved = (kv["blocks_offloaded"].astype("float64") + kv["blocks_loaded"].astype("float64")).reindex(res["step_id"].astype("float64"))
        res["offload_tokens"] = np.nan_to_num(moved.to_numpy(np.float64)) * float(block_size)
    ok = complete & np.isfinite(res["dt_us"].to_numpy()) & (res["dt_us"].to_numpy() > 0)
    counts.update(steps_with_snapshots=int(len(res)), steps_snapshots_incomplete=int((~complete).sum()),
                  steps_exact=int(ok.sum()))
    out = res[ok].copy()
    out["y_ms"] = out["dt_us"] / 1e3
    return out[["step_id", "ts_start_ns", "y_ms", *F.STATS]].reset_index(drop=True), counts


#: why a journey request gives no alpha row, in the order they are checked (:func:`_alpha_delays`)
ALPHA_MISS_REASONS = ("error", "no ARRIVED / QUEUED", "no FIRST_TOKEN / FIRST_RESPONSE", "no prompt tokens", "negative delay")


def _alpha_delays(j: pd.DataFrame):
    """Of journey rows ``j``: the ARRIVED -> QUEUED and FIRST_TOKEN -> FIRST_RESPONSE delays (ms)
    and, per row, the first of :data:`ALPHA_MISS_REASONS` that keeps it from an alpha row ("" for
    none)."""
    v = lambda c: j[c].to_numpy(dtype="float64", na_value=np.nan)  # noqa: E731
    a1 = (v("queued_ns") - v("arrival_ns")) / 1e6
    a2 = (v("first_response_ns") - v("first_token_ns")) / 1e6
    with np.errstate(invalid="ignore"):
        why = np.select([j["has_error"].fillna(False).to_numpy(bool), ~np.isfinite(a1), ~np.isfinite(a2),
                         j["input_tokens"].isna().to_numpy(), (a1 < 0) | (a2 < 0)], list(ALPHA_MISS_REASONS), "")
    return a1, a2, why


def journey_alpha_rows(req: pd.DataFrame) -> pd.DataFrame:
    """Alpha-only rows (kind 3) of one run from journey requests: y = (QUEUED - ARRIVED) +
    (FIRST_RESPONSE - FIRST_TOKEN) in ms, i.e. all of the TTFT that is not spent waiting for or
    computing scheduler steps (the simulator's alpha: arrival -> wait queue, API and streaming
    overheads included; the same quantity the TTFT rows attribute to alpha). Queue depth at
    arrival = requests of the run queued and not yet finished at the arrival time (running +
    waiting, as in the simulator). Successful requests with all four times only; rows with a
    negative component (clock trouble) are dropped (:func:`journey_alpha_misses` counts why).
    ``request``: position among the run's journey rows (as in :func:`run_obs`); ``t_us``: after
    the run's first journey arrival."""
    j = req[req["source"] == "journey"]
    cols = ("arrival_ns", "queued_ns", "finished_ns", "departed_ns")
    v = {c: j[c].to_numpy(dtype="float64", na_value=np.nan) for c in cols}
    end = np.where(np.isnan(v["finished_ns"]), v["departed_ns"], v["finished_ns"])
    q = v["queued_ns"]
    have = ~np.isnan(q) & ~np.isnan(end)
    qs, es = np.sort(q[have]), np.sort(end[have])
    arr = v["arrival_ns"]
    depth = np.searchsorted(qs, arr, side="right") - np.searchsorted(es, arr, side="right")
    a1, a2, why = _alpha_delays(j)
    ok = why == ""
    t0 = np.nanmin(arr) if np.isfinite(arr).any() else 0.0
    return pd.DataFrame({"request": np.arange(len(j))[ok], "y_ms": (a1 + a2)[ok],
                         "prompt": j["input_tokens"].to_numpy(dtype="float64", na_value=np.nan)[ok],
                         "queue_depth": np.maximum(depth, 0)[ok].astype(np.float64),
                         "t_us": (arr[ok] - t0) / 1e3})


def journey_alpha_misses(req: pd.DataFrame) -> dict:
    """Why journey requests give no alpha row (:func:`journey_alpha_rows`): counts by reason
    (:data:`ALPHA_MISS_REASONS`, the first that applies). Empty when every request has a row."""
    why = _alpha_delays(req[req["source"] == "journey"])[2]
    r, n = np.unique(why[why != ""], return_counts=True)
    return {str(k): int(c) for k, c in zip(r, n)}


def alpha_table(al: pd.DataFrame, ctx, t_end: float, run: str, hardware: str, model_class: str) -> ObsTable:
    """The alpha rows :func:`journey_alpha_rows` gives as an ObsTable (kind 3, alpha features only)."""
    A = F.alpha_features(al["prompt"].to_numpy(), al["queue_depth"].to_numpy(), F.multiproc(ctx))
    return _rows_table(R.KIND_ALPHA, al["y_ms"].to_numpy(), np.zeros((len(al), len(F.REGIMES), F.N_BETA)), A,
                       np.zeros(len(al)), al["request"].to_numpy(), al["t_us"].to_numpy(), t_end, run, hardware, model_class)


def exact_step_table(ex: pd.DataFrame, ctx, t_us, t_end: float, run: str, hardware: str, model_class: str) -> ObsTable:
    """The exact one-step rows :func:`exact_step_rows` gives as an ObsTable (kind 0, one step each),
    at run positions ``t_us``."""
    return _rows_table(R.KIND_STEP, ex["y_ms"].to_numpy(), _per_regime(ex[list(F.STATS)].to_numpy(), ctx),
                       np.zeros((len(ex), F.N_ALPHA)), np.ones(len(ex)), np.full(len(ex), -1), t_us, t_end, run,
                       hardware, model_class)


def journey_offset_us(lf: pd.DataFrame) -> float:
    """The step records' clock offset (``t_client_us = ts_ns / 1000 - offset``) from a journey
    lifecycle frame (:func:`_lifecycle_frame`): exact, the journey's monotonic clock is theirs."""
    i0 = int(np.nanargmin(lf["arrival_ns"].to_numpy()))
    return float(lf["arrival_ns"].iloc[i0]) / 1e3 - float(lf["arrival_us"].iloc[i0]) + float(lf["arrival_us"].min())


def journey_idle_gaps(req: pd.DataFrame) -> np.ndarray:
    """The times the server held no request, from journey requests (server monotonic clock, ns):
    (m, 2) [start, end) gaps between the union of the requests' [QUEUED (else ARRIVED), FINISHED
    (else DEPARTED)] intervals. Empty without journey rows."""
    j = req[req["source"] == "journey"]
    if not len(j):
        return np.zeros((0, 2))
    v = lambda c: j[c].to_numpy(dtype="float64", na_value=np.nan)  # noqa: E731
    a = np.where(np.isnan(v("queued_ns")), v("arrival_ns"), v("queued_ns"))
    b = np.where(np.isnan(v("finished_ns")), v("departed_ns"), v("finished_ns"))
    ok = np.isfinite(a) & np.isfinite(b) & (b >= a)
    a, b = a[ok], b[ok]
    if not len(a):
        return np.zeros((0, 2))
    o = np.argsort(a, kind="stable")
    a, b = a[o], np.maximum.accumulate(b[o])  # b: the latest end of the requests queued so far
    gap = a[1:] > b[:-1]
    return np.stack([b[:-1][gap], a[1:][gap]], axis=1)


def idle_overlap(t0_ns, y_ms, gaps: np.ndarray) -> np.ndarray:
    """Whether each span [t0, t0 + y) (server clock, ns and ms) overlaps an idle gap of the server
    (:func:`journey_idle_gaps`): a step row whose y would time the wait for the next arrival, not
    steps (exact step rows, and sampled pairs the reconstruction's own idle steps miss when its
    estimated step times shift a gap)."""
    t0 = np.asarray(t0_ns, dtype=np.float64)
    if not len(t0) or not len(gaps):
        return np.zeros(len(t0), bool)
    i = np.searchsorted(gaps[:, 1], t0, side="right")  # the first gap ending after the span's start
    return (i < len(gaps)) & (gaps[np.minimum(i, len(gaps) - 1), 0] < t0 + np.asarray(y_ms, dtype=np.float64) * 1e6)


def _rows_table(kind, y, X, A, n_steps, request, t_us, t_end, run, hardware, model_class) -> ObsTable:
    n = len(y)
    return ObsTable(kind=np.full(n, kind, dtype=np.int64), y=np.asarray(y, np.float64), X=X, A=A,
                    n_steps=np.asarray(n_steps, np.float64), hw=np.zeros(n, np.int64), cls=np.zeros(n, np.int64),
                    run=np.full(n, run, dtype=object).astype(str), request=np.asarray(request, np.int64),
                    t_frac=np.clip(np.asarray(t_us, np.float64) / max(t_end, 1.0), 0.0, 1.0),
                    hardware_levels=(hardware,), class_levels=(model_class,), meta={"runs": [run]})


def run_obs(tables: dict, run: str, spec: dict, *, seed: int = 0, step_rows: bool = True, alpha_rows: bool = True,
            max_gap: int = 32, max_resid_steps: float = 2.0, include_warmup: bool = False,
            timeout_s: float = 300.0) -> tuple[ObsTable | None, dict]:
    """Observation rows of one ingested run (``spec`` from :func:`experiment_context`):

    1. lifecycle reconstruction (:func:`bayeslat.data.reconstruct.reconstruct_lifecycle`, as
       :func:`bundled_obs` does for the bundled runs) of the run's per-request rows
       (:data:`SOURCE_PREFERENCE`) -> decode windows (kind 1) and TTFT rows (kind 2) via
       :func:`build_obs`; skipped when the step clock does not fit (median ``|resid_steps| >
       max_resid_steps``, see :func:`bundled_obs`);
    2. step rows (kind 0): exact one-step rows where step snapshots exist
       (:func:`exact_step_rows`), and the other sampled step pairs (gap <= ``max_gap``) mapped onto
       the reconstruction (:func:`bayeslat.data.reconstruct.trace_step_windows`) with the clock offset:
       exact for journey requests (the same monotonic clock as the step records), else estimated
       (:func:`bayeslat.data.reconstruct.estimate_offset`);
    3. alpha-only rows (kind 3) from journey requests (:func:`journey_alpha_rows`).

    ``request`` of a row: the replay ``index`` (inference-perf), else the position of the request
    among the run's rows of that source in the ``requests`` table. Returns (ObsTable or None when
    the run yields no row, info dict)."""
    srv, ctx = spec["server"], spec["ctx"]
    hwname, cls = spec["hardware"], spec["model_class"]
    req = tables["requests"][tables["requests"]["run"] == run]
    steps = tables["steps"][tables["steps"]["run"] == run].sort_values("step.id", kind="stable")
    sreq = tables["step_requests"][tables["step_requests"]["run"] == run]
    kvs = tables["kv_steps"][tables["kv_steps"]["run"] == run]
    info = {"run": run, "hardware": hwname, "model_class": cls, "rows": {}}
    sp = ((spec.get("workload") or {}).get("data") or {}).get("shared_prefix") or {}

    # 1. lifecycle reconstruction
    lf, src, linfo = _lifecycle_frame(req)
    info["lifecycle"] = linfo
    rec = None
    if src is not None:
        rec = R.reconstruct_lifecycle(lf, run=run, budget=srv.max_num_batched_tokens, max_num_seqs=srv.max_num_seqs,
                                      block_size=srv.block_size, prefix_cache="repeat" if srv.prefix_caching else "none",
                                      system_prompt_len=int(sp.get("system_prompt_len", 0) or 0), timeout_s=timeout_s,
                                      kv_capacity_tokens=spec.get("kv_capacity_tokens"))
        linfo.update({k: rec.info[k] for k in ("resid_steps_mad", "n_steps", "counts", "prefill_overflow", "n_warmup",
                                               "failed_frac", "kv_demand_p95_tokens", "kv_demand_ratio_p95") if k in rec.info})
        why = skip_reason(rec, max_resid_steps)
        if why is not None:
            info["skipped_lifecycle"] = why
            rec = None
    t_end = float(rec.steps["t_start_us"].iloc[-1]) if rec is not None else None

    # clock offset of the step records (t_client_us = ts_ns / 1000 - offset_us)
    off = None
    if step_rows and len(steps) and rec is not None:
        if src == "journey" and np.isfinite(lf["arrival_ns"]).any():
            off = {"offset_us": journey_offset_us(lf), "sd_us": 0.0, "method": "journey (same monotonic clock as the step records)"}
        else:
            tr = pd.DataFrame({c: steps[c].to_numpy(dtype="float64", na_value=np.nan) for c in
                               ("step.id", "step.ts_start_ns", "batch.decode_tokens", "queue.running_depth", "batch.prefill_tokens")})
            tr = tr[tr.notna().all(axis=1)]
            if len(tr) >= 2:
                off = R.estimate_offset(rec, tr, seed=seed)
                off["method"] = "estimated (traced vs reconstructed batch composition)"
    info["clock_offset"] = off
    # exact clock: step rows spanning a time the server held no request are idle, not steps
    gaps = journey_idle_gaps(req) if src == "journey" and off is not None else None

    tabs = []
    # 2a. exact one-step rows from the snapshots
    exact_ids = np.zeros(0, np.int64)
    if step_rows and len(steps) and len(sreq):
        ex, cnt = exact_step_rows(steps, sreq, kvs, block_size=srv.block_size)
        if gaps is not None:
            idle = idle_overlap(ex["ts_start_ns"], ex["y_ms"], gaps)
            ex = ex[~idle]
            cnt["steps_idle_dropped"] = int(idle.sum())
        info["exact_steps"] = cnt
        if len(ex):
            exact_ids = ex["step_id"].to_numpy(np.int64)
            ts = ex["ts_start_ns"].to_numpy(np.float64) / 1e3
            if off is not None:   # position on the run's (client) timeline
                t_us, te = ts - off["offset_us"], t_end
            else:                 # ... else on the step records' own span
                t0 = float(steps["step.ts_start_ns"].min()) / 1e3
                t_us, te = ts - t0, float(steps["step.ts_start_ns"].max()) / 1e3 - t0
            tabs.append(exact_step_table(ex, ctx, t_us, te, run, hwname, cls))
        info["rows"]["step_exact"] = int(len(ex))
    # 1 + 2b. windows, TTFT rows and the other sampled step pairs on the reconstruction
    if rec is not None:
        trace_rows = None
        if off is not None:
            tr = pd.DataFrame({"step.id": steps["step.id"].to_numpy(np.int64),
                               "step.ts_start_ns": steps["step.ts_start_ns"].to_numpy(np.float64)})
            trace_rows = R.trace_step_windows(rec, tr, off["offset_us"], max_gap=max_gap, skip_ids=exact_ids)
            if gaps is not None:
                idle = idle_overlap((trace_rows["t_us"] + off["offset_us"]) * 1e3, trace_rows["y_ms"], gaps)
                trace_rows = trace_rows[~idle]
                info["rows"]["step_trace_idle_dropped"] = int(idle.sum())
            info["rows"]["step_trace"] = int(len(trace_rows))
        t = build_obs(rec, ctx, hwname, cls, trace_rows=trace_rows, include_warmup=include_warmup)
        tabs.append(t)
        for k, name in ((R.KIND_WINDOW, "window"), (R.KIND_TTFT, "ttft")):
            info["rows"][name] = int((t.kind == k).sum())
    # 3. alpha-only rows
    if alpha_rows:
        al = journey_alpha_rows(req)
        if len(al):
            tabs.append(alpha_table(al, ctx, t_end if t_end is not None else float(al["t_us"].max()), run, hwname, cls))
        info["rows"]["alpha"] = int(len(al))
    if not tabs:
        return None, info
    out = concat(tabs)
    out.meta["runs"] = [run]
    out.meta["deployments"] = {run: F.deployment_key(ctx, hwname)}
    out.meta["specs"] = {run: spec_record(spec["model"], spec["hw"], srv)}
    return out, info


def _table_sets(tables) -> list[tuple[dict, str]]:
    """[(tables dict, source name)] of what :func:`obs_from_tables` accepts."""
    if isinstance(tables, (list, tuple)):
        return [x for t in tables for x in _table_sets(t)]
    if isinstance(tables, dict):
        missing = [n for n in TABLE_FILES if n not in tables]
        if missing:
            raise SpecError(f"missing table {missing[0]}", file="tables", field=missing[0])
        return [(tables, "tables")]
    return [(read_tables(d), str(Path(d) / "experiments.parquet")) for d in table_dirs(tables)]


def obs_from_tables(tables, *, runs=None, exclude=None, seed: int | None = 0, n_per_run_kind: int | None = 300,
                    step_rows: bool = True, alpha_rows: bool = True, max_gap: int = 32, max_resid_steps: float = 2.0,
                    include_warmup: bool = False, model=None, hardware=None, server=None, timeout_s: float = 300.0) -> ObsTable:
    """ObsTable of ingested runs: the tables ``bayeslat ingest ... --out DIR`` writes.

    ``tables``: an ingest output directory, a directory of such directories (one per run or
    ingest), a ``{name: DataFrame}`` dict (e.g. ``ingest(...).tables`` without ``out``), or a list
    of these. Every run of an ``experiments`` table is turned into rows by :func:`run_obs` with
    the specs of its experiment row (:func:`experiment_context`; ``model`` / ``hardware`` /
    ``server`` override them for every run), then subsampled to ``n_per_run_kind`` rows per (run,
    kind) like :func:`bundled_obs` (None: all rows). ``runs`` / ``exclude``: substring filters on
    the run id. ``meta``: ``runs``, ``skipped`` (runs without usable lifecycle rows) with
    ``skip_reasons``, and ``info`` (per run: per-request source, clock offset, row counts,
    reconstruction diagnostics).

    Errors name the file: a missing or malformed table, data of a run without an experiments
    row, specs that do not resolve, no rows at all."""
    seed = 0 if seed is None else seed
    out_tabs, skipped, reasons, infos, seen = [], [], {}, {}, []
    for tb, src in _table_sets(tables):
        exps = tb["experiments"]
        known = set(exps["run"].dropna())
        data_runs = dict.fromkeys(list(tb["requests"]["run"].dropna()) + list(tb["steps"]["run"].dropna()))
        no_exp = [r for r in data_runs if r not in known]
        if no_exp:
            raise SpecError(f"run(s) {no_exp} have data but no experiments row (ingest with --experiment EXP.yaml)",
                            file=src, field="run")
        seen += list(exps["run"].dropna())
        sel = [r for r in exps["run"].dropna() if runs is None or any(r == x or x in r for x in runs)]
        sel = [r for r in sel if not exclude or not any(r == x or x in r for x in exclude)]
        for run in sel:
            exp = exps[exps["run"] == run].iloc[0].to_dict()
            spec = experiment_context(exp, model=model, hardware=hardware, server=server, file=src)
            t, info = run_obs(tb, run, spec, seed=seed, step_rows=step_rows, alpha_rows=alpha_rows, max_gap=max_gap,
                              max_resid_steps=max_resid_steps, include_warmup=include_warmup, timeout_s=timeout_s)
            info["source_file"] = src
            infos[run] = info
            if "skipped_lifecycle" in info or info["lifecycle"].get("source") is None:
                skipped.append(run)
                reasons[run] = info.get("skipped_lifecycle", "no per-request rows with TTFT and E2E")
            if t is not None:
                out_tabs.append(subsample(t, n_per_run_kind, seed) if n_per_run_kind else t)
    if not infos:
        raise SpecError(f"no ingested run matches runs={runs} exclude={exclude} (have {seen})", field="runs")
    if not out_tabs:
        raise SpecError(f"no observation rows from {list(infos)} ({reasons})", field="runs")
    out = concat(out_tabs)
    out.meta.update(skipped=skipped, skip_reasons=reasons, info=infos)
    return out
