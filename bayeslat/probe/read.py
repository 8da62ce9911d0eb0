"""A probe, a short run of a configuration, read into observation rows of the SPEC's group:
per-request CSV / Parquet files, ``bundled:`` probes of a bundled run, ``bayeslat ingest --out``
directories or vLLM trace files (:func:`probe_obs`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd

from bayeslat import features as F
from bayeslat.data import datasets, design
from bayeslat.data import reconstruct as R
from bayeslat.data import windows as RW
from bayeslat.data.ingest import ingest
from bayeslat.data.ingest._io import detect_kind
from bayeslat.data.workload import numeric_column
from bayeslat.errors import IngestError, SpecError
from bayeslat.simulate.spec import resolve_spec

PROBE_WARMUP = 20  # requests skipped at the start of a bundled run for a "bundled:" probe


def read_probe(path: str) -> tuple[pd.DataFrame, dict]:
    """Per-request probe data as the columns :func:`bayeslat.data.reconstruct.reconstruct_lifecycle`
    needs, plus info. ``path``: CSV / Parquet (arrival_time_us or arrival_us, input_tokens,
    output_tokens, ttft_ms, e2e_ms; optional has_error) or ``bundled:<run>[:first_n[:stage]]`` (the
    first ``first_n`` requests after ``PROBE_WARMUP`` warm-up requests of a bundled run; with
    ``stage``, of that load stage of its profile, the requests of earlier stages still in flight at
    the warm-up's first arrival kept as context: :func:`bundled_probe`).

    ``info["cut_us"]``: the time after which the probe no longer sees every request the server
    held: the next arrival after a bundled probe, the last arrival of a file (a probe cut from a
    longer run; a standalone probe run loses only its drain). Rows ending later are dropped by
    :func:`probe_obs`. The frame's ``context_only`` requests (a bundled probe's warm-up) occupy the
    reconstructed batches but give no rows."""
    path = str(path)
    info = {"source": path, "system_prompt_len": 0}
    if path.startswith("bundled:"):
        parts = path.split(":")
        run = parts[1]
        known = sorted(datasets.runs()["run"])
        if len(parts) > 4 or not run or not any(r == run or r.endswith(run) for r in known):
            raise SpecError(
                f"expected bundled:<run>[:first_n[:stage]] with a bundled run ({', '.join(known)})", file=path, field="probe"
            )
        matches = [run] if run in known else [r for r in known if r.endswith(run)]
        if len(matches) > 1:
            raise SpecError(
                f"{run!r} names {len(matches)} bundled runs ({', '.join(matches)}): give one", file=path, field="probe"
            )
        run = matches[0]
        for i, what in ((2, "first_n"), (3, "stage")):
            if len(parts) > i and parts[i] and not (parts[i].isdigit() and (i == 3 or int(parts[i]) > 0)):
                raise SpecError(f"must be an integer{' > 0' if i == 2 else ''}, got {parts[i]!r}", file=path, field=what)
        n = int(parts[2]) if len(parts) > 2 and parts[2] else None
        ri = datasets.run_info(run)
        full = datasets.requests(run).sort_values("arrival_us", kind="stable").reset_index(drop=True)
        start = 0
        if len(parts) > 3 and parts[3]:
            stage = int(parts[3])
            if stage not in set(full["stage"].tolist()):
                raise SpecError(
                    f"run {run} has no load stage {stage} (stages {sorted(set(full['stage'].tolist()))})",
                    file=path,
                    field="stage",
                )
            start = int(np.flatnonzero(full["stage"].to_numpy() == stage)[0])
        end = start + PROBE_WARMUP + n if n else len(full)
        # the warm-up requests were in the server: they stay in the reconstruction, without rows;
        # so do the requests of earlier stages still in flight when the warm-up begins
        t0 = full["arrival_us"].iloc[start]
        before = full.iloc[:start]
        in_flight = before[before["arrival_us"] + 1e3 * before["e2e_ms"].fillna(np.inf) > t0]
        df = pd.concat([in_flight, full.iloc[start:end]])
        df["context_only"] = np.r_[np.ones(len(in_flight), bool), np.arange(len(df) - len(in_flight)) < PROBE_WARMUP]
        nxt = full["arrival_us"].iloc[end] if end < len(full) else np.inf
        info.update(
            run=ri["run"],
            system_prompt_len=ri["profile"]["data"].get("shared_prefix", {}).get("system_prompt_len", 0),
            cut_us=float(nxt - df["arrival_us"].min()),
        )
    else:
        p = Path(path)
        if not p.exists():
            raise SpecError("no such file", file=path)
        try:
            df = pd.read_parquet(p) if p.suffix in (".parquet", ".pq") else pd.read_csv(p)
        except (OSError, ValueError) as e:  # pandas / pyarrow on a binary, empty or corrupt file
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise SpecError(
                f"not a per-request CSV / Parquet file, nor a trace file bayeslat reads ({msg})", file=path, field="probe"
            ) from None
        renamed = "arrival_us" not in df.columns and "arrival_time_us" in df.columns
        if renamed:
            df = df.rename(columns={"arrival_time_us": "arrival_us"})
        for c in ("arrival_us", "input_tokens", "output_tokens", "ttft_ms", "e2e_ms"):
            if c not in df.columns:
                raise SpecError(
                    "missing column (need arrival_time_us, input_tokens, output_tokens, ttft_ms, e2e_ms)", file=path, field=c
                )
        for c in ("arrival_us", "input_tokens", "output_tokens", "ttft_ms", "e2e_ms"):
            tokens = c in ("input_tokens", "output_tokens")
            # a failed request has no ttft / e2e (empty cell): that is not bad input
            df[c] = numeric_column(
                df,
                c,
                path,
                field="arrival_time_us" if c == "arrival_us" and renamed else c,
                missing_ok=c in ("ttft_ms", "e2e_ms"),
                min_value=1 if tokens else None,
                whole=tokens,
            )
        if "has_error" not in df.columns:
            df["has_error"] = ~(np.isfinite(df["ttft_ms"]) & np.isfinite(df["e2e_ms"]))
        if "index" not in df.columns:
            df["index"] = np.arange(len(df))
        info["run"] = "probe:" + p.stem
        df["context_only"] = False
        info["cut_us"] = float(df["arrival_us"].max() - df["arrival_us"].min())
    df = df.sort_values("arrival_us", kind="stable").reset_index(drop=True)
    df["arrival_us"] = df["arrival_us"] - df["arrival_us"].min()
    return df, info


#: how a bundled run is probed (:func:`bundled_probe`): "first", the first n requests after the
#: warm-up; "stages", n split evenly over the run's load stages, the first n / k of each stage
PROBE_DESIGNS = ("first", "stages")


def bundled_probe(run: str, n_requests: int, design: str = "first") -> list[str]:
    """The probe sources (for :func:`probe_obs`) of a probe of ``n_requests`` requests of bundled
    run ``run``. ``design="first"``: the first ``n_requests`` after ``PROBE_WARMUP`` warm-up
    requests (a short run at the workload's first load). ``"stages"``: the same split evenly over
    the load stages of the run's profile, the first n / k requests after each stage's own warm-up
    (a short run at each load the prediction is for; one stage: the same as "first")."""
    if design not in PROBE_DESIGNS:
        raise SpecError(f"probe design must be one of {PROBE_DESIGNS}, got {design!r}", field="design")
    run = datasets.run_info(run)["run"]
    stages = sorted(set(datasets.requests(run)["stage"].tolist()))
    if design == "first" or len(stages) == 1:
        return [f"bundled:{run}:{int(n_requests)}"]
    k = len(stages)
    sizes = [int(n_requests) // k + (i < int(n_requests) % k) for i in range(k)]
    return [f"bundled:{run}:{m}:{st}" for m, st in zip(sizes, stages)]


def probe_design_of(probe_paths) -> str:
    """The design of probe sources: "stages" when a bundled source names a stage, else "first"."""
    paths = [probe_paths] if isinstance(probe_paths, (str, Path)) else list(probe_paths)
    return "stages" if any(str(p).startswith("bundled:") and len(str(p).split(":")) > 3 for p in paths) else "first"


#: ``bayeslat.data.ingest`` file kinds (:func:`bayeslat.data.ingest._io.detect_kind`) a probe may be given as:
#: vLLM's OTLP journey / step traces, its KV event stream, inference-perf replay (+ ground truth) files
PROBE_TRACE_KINDS = ("otlp", "kv_events", "replay", "ground_truth")


def _probe_inputs(probe_paths) -> list[tuple[str, object]]:
    """Sort probe inputs: ("requests", path) for a ``bundled:`` probe or a per-request CSV / Parquet
    file (:func:`read_probe`), ("tables", dir) for a ``bayeslat ingest --out`` directory (one probe
    per run in it), ("traces", [paths]) for every trace file (:data:`PROBE_TRACE_KINDS`), ingested
    together as one probe run (journey and step traces of one run come as separate files)."""
    out, traces = [], []
    for pth in probe_paths:
        ps = str(pth)
        p = Path(ps)
        if ps.startswith("bundled:") or not p.exists() or p.suffix.lower() in (".csv", ".parquet", ".pq"):
            out.append(("requests", ps))  # read_probe names a missing file
        elif p.is_dir():
            out.append(("tables", ps))
        else:
            try:
                kind = detect_kind(p)
            except (OSError, EOFError) as e:
                raise SpecError(f"unreadable probe file: {e}", file=ps, field="probe") from None
            if kind in PROBE_TRACE_KINDS:
                traces.append(ps)
            elif kind == "unknown":  # e.g. a .csv.gz or a CSV without the suffix: read_probe names its columns
                out.append(("requests", ps))
            else:
                raise SpecError(
                    f"not a probe (file kind {kind!r}; give per-request CSV / Parquet with arrival_time_us, "
                    "input_tokens, output_tokens, ttft_ms, e2e_ms; vLLM OTLP trace / KV event / "
                    "inference-perf replay files; or a `bayeslat ingest --out` directory)",
                    file=ps,
                    field="probe",
                )
    if traces:
        out.append(("traces", traces))
    return out


def _probe_experiment(s: dict, name: str) -> dict:
    """The experiment dict :func:`bayeslat.data.ingest.ingest` tags a trace probe's tables with: the
    SPEC's model, GPU and server (the traces carry none of them)."""
    srv = {k: v for k, v in asdict(s["server"]).items() if v is not None}
    return {
        "name": name,
        "model": s["model"].name,
        "hardware": s["hardware"].name,
        "server": srv,
        "workload": {},
        "source": "probe",
    }


def _ingest_report_summary(d: dict) -> dict:
    """What ingesting a trace probe kept and skipped, from an ingest report's dict
    (``IngestReport.to_dict()`` or an ingest directory's ``report.json``): every skipped record is
    counted by reason, the first few messages name file and line."""
    return {k: d.get(k) for k in ("files", "kept", "skipped_total", "skipped", "notes")}


def _ingest_report_file(path: Path) -> dict | None:
    """:func:`_ingest_report_summary` of an ingest directory's ``report.json`` (None if absent)."""
    if not path.exists():
        return None
    try:
        return _ingest_report_summary(json.loads(path.read_text()))
    except (OSError, ValueError) as e:
        raise IngestError(f"unreadable ingest report: {e}", file=str(path)) from None


def _trace_probe(tb: dict, run: str, s: dict, source: str, report: dict | None):
    """One probe run of ingested tables ``tb``: (per-request frame for the lifecycle rows or None,
    info, [extra ObsTables], sampled step pairs or None). The extra rows need no reconstruction, so
    no cut applies to them: exact one-step rows from step snapshots (``step.REQUEST_SNAPSHOT``, kind
    "step": :func:`bayeslat.data.design.exact_step_rows`) and alpha rows from journey requests (kind
    "alpha": :func:`bayeslat.data.design.journey_alpha_rows`). The sampled step pairs (records, the
    journey clock's offset, the exact rows' ids, the journey's idle gaps) are mapped onto the
    reconstruction by :func:`probe_obs`; without journey requests they are counted as unused."""
    req = tb["requests"][tb["requests"]["run"] == run]
    steps = tb["steps"][tb["steps"]["run"] == run].sort_values("step.id", kind="stable")
    sreq = tb["step_requests"][tb["step_requests"]["run"] == run]
    kvs = tb["kv_steps"][tb["kv_steps"]["run"] == run]
    dup = steps["step.id"].duplicated()
    if dup.any():
        raise SpecError(
            f"step id {int(steps['step.id'][dup].iloc[0])} appears {int(dup.sum()) + 1}+ times: traces of more than "
            "one run given together, or of several data-parallel engines, whose step records carry no rank "
            "(a probe is one run of one engine's steps: pass one run's trace files, or ingest each run with "
            "its own --experiment and pass the ingest directory)",
            file=source,
            field="step.id",
        )
    lf, src, linfo = design._lifecycle_frame(req)
    hwname, cls, srv = s["hardware"].name, s["model"].model_class, s["server"]
    info = {
        "source": source,
        "run": f"probe:{run}",
        "system_prompt_len": 0,
        "lifecycle": linfo,
        "trace_rows": {},
        "ingest": report,
    }
    extra = []
    t0_ns = float(np.nanmin(lf["arrival_ns"])) if src is not None and np.isfinite(lf["arrival_ns"]).any() else None
    t_end = 1.0
    ex = None
    journey = t0_ns is not None and src == "journey"
    gaps = design.journey_idle_gaps(req) if journey else np.zeros((0, 2))
    if len(steps) and len(sreq):
        ex, cnt = design.exact_step_rows(steps, sreq, kvs, block_size=int(srv.block_size))
        if journey:  # the journey's clock is the step records': cycles holding an idle wait are dropped
            idle = design.idle_overlap(ex["ts_start_ns"], ex["y_ms"], gaps)
            ex = ex[~idle]
            cnt["steps_idle_dropped"] = int(idle.sum())
        info["trace_rows"]["step_exact"] = int(len(ex))
        info["exact_steps"] = cnt
        if len(ex):
            ts = ex["ts_start_ns"].to_numpy(np.float64)
            t_us = (ts - (t0_ns if t0_ns is not None else ts.min())) / 1e3
            t_end = max(t_end, float(t_us.max()))
            extra.append(design.exact_step_table(ex, s["ctx"], t_us, t_end, info["run"], hwname, cls))
    pairs = None
    if len(steps) and journey:
        # the other sampled step pairs, mapped onto the reconstruction (probe_obs) on the journey's
        # monotonic clock, which the step records share: the exact offset, as design.run_obs
        pairs = {
            "records": pd.DataFrame(
                {
                    "step.id": steps["step.id"].to_numpy(np.int64),
                    "step.ts_start_ns": steps["step.ts_start_ns"].to_numpy(np.float64),
                }
            ),
            "offset_us": design.journey_offset_us(lf),
            "exact_ids": np.zeros(0, np.int64) if ex is None else ex["step_id"].to_numpy(np.int64),
            "idle_gaps": gaps,
        }
    elif len(steps):
        # without journey requests the step records' clock offset would have to be estimated
        info["trace_rows"]["step_records_unused"] = {
            "records": int(len(steps)),
            "exact_rows": 0 if ex is None else int(len(ex)),
            "reason": "no journey requests: the step records' clock is not tied to the requests' (sampled step "
            "pairs are not mapped onto the reconstruction; only exact snapshot rows are used)",
        }
    al = design.journey_alpha_rows(req)
    nj = int((req["source"] == "journey").sum())
    if nj:
        info["trace_rows"]["alpha"] = int(len(al))
        info["trace_rows"]["alpha_journey_requests_without_row"] = design.journey_alpha_misses(req)
    if len(al):
        extra.append(design.alpha_table(al, s["ctx"], max(t_end, float(al["t_us"].max())), info["run"], hwname, cls))
    df = None
    if src is not None:
        df = lf.drop(columns="arrival_ns")
        df["context_only"] = False
        df = df.sort_values("arrival_us", kind="stable").reset_index(drop=True)
        df["arrival_us"] = df["arrival_us"] - df["arrival_us"].min()
        # as a per-request probe file: rows ending after the last arrival are dropped (a trace cut
        # from a longer run does not see the requests that arrived after it)
        info["cut_us"] = float(df["arrival_us"].max())
    if df is None and not extra:
        raise SpecError(
            f"run {run}: no probe rows (no request with a TTFT and an E2E, no step snapshots, no journey alpha delays)",
            file=source,
            field="probe",
        )
    return df, info, extra, pairs


#: sampled step pairs of a trace probe: the largest id gap mapped onto the reconstruction (as design.run_obs)
PROBE_STEP_MAX_GAP = 32


def _probe_units(probe_paths, s):
    """[(per-request frame or None, info, [extra ObsTables], sampled step pairs or None)] of every
    probe run in ``probe_paths``."""
    units = []
    for kind, src in _probe_inputs(probe_paths):
        if kind == "requests":
            df, info = read_probe(src)
            units.append((df, info, [], None))
            continue
        if kind == "tables":
            sets = [(design.read_tables(d), str(d), _ingest_report_file(Path(d) / "report.json")) for d in design.table_dirs(src)]
        else:
            res = ingest(src, experiment=_probe_experiment(s, "probe-" + Path(src[0]).name.split(".")[0]))
            if res.report.errors:  # already "file: message"
                raise IngestError(res.report.errors[0])
            sets = [(res.tables, ", ".join(src), _ingest_report_summary(res.report.to_dict()))]
        for tb, name, rep in sets:
            runs = list(dict.fromkeys(list(tb["requests"]["run"].dropna()) + list(tb["steps"]["run"].dropna())))
            if not runs:
                raise SpecError("no request or step records in the probe", file=name, field="probe")
            units += [_trace_probe(tb, r, s, name, rep) for r in runs]
    return units


def probe_obs(spec, probe_paths, *, hardware_levels=None, class_levels=None):
    """Reconstruct probe runs into ObsTable rows of the spec's group; returns (ObsTable,
    [per-probe info with observed mean TTFT / E2E]).

    ``probe_paths``: per-request CSV / Parquet files or ``bundled:`` probes (:func:`read_probe`;
    lifecycle reconstruction -> decode windows and TTFT rows), ``bayeslat ingest --out``
    directories, or vLLM trace files (OTLP journey / step traces, KV event stream, inference-perf
    replay files; :data:`PROBE_TRACE_KINDS`), which are ingested together as one run with the
    SPEC's model, GPU and server. From traces the probe also gets step rows: exact step times where
    the step trace has request snapshots (a probe of steps needs nothing else), and the other
    sampled step pairs (id gap <= ``PROBE_STEP_MAX_GAP``) mapped onto the reconstruction on the
    journey clock, cut like the request rows, step rows spanning a journey idle gap dropped
    (:func:`bayeslat.data.design.idle_overlap`). It also gets the alpha (CPU) delays of journey requests. ``info["ingest"]`` counts what ingestion
    skipped and why; ``info["trace_rows"]`` the rows built (and journey requests without an alpha
    row). A probe without per-request TTFT / E2E (a step trace alone) has no ``observed`` means."""
    s = resolve_spec(spec)
    if isinstance(probe_paths, (str, Path)):
        probe_paths = [probe_paths]
    srv = s["server"]
    units = _probe_units(probe_paths, s)
    tables, infos = [], []
    for i, (df, info, extra, pairs) in enumerate(units):
        run = info["run"] if len(units) == 1 else f"{info['run']}#{i}"
        info["run"] = run
        extra = [replace(t, run=np.full(len(t.y), run, dtype=object).astype(str), meta={"runs": [run]}) for t in extra]
        t = None
        if df is not None:
            rec = R.reconstruct_lifecycle(
                df,
                run=run,
                budget=int(srv.max_num_batched_tokens),
                max_num_seqs=int(srv.max_num_seqs),
                block_size=int(srv.block_size),
                system_prompt_len=int(info["system_prompt_len"]),
            )
            trace_rows = None
            if pairs is not None:  # sampled step pairs (a trace probe), those ending before the cut
                tw = RW.trace_step_windows(
                    rec, pairs["records"], pairs["offset_us"], max_gap=PROBE_STEP_MAX_GAP, skip_ids=pairs["exact_ids"]
                )
                idle = design.idle_overlap((tw["t_us"] + pairs["offset_us"]) * 1e3, tw["y_ms"], pairs["idle_gaps"])
                tw = tw[~idle]
                late = tw["t_us"].to_numpy() + 1e3 * tw["y_ms"].to_numpy() > info["cut_us"]
                trace_rows = tw[~late]
                info["trace_rows"].update(
                    step_pairs=int(len(trace_rows)), step_pairs_after_cut=int(late.sum()), step_pairs_idle=int(idle.sum())
                )
            t = design.build_obs(
                rec,
                s["ctx"],
                s["hardware"].name,
                s["model"].model_class,
                trace_rows=trace_rows,
                hardware_levels=hardware_levels,
                class_levels=class_levels,
            )
            # keep rows that end before the cut (their batches are complete) of probe requests
            rq = rec.requests.set_index("index")
            ends = np.where(
                t.kind == R.KIND_TTFT, rq["ft_us"].reindex(t.request).to_numpy(), rq["fin_us"].reindex(t.request).to_numpy()
            )
            ctx_only = set(df.loc[df["context_only"].astype(bool), "index"].tolist())
            of_req = t.request >= 0  # request rows; step pairs (request -1) were cut above
            keep = np.where(of_req, ends <= info["cut_us"], True) & ~np.isin(t.request, list(ctx_only))
            info["rows_dropped"] = {
                "after_cut": int(np.sum(of_req & (ends > info["cut_us"]))),
                "context_requests": int(np.sum(np.isin(t.request, list(ctx_only)))),
            }
            t = t.subset(keep)
            probe = df[~df["context_only"].astype(bool)]
            ok = ~probe["has_error"].astype(bool)
            info.update(
                requests=int(len(probe)),
                observed={"ttft_mean": float(probe.loc[ok, "ttft_ms"].mean()), "e2e_mean": float(probe.loc[ok, "e2e_ms"].mean())},
                frame=probe.drop(columns="context_only"),
            )
        else:
            info.update(requests=0, frame=None)
        parts = ([t] if t is not None and len(t) else []) + [x for x in extra if len(x.y)]
        if not parts:
            raise SpecError(
                "no probe row ends before the probe's last arrival (the probe is too short)",
                file=str(info.get("source", "")),
                field="probe",
            )
        t = design.concat(parts)
        t.meta.update(
            runs=[run],
            deployments={run: F.deployment_key(s["ctx"], s["hardware"].name)},
            specs={run: design.spec_record(s["model"], s["hardware"], s["server"])},
        )
        info["rows"] = int(len(t))
        info["rows_by_kind"] = {design.KINDS[k]: int(np.sum(t.kind == k)) for k in np.unique(t.kind)}
        tables.append(t)
        infos.append(info)
    out = design.concat(tables)
    out.meta["probe_requests"] = sum(i["requests"] for i in infos)
    out.meta["probe_design"] = probe_design_of(probe_paths)
    return out, infos
