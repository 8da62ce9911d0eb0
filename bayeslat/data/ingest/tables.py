"""Table schemas of the ingested data, dtype checks and (streaming) Parquet IO.

Every table is a pandas DataFrame with exactly the columns of its schema below, in that order,
with the listed pandas dtypes (``Int64``/``boolean``/``string`` are pandas' nullable dtypes:
a field a source does not carry is ``<NA>``; ``float64`` columns use NaN). Times named ``*_ns``
are integer nanoseconds; ``clock`` says on which clock (``monotonic``: the host's
CLOCK_MONOTONIC as the instrumented vLLM build records it in ``ts.monotonic_ns`` /
``event.ts.monotonic``; ``unix``: wall clock, upstream vLLM spans; ``relative``: inference-perf
replay data, relative to the run's first request).

Columns of the step tables keep the OTLP attribute names (``step.id``, ``batch.prefill_tokens``,
...) so that an ingested ``steps`` table has the same columns as :func:`bayeslat.data.datasets.steps`.

``SCHEMAS[name]`` maps column -> (dtype, unit, meaning); :func:`check_schema` raises
``IngestError`` when a frame does not match. :class:`TableSink` accumulates rows in bounded
chunks (Arrow tables) and either streams them into a Parquet file (``pyarrow.ParquetWriter``) or
keeps them for an in-memory frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bayeslat.errors import IngestError

# name -> [(column, dtype, unit, meaning)]
_REQUESTS = [
    (
        "source",
        "string",
        "",
        "journey (instrumented vLLM api+core spans) | upstream (vllm.llm_engine llm_request span) | inference_perf (replay per-request data)",
    ),
    ("run", "string", "", "run id: the experiment name, else the file stem"),
    ("request_id", "string", "", "gen_ai.request.id of the api span (journey/upstream) or the replay index as text"),
    ("index", "Int64", "", "inference-perf request index (null for traces)"),
    ("clock", "string", "", "clock of the *_ns columns: monotonic | unix | relative"),
    ("arrival_ns", "Int64", "ns", "api.ARRIVED (journey); span start (upstream); arrival_time_us*1000 (inference_perf)"),
    ("handoff_ns", "Int64", "ns", "api.HANDOFF_TO_CORE"),
    ("queued_ns", "Int64", "ns", "journey.QUEUED"),
    ("first_scheduled_ns", "Int64", "ns", "first journey.SCHEDULED"),
    ("first_token_ns", "Int64", "ns", "journey.FIRST_TOKEN (engine core)"),
    ("first_response_ns", "Int64", "ns", "api.FIRST_RESPONSE (api server)"),
    ("finished_ns", "Int64", "ns", "journey.FINISHED"),
    ("departed_ns", "Int64", "ns", "api.DEPARTED (journey); span end (upstream); arrival + e2e (inference_perf)"),
    ("arrival_us", "Int64", "us", "arrival relative to the first arrival of the same run and source"),
    (
        "input_tokens",
        "Int64",
        "tokens",
        "prompt tokens: gen_ai.usage.prompt_tokens, else prefill.total_tokens; replay input_tokens (imputed for failed requests)",
    ),
    ("input_imputed", "boolean", "", "input_tokens imputed with the run's median (failed replay requests record 0)"),
    ("max_tokens", "Int64", "tokens", "gen_ai.request.max_tokens, else decode.max_tokens"),
    (
        "output_tokens",
        "Int64",
        "tokens",
        "tokens the SERVER generated: decode.done_tokens at journey.FINISHED; gen_ai.usage.completion_tokens (upstream); profile output_len for successful ignore_eos replay requests (repaired, see inference_perf)",
    ),
    ("output_tokens_client", "Int64", "tokens", "client's re-tokenised count (replay data only; biased, see data README)"),
    ("n_preemptions", "Int64", "", "preemptions: max(num_preemptions attr, number of journey.PREEMPTED events)"),
    ("finish_status", "string", "", "finish.status of journey.FINISHED"),
    ("aborted", "boolean", "", "api.ABORTED seen or finish.status contains ABORT"),
    ("has_error", "boolean", "", "request failed (aborted; replay has_error)"),
    (
        "ttft_ms",
        "float64",
        "ms",
        "time to first token: FIRST_RESPONSE - ARRIVED (journey), gen_ai.latency.time_to_first_token (upstream), ttft_s (replay ground truth)",
    ),
    ("e2e_ms", "float64", "ms", "end to end: DEPARTED - ARRIVED (journey), gen_ai.latency.e2e (upstream), e2e_s (replay)"),
    ("queue_ms", "float64", "ms", "gen_ai.latency.time_in_queue (upstream); first_scheduled - queued (journey)"),
    ("stage", "Int64", "", "inference-perf load stage of the arrival (replay with a known profile)"),
]
_REQUEST_EVENTS = [
    ("run", "string", "", "run id"),
    ("request_id", "string", "", "request id of the api span (core id when no api span joined)"),
    ("seq", "Int64", "", "0-based order of this row among the request's rows"),
    ("event", "string", "", "scheduled (SCHEDULED, schedule.kind FIRST) | resumed (SCHEDULED, RESUME) | preempted (PREEMPTED)"),
    ("ts_ns", "Int64", "ns", "ts.monotonic_ns (else ts.monotonic*1e9), monotonic clock"),
    ("step", "Int64", "", "scheduler.step"),
    ("phase", "string", "", "phase attr: WAITING / PREFILL / DECODE"),
    ("prefill_done_tokens", "Int64", "tokens", "prefill.done_tokens"),
    ("prefill_total_tokens", "Int64", "tokens", "prefill.total_tokens"),
    ("decode_done_tokens", "Int64", "tokens", "decode.done_tokens"),
    ("decode_max_tokens", "Int64", "tokens", "decode.max_tokens"),
    ("num_preemptions", "Int64", "", "num_preemptions attr"),
]
_STEP_ATTRS = [
    ("step.id", "Int64", "", "scheduler step id (consecutive across all steps; ~10% are sampled)"),
    ("step.ts_start_ns", "Int64", "ns", "step start, monotonic clock"),
    ("step.ts_end_ns", "Int64", "ns", "end of the scheduler's bookkeeping for the step (NOT the forward pass)"),
    ("step.duration_us", "Int64", "us", "scheduler bookkeeping time only, NOT the step time (use cycle_time_us)"),
    ("queue.running_depth", "Int64", "requests", "running queue depth"),
    ("queue.waiting_depth", "Int64", "requests", "waiting queue depth"),
    ("batch.num_prefill_reqs", "Int64", "requests", "requests prefilling in the step"),
    ("batch.num_decode_reqs", "Int64", "requests", "requests decoding in the step"),
    ("batch.scheduled_tokens", "Int64", "tokens", "tokens scheduled"),
    ("batch.prefill_tokens", "Int64", "tokens", "prefill tokens scheduled"),
    ("batch.decode_tokens", "Int64", "tokens", "decode tokens scheduled"),
    ("batch.num_finished", "Int64", "requests", "requests finished"),
    ("batch.num_preempted", "Int64", "requests", "requests preempted"),
    ("kv.usage_gpu_ratio", "float64", "ratio", "GPU KV-cache usage"),
    ("kv.blocks_total_gpu", "Int64", "blocks", "GPU KV blocks in total"),
    ("kv.blocks_free_gpu", "Int64", "blocks", "GPU KV blocks free"),
]
_STEPS = (
    [("run", "string", "", "run id")]
    + _STEP_ATTRS
    + [
        (
            "cycle_time_us",
            "float64",
            "us",
            "TRUE step time: next.step.ts_start_ns - this.step.ts_start_ns when step.id+1 of the same file was sampled, else NaN",
        ),
        ("successor_sampled", "boolean", "", "step.id+1 was sampled (cycle_time_us defined)"),
    ]
)
_STEP_REQUESTS = [
    ("run", "string", "", "run id"),
    ("step.id", "Int64", "", "scheduler step id"),
    ("request.id", "string", "", "engine-core request id"),
    ("request.phase", "string", "", "PREFILL / DECODE / ..."),
    ("request.num_prompt_tokens", "Int64", "tokens", "prompt length"),
    ("request.num_computed_tokens", "Int64", "tokens", "tokens computed before this step"),
    ("request.num_output_tokens", "Int64", "tokens", "output tokens so far"),
    ("request.num_preemptions", "Int64", "", "preemptions so far"),
    ("request.scheduled_tokens_this_step", "Int64", "tokens", "tokens scheduled for the request in this step"),
    ("kv.blocks_allocated_gpu", "Int64", "blocks", "GPU blocks allocated to the request"),
    ("kv.blocks_cached_gpu", "Int64", "blocks", "GPU blocks hit in the prefix cache"),
    ("request.effective_prompt_len", "Int64", "tokens", "prompt tokens left after prefix-cache hits"),
]
_KV_STEPS = [
    ("run", "string", "", "run id"),
    ("dp_rank", "Int64", "", "data-parallel rank of the event lines"),
    ("step", "Int64", "", "scheduler step (the event's own step field when it has one, else the line's scheduler_step)"),
    ("ts_first", "float64", "s", "first line timestamp of the step"),
    ("ts_last", "float64", "s", "last line timestamp of the step"),
    ("n_events", "Int64", "", "events counted (after de-duplication)"),
    ("blocks_stored_gpu", "Int64", "blocks", "BlockStored hashes with medium GPU (or null medium)"),
    ("blocks_stored_cpu", "Int64", "blocks", "BlockStored hashes with medium CPU"),
    ("blocks_stored_other", "Int64", "blocks", "BlockStored hashes with another medium (e.g. DISK)"),
    ("blocks_removed_gpu", "Int64", "blocks", "BlockRemoved hashes, medium GPU (or null)"),
    ("blocks_removed_cpu", "Int64", "blocks", "BlockRemoved hashes, medium CPU"),
    ("blocks_removed_other", "Int64", "blocks", "BlockRemoved hashes, other medium"),
    ("transfers_initiated", "Int64", "", "distinct TransferInitiated"),
    ("transfers_failed", "Int64", "", "TransferCompleted with success false"),
    ("blocks_offloaded", "Int64", "blocks", "GPU->CPU blocks of successful TransferCompleted"),
    ("blocks_loaded", "Int64", "blocks", "CPU->GPU blocks of successful TransferCompleted"),
    ("bytes_offloaded", "float64", "bytes", "blocks_offloaded * block bytes (NaN if block bytes unknown)"),
    ("bytes_loaded", "float64", "bytes", "blocks_loaded * block bytes (NaN if unknown)"),
    ("store_committed_blocks", "Int64", "blocks", "CacheStoreCommitted nblocks"),
    ("load_committed_blocks", "Int64", "blocks", "CacheLoadCommitted nblocks"),
    ("evictions", "Int64", "", "CacheEviction events"),
    ("blocks_evicted", "Int64", "blocks", "CacheEviction n"),
]
_EXPERIMENTS = [
    ("run", "string", "", "experiment name (YAML `name`/`run`, else the file stem)"),
    ("model", "string", "", "model config.json path or spec key"),
    ("hardware", "string", "", "hardware datasheet name or spec key"),
    ("tensor_parallel", "Int64", "", "server.tensor_parallel"),
    ("max_num_batched_tokens", "Int64", "tokens", "server.max_num_batched_tokens"),
    ("max_num_seqs", "Int64", "", "server.max_num_seqs"),
    ("max_model_len", "Int64", "tokens", "server.max_model_len"),
    ("block_size", "Int64", "tokens", "server.block_size"),
    ("gpu_memory_utilization", "float64", "ratio", "server.gpu_memory_utilization"),
    ("kv_blocks", "Int64", "blocks", "server.kv_blocks"),
    ("cpu_offload_gb", "float64", "GB", "server.cpu_offload_gb"),
    ("prefix_caching", "boolean", "", "server.prefix_caching"),
    ("chunked_prefill", "boolean", "", "server.chunked_prefill"),
    ("server_json", "string", "", "the whole server dict as JSON (ServerConfig fields)"),
    ("workload_json", "string", "", "the workload dict as JSON"),
    ("source", "string", "", "path of the experiment YAML"),
]

SCHEMAS: dict[str, list[tuple[str, str, str, str]]] = {
    "requests": _REQUESTS,
    "request_events": _REQUEST_EVENTS,
    "steps": _STEPS,
    "step_requests": _STEP_REQUESTS,
    "kv_steps": _KV_STEPS,
    "experiments": _EXPERIMENTS,
}
TABLES = tuple(SCHEMAS)

_ARROW = {"string": pa.string(), "Int64": pa.int64(), "boolean": pa.bool_(), "float64": pa.float64()}


def columns(name: str) -> list[str]:
    return [c for c, *_ in SCHEMAS[name]]


def dtypes(name: str) -> dict[str, str]:
    return {c: d for c, d, *_ in SCHEMAS[name]}


def arrow_schema(name: str) -> pa.Schema:
    return pa.schema([(c, _ARROW[d]) for c, d, *_ in SCHEMAS[name]])


def schema_doc(name: str) -> str:
    """The schema as a Markdown table (column | dtype | unit | meaning)."""
    rows = [f"| {c} | {d} | {u} | {m} |" for c, d, u, m in SCHEMAS[name]]
    return "\n".join(["| column | dtype | unit | meaning |", "|---|---|---|---|", *rows])


def conform(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """Reorder / cast ``df`` to the schema (missing columns become null)."""
    out = {}
    n = len(df)
    for c, d, *_ in SCHEMAS[name]:
        if c in df.columns:
            s = df[c]
            if d == "float64":
                out[c] = pd.to_numeric(s, errors="raise").astype("float64").to_numpy()
            else:
                out[c] = s.astype(d).array
        else:
            out[c] = pd.array([None] * n, dtype=d) if d != "float64" else np.full(n, np.nan)
    return pd.DataFrame(out, index=pd.RangeIndex(n))


def empty(name: str) -> pd.DataFrame:
    return conform(pd.DataFrame(), name)


def check_schema(df: pd.DataFrame, name: str) -> None:
    """Raise ``IngestError`` unless ``df`` has exactly the columns and dtypes of table ``name``."""
    if name not in SCHEMAS:
        raise IngestError(f"unknown table {name!r}; known: {list(SCHEMAS)}", field="table")
    want = columns(name)
    if list(df.columns) != want:
        missing = [c for c in want if c not in df.columns]
        extra = [c for c in df.columns if c not in want]
        raise IngestError(f"columns differ from the schema (missing {missing}, extra {extra}, or order)", field=name)
    for c, d, *_ in SCHEMAS[name]:
        if str(df[c].dtype) != d:
            raise IngestError(f"dtype {df[c].dtype} != {d}", field=f"{name}.{c}")


def to_arrow(rows: list[tuple], name: str) -> pa.Table:
    """Rows (tuples in schema column order; None = null) -> Arrow table with the schema's types."""
    schema = arrow_schema(name)
    cols = list(zip(*rows)) if rows else [[] for _ in schema]
    return pa.Table.from_arrays([pa.array(v, type=f.type, from_pandas=True) for v, f in zip(cols, schema)], schema=schema)


def from_arrow(table: pa.Table, name: str) -> pd.DataFrame:
    df = table.to_pandas(
        types_mapper={pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype(), pa.string(): pd.StringDtype()}.get
    )
    return conform(df, name)


def write_table(df: pd.DataFrame, path: str | Path, name: str) -> None:
    check_schema(df, name)
    pq.write_table(pa.Table.from_pandas(df, schema=arrow_schema(name), preserve_index=False), str(path), compression="zstd")


def read_table(path: str | Path, name: str) -> pd.DataFrame:
    """Read a Parquet table written by ingest back with the schema's pandas dtypes."""
    return from_arrow(pq.read_table(str(path)), name)


#: a sink converts its Python row tuples to Arrow every this many rows (see :class:`TableSink`)
PY_ROWS = 4096


class TableSink:
    """Accumulates rows of one table in chunks of ``chunk_rows``; streams each full chunk to
    ``path`` (Parquet, zstd; or, with ``fmt="ipc"``, an uncompressed Arrow IPC file: the cheap
    format of ingest's own temporary spill files) when given, else keeps it (Arrow) for
    :meth:`frame`. Rows are tuples in schema column order (``None`` = null); a producer in a hot
    loop may append to :attr:`rows` directly and call :meth:`maybe_flush` now and then.

    Memory: Python tuples cost ~30x their Arrow size (a ``requests`` row ~1.2 kB), so every
    ``py_rows`` rows they are converted to a compact Arrow chunk held in :attr:`pending`; the
    pending chunks are written together (one Parquet row group) once they reach ``chunk_rows``.
    At most ``py_rows`` tuples and ``chunk_rows`` Arrow rows are held, whatever the input size."""

    def __init__(
        self, name: str, path: str | Path | None = None, chunk_rows: int = 50_000, fmt: str = "parquet", py_rows: int = PY_ROWS
    ):
        self.name, self.path, self.chunk_rows, self.fmt = name, (Path(path) if path else None), chunk_rows, fmt
        self.py_rows = max(1, min(py_rows, chunk_rows))
        self.rows: list[tuple] = []
        self.pending: list[pa.Table] = []
        self.n_pending = 0
        self.kept: list[pa.Table] = []
        self.writer = None
        self._closed = False
        self.n = 0

    @property
    def count(self) -> int:
        """Rows received so far (written, pending and not yet converted)."""
        return self.n + self.n_pending + len(self.rows)

    def append(self, row: tuple) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.py_rows:
            self._convert()

    def maybe_flush(self) -> None:
        if len(self.rows) >= self.py_rows:
            self._convert()

    def _convert(self) -> None:
        if self.rows:
            t = to_arrow(self.rows, self.name)
            self.rows = []
            self.pending.append(t)
            self.n_pending += t.num_rows
        if self.n_pending >= self.chunk_rows:
            self._emit_pending()

    def _emit_pending(self) -> None:
        if self.pending:
            t = self.pending[0] if len(self.pending) == 1 else pa.concat_tables(self.pending)
            self.pending, self.n_pending = [], 0
            self._emit(t)

    def write_arrow(self, t: pa.Table) -> None:
        self.flush()
        self._emit(t)

    def _open(self):
        if self.fmt == "ipc":
            return pa.ipc.new_file(str(self.path), arrow_schema(self.name))
        return pq.ParquetWriter(str(self.path), arrow_schema(self.name), compression="zstd")

    def _emit(self, t: pa.Table) -> None:
        self.n += t.num_rows
        if self.path is None:
            self.kept.append(t)
            return
        if self.writer is None:
            self.writer = self._open()
        self.writer.write_table(t)

    def flush(self) -> None:
        """Write out everything received so far (in order)."""
        if self.rows:
            t = to_arrow(self.rows, self.name)
            self.rows = []
            self.pending.append(t)
            self.n_pending += t.num_rows
        self._emit_pending()

    def close(self) -> None:
        """Write out the rest and close the file (idempotent: once closed, later calls do
        nothing, so :meth:`batches` can be iterated more than once)."""
        self.flush()
        if self.path is not None and not self._closed:
            self._closed = True
            if self.writer is None:  # no rows: still write an empty, typed file
                if self.fmt == "ipc":
                    self._open().close()
                else:
                    pq.write_table(to_arrow([], self.name), str(self.path), compression="zstd")
            else:
                self.writer.close()
                self.writer = None

    def batches(self, batch_size: int = 65536):
        """Close the sink and yield its rows back as Arrow tables, a chunk at a time (bounded
        memory when it spilled to ``path``)."""
        self.close()
        if self.path is None:
            yield from self.kept
        elif self.fmt == "ipc":
            with pa.OSFile(str(self.path)) as f:  # not memory-mapped: pages would count as RSS
                r = pa.ipc.open_file(f)
                for i in range(r.num_record_batches):
                    yield pa.Table.from_batches([r.get_batch(i)])
        else:
            for b in pq.ParquetFile(str(self.path)).iter_batches(batch_size=batch_size):
                yield pa.Table.from_batches([b])

    def frame(self) -> pd.DataFrame:
        self.flush()
        if self.path is not None:
            self.close()
            return read_table(self.path, self.name)
        if not self.kept:
            return empty(self.name)
        return from_arrow(pa.concat_tables(self.kept), self.name)
