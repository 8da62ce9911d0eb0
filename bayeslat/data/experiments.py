"""Ingested runs (the Parquet tables of ``bayeslat ingest ... --out DIR``; what ``bayeslat fit --data
DIR`` reads) as an :class:`~bayeslat.data.obs.ObsTable`: the tables read and checked, each run's
specs resolved from its ``experiments`` row, then the per-run pipeline of the bundled runs
(lifecycle reconstruction -> :func:`~bayeslat.data.obs.build_obs`) plus, where the traces carry
them, exact one-step rows from step snapshots and alpha-only rows from journey events
(:mod:`bayeslat.data.trace_rows`).
"""

from __future__ import annotations

import json
from dataclasses import fields as dc_fields
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from bayeslat import config as S
from bayeslat import features as F
from bayeslat.config import load_hardware, load_model
from bayeslat.data import reconstruct as R
from bayeslat.data import windows as RW
from bayeslat.data.bundled import model_class_of, skip_reason
from bayeslat.data.datasets import HARDWARE_SPEC, MODEL_SPEC
from bayeslat.data.ingest import tables as T
from bayeslat.data.obs import ObsTable, build_obs, collapse, concat, subsample
from bayeslat.data.trace_rows import (
    alpha_table,
    exact_step_rows,
    exact_step_table,
    idle_overlap,
    journey_alpha_rows,
    journey_idle_gaps,
    journey_offset_us,
)
from bayeslat.data.training_specs import spec_record
from bayeslat.deployment import resolve
from bayeslat.errors import IngestError, SpecError

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
        raise SpecError(
            "not a directory of ingested tables (write one with `bayeslat ingest ... --out DIR`)", file=str(p), field="data"
        )
    if (p / "experiments.parquet").exists() or not any((d / "experiments.parquet").exists() for d in p.iterdir() if d.is_dir()):
        return [p]
    return sorted(d for d in p.iterdir() if d.is_dir() and (d / "experiments.parquet").exists())


def read_tables(path) -> dict:
    """{name: DataFrame} of one ingest output directory, each checked against its schema
    (:data:`bayeslat.data.ingest.tables.SCHEMAS`). A missing or unreadable table, or one lacking a
    schema column, raises ``IngestError`` naming the file (and the column)."""
    p = Path(path)
    out = {}
    for name in TABLE_FILES:
        f = p / f"{name}.parquet"
        if not f.exists():
            raise IngestError(
                f"missing table {name} (expected {f.name} written by `bayeslat ingest ... --out {p}`)", file=str(f), field=name
            )
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
    :class:`bayeslat.config.ServerConfig` fields, e.g. ``kv_block_bytes``, are ignored).
    ``model`` / ``hardware`` / ``server`` override the row (e.g. the shared data's
    ``exp-config.yaml`` names no hardware). Returns {ctx, model_class, hardware (level name),
    model, hw, server, workload}."""

    def val(k):
        v = exp.get(k)
        return None if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA else v

    mname = model if model is not None else val("model")
    hname = hardware if hardware is not None else val("hardware")
    run = val("run")
    if mname is None:
        raise SpecError(f"run {run!r}: no model (set `model:` in the experiment YAML)", file=file, field="model")
    if hname is None:
        raise SpecError(
            f"run {run!r}: no hardware (set `hardware:` in the experiment YAML, e.g. 'H100 SXM', or pass hardware=)",
            file=file,
            field="hardware",
        )
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
        known = {f.name for f in dc_fields(S.ServerConfig)} | set(S.SERVER_ALIASES)
        d = {k: v for k, v in d.items() if str(k).replace("-", "_") in known and k not in ("source",)}
        srv = S.server_from_dict(d, file=f"{file}: server_json of run {run!r}")
    else:
        srv = server
    wl = json.loads(val("workload_json") or "{}")
    dep = resolve(m, hw, srv, kv="optional")
    kv_tokens = float(dep.kv_blocks) * srv.block_size if dep.kv_blocks is not None else None
    return {
        "ctx": dep.ctx,
        "model_class": model_class_of(m),
        "hardware": hw.name,
        "model": m,
        "hw": hw,
        "server": srv,
        "workload": wl,
        "kv_capacity_tokens": kv_tokens,
    }


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
        df = pd.DataFrame(
            {
                "index": idx,
                "arrival_us": r["arrival_us"].to_numpy(np.int64),
                "input_tokens": r["input_tokens"].to_numpy(np.int64),
                "output_tokens": r["output_tokens"].to_numpy(np.int64),
                "has_error": r["has_error"].fillna(False).to_numpy(bool),
                "ttft_ms": r["ttft_ms"].to_numpy(np.float64),
                "e2e_ms": r["e2e_ms"].to_numpy(np.float64),
                "arrival_ns": r["arrival_ns"].to_numpy(dtype="float64", na_value=np.nan),
            }
        )
        return df.sort_values("arrival_us", kind="stable").reset_index(drop=True), src, info
    return pd.DataFrame(), None, info


def run_obs(
    tables: dict,
    run: str,
    spec: dict,
    *,
    seed: int = 0,
    step_rows: bool = True,
    alpha_rows: bool = True,
    max_gap: int = 32,
    max_resid_steps: float = 2.0,
    include_warmup: bool = False,
    timeout_s: float = 300.0,
    bins: tuple[int, int] | None = None,
) -> tuple[ObsTable | None, dict]:
    """Observation rows of one ingested run (``spec`` from :func:`experiment_context`), each kind
    collapsed into bin means with ``bins`` (:func:`bayeslat.data.obs.collapse`):

    1. lifecycle reconstruction (:func:`bayeslat.data.reconstruct.reconstruct_lifecycle`, as
       :func:`bundled_obs` does for the bundled runs) of the run's per-request rows
       (:data:`SOURCE_PREFERENCE`) -> decode windows (kind 1) and TTFT rows (kind 2) via
       :func:`build_obs`; skipped when the step clock does not fit (median ``|resid_steps| >
       max_resid_steps``, see :func:`bundled_obs`);
    2. step rows (kind 0): exact one-step rows where step snapshots exist
       (:func:`exact_step_rows`), and the other sampled step pairs (gap <= ``max_gap``) mapped onto
       the reconstruction (:func:`bayeslat.data.windows.trace_step_windows`) with the clock offset:
       exact for journey requests (the same monotonic clock as the step records), else estimated
       (:func:`bayeslat.data.windows.estimate_offset`);
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
        rec = R.reconstruct_lifecycle(
            lf,
            run=run,
            budget=srv.max_num_batched_tokens,
            max_num_seqs=srv.max_num_seqs,
            block_size=srv.block_size,
            prefix_cache="repeat" if srv.prefix_caching else "none",
            system_prompt_len=int(sp.get("system_prompt_len", 0) or 0),
            timeout_s=timeout_s,
            kv_capacity_tokens=spec.get("kv_capacity_tokens"),
        )
        linfo.update(
            {
                k: rec.info[k]
                for k in (
                    "resid_steps_mad",
                    "n_steps",
                    "counts",
                    "prefill_overflow",
                    "n_warmup",
                    "failed_frac",
                    "kv_demand_p95_tokens",
                    "kv_demand_ratio_p95",
                )
                if k in rec.info
            }
        )
        why = skip_reason(rec, max_resid_steps)
        if why is not None:
            info["skipped_lifecycle"] = why
            rec = None
    t_end = float(rec.steps["t_start_us"].iloc[-1]) if rec is not None else None

    # clock offset of the step records (t_client_us = ts_ns / 1000 - offset_us)
    off = None
    if step_rows and len(steps) and rec is not None:
        if src == "journey" and np.isfinite(lf["arrival_ns"]).any():
            off = {
                "offset_us": journey_offset_us(lf),
                "sd_us": 0.0,
                "method": "journey (same monotonic clock as the step records)",
            }
        else:
            tr = pd.DataFrame(
                {
                    c: steps[c].to_numpy(dtype="float64", na_value=np.nan)
                    for c in ("step.id", "step.ts_start_ns", "batch.decode_tokens", "queue.running_depth", "batch.prefill_tokens")
                }
            )
            tr = tr[tr.notna().all(axis=1)]
            if len(tr) >= 2:
                off = RW.estimate_offset(rec, tr, seed=seed)
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
            if off is not None:  # position on the run's (client) timeline
                t_us, te = ts - off["offset_us"], t_end
            else:  # ... else on the step records' own span
                t0 = float(steps["step.ts_start_ns"].min()) / 1e3
                t_us, te = ts - t0, float(steps["step.ts_start_ns"].max()) / 1e3 - t0
            t_ex = exact_step_table(ex, ctx, t_us, te, run, hwname, cls)
            tabs.append(collapse(t_ex, None, *bins) if bins else t_ex)  # one step each: disjoint
        info["rows"]["step_exact"] = int(len(ex))
    # 1 + 2b. windows, TTFT rows and the other sampled step pairs on the reconstruction
    if rec is not None:
        trace_rows = None
        if off is not None:
            tr = pd.DataFrame(
                {
                    "step.id": steps["step.id"].to_numpy(np.int64),
                    "step.ts_start_ns": steps["step.ts_start_ns"].to_numpy(np.float64),
                }
            )
            trace_rows = RW.trace_step_windows(rec, tr, off["offset_us"], max_gap=max_gap, skip_ids=exact_ids)
            if gaps is not None:
                idle = idle_overlap((trace_rows["t_us"] + off["offset_us"]) * 1e3, trace_rows["y_ms"], gaps)
                trace_rows = trace_rows[~idle]
                info["rows"]["step_trace_idle_dropped"] = int(idle.sum())
            info["rows"]["step_trace"] = int(len(trace_rows))
        t = build_obs(rec, ctx, hwname, cls, trace_rows=trace_rows, include_warmup=include_warmup, bins=bins)
        tabs.append(t)
        for k, name in ((R.KIND_WINDOW, "window"), (R.KIND_TTFT, "ttft")):
            info["rows"][name] = int(t.n_rows[t.kind == k].sum())
    # 3. alpha-only rows
    if alpha_rows:
        al = journey_alpha_rows(req)
        if len(al):
            t_al = alpha_table(al, ctx, t_end if t_end is not None else float(al["t_us"].max()), run, hwname, cls)
            tabs.append(collapse(t_al, None, *bins) if bins else t_al)  # requests: no steps shared
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


def obs_from_tables(
    tables,
    *,
    runs=None,
    exclude=None,
    seed: int | None = 0,
    n_per_run_kind: int | None = 300,
    step_rows: bool = True,
    alpha_rows: bool = True,
    max_gap: int = 32,
    max_resid_steps: float = 2.0,
    include_warmup: bool = False,
    model=None,
    hardware=None,
    server=None,
    timeout_s: float = 300.0,
    bins: tuple[int, int] | None = None,
) -> ObsTable:
    """ObsTable of ingested runs: the tables ``bayeslat ingest ... --out DIR`` writes.

    ``tables``: an ingest output directory, a directory of such directories (one per run or
    ingest), a ``{name: DataFrame}`` dict (e.g. ``ingest(...).tables`` without ``out``), or a list
    of these. Every run of an ``experiments`` table is turned into rows by :func:`run_obs` with
    the specs of its experiment row (:func:`experiment_context`; ``model`` / ``hardware`` /
    ``server`` override them for every run), then subsampled to ``n_per_run_kind`` rows per (run,
    kind) like :func:`bundled_obs` (None: all rows), or, with ``bins`` (time slices, design bins),
    every row collapsed into bin means (:func:`bayeslat.data.obs.collapse`; no subsample). ``runs`` / ``exclude``: substring filters on
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
            raise SpecError(
                f"run(s) {no_exp} have data but no experiments row (ingest with --experiment EXP.yaml)", file=src, field="run"
            )
        seen += list(exps["run"].dropna())
        sel = [r for r in exps["run"].dropna() if runs is None or any(r == x or x in r for x in runs)]
        sel = [r for r in sel if not exclude or not any(r == x or x in r for x in exclude)]
        for run in sel:
            exp = exps[exps["run"] == run].iloc[0].to_dict()
            spec = experiment_context(exp, model=model, hardware=hardware, server=server, file=src)
            t, info = run_obs(
                tb,
                run,
                spec,
                seed=seed,
                step_rows=step_rows,
                alpha_rows=alpha_rows,
                max_gap=max_gap,
                max_resid_steps=max_resid_steps,
                include_warmup=include_warmup,
                timeout_s=timeout_s,
                bins=bins,
            )
            info["source_file"] = src
            infos[run] = info
            if "skipped_lifecycle" in info or info["lifecycle"].get("source") is None:
                skipped.append(run)
                reasons[run] = info.get("skipped_lifecycle", "no per-request rows with TTFT and E2E")
            if t is not None:
                out_tabs.append(subsample(t, n_per_run_kind, seed) if n_per_run_kind and not bins else t)
    if not infos:
        raise SpecError(f"no ingested run matches runs={runs} exclude={exclude} (have {seen})", field="runs")
    if not out_tabs:
        raise SpecError(f"no observation rows from {list(infos)} ({reasons})", field="runs")
    out = concat(out_tabs)
    out.meta.update(skipped=skipped, skip_reasons=reasons, info=infos)
    return out
