"""Trace ingestion: vLLM OTLP journey/step traces, KV event streams and inference-perf data ->
validated tables (see :mod:`bayeslat.data.ingest.tables` for the schemas).

``ingest(paths, experiment=None, out=None) -> IngestResult`` detects each file's kind by content
(:func:`detect_kind`), parses it streaming (gzip by magic bytes), counts every record as kept or
skipped with a reason (:class:`IngestReport`), and returns the tables (pandas) or, with ``out``,
writes them as Parquet (``<table>.parquet``; every trace table, ``requests`` included, is written
incrementally so memory does not grow with the file size: see :mod:`.otlp` for the streaming
journey join and its ``journey_idle_lines`` policy) plus ``report.json``.

Modules: :mod:`.otlp` (journey + step traces; with :mod:`.otlp_columns`, :mod:`.otlp_steps`,
:mod:`.otlp_journey`, :mod:`.otlp_parallel`), :mod:`.kvevents`, :mod:`.inference_perf`,
:mod:`.experiment`, :mod:`.tables`, :mod:`.report`. The command line: :mod:`bayeslat.cli.ingest`.
"""

from __future__ import annotations

import gc
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bayeslat.errors import IngestError

from . import tables
from ._io import UNREADABLE, detect_kind
from .experiment import experiments_row, load_experiment
from .inference_perf import lifecycle_aggregates, load_json, parse_replay, replay_frame
from .kvevents import KvState
from .otlp import IDLE_LINES, OtlpState
from .report import IngestReport
from .tables import SCHEMAS, TABLES, check_schema, read_table

__all__ = [
    "ingest",
    "IngestResult",
    "IngestReport",
    "detect_kind",
    "check_schema",
    "read_table",
    "SCHEMAS",
    "TABLES",
    "load_experiment",
    "replay_frame",
    "lifecycle_aggregates",
    "tables",
]

STREAMED = ("request_events", "steps", "step_requests", "kv_steps")


@dataclass
class IngestResult:
    report: IngestReport
    tables: dict = field(default_factory=dict)  # name -> DataFrame (out=None) or Path (out given)

    def __getitem__(self, name):
        return self.tables[name]


def _stem(path: str) -> str:
    name = Path(path).name
    for suf in (".gz", ".jsonl", ".json", ".otlp"):
        if name.endswith(suf):
            name = name[: -len(suf)]
    return name


def _gt_partner(path: str) -> str:
    return _stem(path) + "_ground_truth"


_GC_LOCK = threading.Lock()
_GC_DEPTH = 0


@contextmanager
def _gc_for_parsing():
    """Parsing allocates millions of short-lived containers (the JSON of each line), so CPython's
    cyclic GC runs often and its full collections rescan the whole long-lived heap (pandas,
    pyarrow, ...): ~20% of the ingest time. While ingesting, that heap is frozen out of the
    collections (``gc.freeze``) and the gen-0 threshold raised; both are restored afterwards
    (the outermost ingest of concurrent ones restores). Nothing is leaked: frozen objects go
    back to the collected heap on ``gc.unfreeze``."""
    global _GC_DEPTH
    with _GC_LOCK:
        _GC_DEPTH += 1
        first = _GC_DEPTH == 1
        if first:
            old = gc.get_threshold()
            froze = gc.isenabled() and gc.get_freeze_count() == 0
            if froze:
                gc.freeze()
            gc.set_threshold(max(old[0], 50_000), *old[1:])
    try:
        yield
    finally:
        with _GC_LOCK:
            _GC_DEPTH -= 1
            if first:
                gc.set_threshold(*old)
                if froze:
                    gc.unfreeze()


def ingest(
    paths,
    experiment: str | Path | dict | None = None,
    out: str | Path | None = None,
    block_bytes: float | None = None,
    chunk_rows: int = 50_000,
    journey_idle_lines: int | None = IDLE_LINES,
    workers: int | None = None,
) -> IngestResult:
    """Parse ``paths`` into the tables (see the module docstring). ``workers``: processes that
    parse the step lines of large OTLP files in parallel (None: automatic, 0: none; see
    :func:`.otlp.n_workers`); the tables and the report are the same either way."""
    with _gc_for_parsing():
        return _ingest(paths, experiment, out, block_bytes, chunk_rows, journey_idle_lines, workers)


def _ingest(paths, experiment, out, block_bytes, chunk_rows, journey_idle_lines, workers=None) -> IngestResult:
    report = IngestReport()
    exp = None
    if isinstance(experiment, dict):
        exp = experiment
    elif experiment is not None:
        exp = load_experiment(experiment)
    run = exp["name"] if exp else None
    if exp and block_bytes is None:
        block_bytes = exp["server"].get("kv_block_bytes")
    outdir = Path(out) if out is not None else None
    if outdir is not None:
        outdir.mkdir(parents=True, exist_ok=True)
    sinks = {n: tables.TableSink(n, outdir / f"{n}.parquet" if outdir else None, chunk_rows) for n in STREAMED}
    otlp = OtlpState(report, sinks, outdir, idle_lines=journey_idle_lines, workers=workers)
    kv = KvState(report)

    kinds = {}
    for p in map(str, paths):
        try:
            kinds[p] = detect_kind(p)
        except UNREADABLE as e:
            report.error(p, f"unreadable: {e}")
    gts = {_stem(p): p for p, k in kinds.items() if k == "ground_truth"}
    used_gt = set()
    frames = []
    for p, k in kinds.items():
        r = run or _stem(p)
        try:
            if k == "otlp":
                otlp.parse_file(p, r)
            elif k == "kv_events":
                kv.parse_file(p, r)
            elif k == "replay":
                gt = gts.get(_gt_partner(p))
                frames.append(parse_replay(p, report, ground_truth=gt, run=run, profile=(exp or {}).get("workload")))
                if gt:  # (a replay file that cannot be read leaves its ground truth to the check below)
                    used_gt.add(gt)
            elif k == "lifecycle":
                report.file_kind[p] = "lifecycle"
                report.aggregates[p] = lifecycle_aggregates(load_json(p))
                report.keep(p, "aggregate")
            elif k == "ground_truth":
                continue
            else:
                report.file_kind[p] = "unknown"
                report.skip(p, 1, "file", "unknown_record", "not an OTLP trace, KV event stream or inference-perf file")
        except UNREADABLE as e:  # (an OTLP or KV file keeps the records of the lines read before)
            report.error(p, f"unreadable: {e}")
        except IngestError as e:  # a whole-document file of the wrong layout (lifecycle)
            report.file_kind[p] = k
            report.skip(p, 1, "file", "bad_value", e.reason, e.field)
        except (ValueError, KeyError, TypeError) as e:  # a whole-document file that does not parse
            report.file_kind[p] = k
            report.skip(p, 1, "file", "invalid_json", f"{e!r}")
    for p in gts.values():
        if p not in used_gt:
            report.file_kind[p] = "ground_truth"
            report.skip(
                p,
                1,
                "file",
                "unknown_record",
                "ground truth without its replay file (<exp>.json.gz), or that file could not be read",
            )

    n_trace = otlp.finish_journey()
    kv.finish(sinks["kv_steps"], block_bytes)
    result = IngestResult(report)
    replay = tables.conform(pd.concat(frames, ignore_index=True), "requests") if frames else None
    if outdir is not None:
        report.tables["requests"] = _write_requests(outdir / "requests.parquet", otlp.request_tables(), replay)
        result.tables["requests"] = outdir / "requests.parquet"
    else:
        parts = [tables.from_arrow(t, "requests") for t in otlp.request_tables()] if n_trace else []
        if replay is not None:
            parts.append(replay)
        requests = tables.conform(pd.concat(parts, ignore_index=True), "requests") if parts else tables.empty("requests")
        report.tables["requests"] = len(requests)
        result.tables["requests"] = requests
    exps = experiments_row(exp) if exp else tables.empty("experiments")
    report.tables["experiments"] = len(exps)
    if outdir is not None:
        tables.write_table(exps, outdir / "experiments.parquet", "experiments")
        result.tables["experiments"] = outdir / "experiments.parquet"
    else:
        result.tables["experiments"] = exps
    for name, s in sinks.items():
        if outdir is not None:
            s.close()
            result.tables[name] = s.path
        else:
            result.tables[name] = s.frame()
        report.tables[name] = s.n
    if outdir is not None:
        (outdir / "report.json").write_text(report.to_json())
    return result


def _write_requests(path: Path, trace_tables, replay: pd.DataFrame | None) -> int:
    """Stream the ``requests`` table to Parquet: the trace rows chunk by chunk, then the replay
    rows. The file carries the same pandas metadata as :func:`tables.write_table` would write."""
    schema = tables.arrow_schema("requests")
    meta = pa.Table.from_pandas(tables.empty("requests"), schema=schema, preserve_index=False).schema.metadata
    n = 0
    with pq.ParquetWriter(str(path), schema.with_metadata(meta), compression="zstd") as w:
        for t in trace_tables:
            w.write_table(t.replace_schema_metadata(meta))
            n += t.num_rows
        if replay is not None:
            tables.check_schema(replay, "requests")
            w.write_table(pa.Table.from_pandas(replay, schema=schema, preserve_index=False).replace_schema_metadata(meta))
            n += len(replay)
        if n == 0:
            w.write_table(
                pa.Table.from_pandas(tables.empty("requests"), schema=schema, preserve_index=False).replace_schema_metadata(meta)
            )
    return n
