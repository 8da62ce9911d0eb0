"""Streaming parser of OTLP JSON-lines traces of vLLM (journey + step tracing, upstream spans).

Parts: :mod:`.otlp_columns` (attribute decoding, column buffers), :mod:`.otlp_steps` (step
spans), :mod:`.otlp_journey` (journey spans and their join), :mod:`.otlp_parallel` (worker
processes); :class:`OtlpState` here reads the files and holds the state.

Input: one ``{"resourceSpans": [...]}`` object per line (gzip or not; a single pretty-printed
document is accepted too). Integers are strings (``{"intValue": "42"}``), doubles
``doubleValue``. Scopes handled:

- ``vllm.api`` / span ``llm_request``: attrs ``gen_ai.request.id`` (required),
  ``gen_ai.usage.prompt_tokens``, ``gen_ai.request.max_tokens``; events ``api.ARRIVED``,
  ``api.HANDOFF_TO_CORE``, ``api.FIRST_RESPONSE``, ``api.DEPARTED``, ``api.ABORTED`` with the time
  attr ``event.ts.monotonic`` (required; ``doubleValue`` = seconds, ``intValue`` = ns).
- ``vllm.scheduler`` / span ``llm_core``: ``parentSpanId`` = the ``llm_request`` spanId; request
  id ``<api id>-0-<suffix>``; events ``journey.QUEUED|SCHEDULED|FIRST_TOKEN|PREEMPTED|FINISHED``
  with ``ts.monotonic_ns`` (preferred) or ``ts.monotonic`` (s) (one required), ``scheduler.step``,
  ``phase``, ``prefill.*``, ``decode.*``, ``num_preemptions``, ``schedule.kind`` (FIRST/RESUME),
  ``finish.status``.
- ``vllm.scheduler.step`` / spans ``scheduler_steps_*``: events ``step.BATCH_SUMMARY``
  (``step.id``, ``step.ts_start_ns``, ``step.ts_end_ns`` required; the other 13 attributes null
  when absent) and ``step.REQUEST_SNAPSHOT`` (``step.id``, ``request.id`` required).
- ``vllm.llm_engine`` / span ``llm_request`` (upstream vLLM): one ``requests`` row per span on
  the unix clock (``startTimeUnixNano`` .. ``endTimeUnixNano``), ``gen_ai.latency.*`` -> ms.

Join: an ``llm_core`` span joins the ``llm_request`` span whose spanId is its ``parentSpanId``;
failing that, the one whose request id is the core id up to its last ``-0-``. The join is
streaming, so memory does not grow with the file size (policy):

- an OTLP span is exported once, when it ends, with all its events: as soon as both spans of a
  request have been read (in either order, also across lines and files) nothing more can arrive
  for it, so the joined request is written out at once (``requests`` row + its
  ``request_events`` rows) and forgotten;
- a span whose partner has not been read yet is held (a few hundred bytes). A held ``llm_core``
  span with a ``parentSpanId`` waits for that parent; it falls back to the request-id prefix
  only when it (or the prefix-matching ``llm_request`` span) expires. One without a parent joins
  the prefix match at once (the latest such ``llm_request`` span read so far);
- a held span expires after ``idle_lines`` (default :data:`IDLE_LINES`) further lines (counted
  over all OTLP files of the ingest) without its partner, and at the end of the ingest; it is
  then written unjoined (``core-only`` / ``api-only``, counted in the report note). A partner
  read after that does not join it. ``idle_lines=None`` holds unjoined spans until the end (needed
  only when the api and core spans of a request are further apart than that, e.g. separate api /
  core files longer than ``idle_lines``; memory is then O(unjoined requests));
- the ``parentSpanId`` of each ``llm_core`` span is remembered for ``idle_lines`` lines to skip a
  second core span of the same request (``duplicate``), and the spanId of each written
  ``llm_request`` span to skip a re-export of it (``duplicate``; so is a second span with the
  spanId of one still held) (expiry is checked every 1024 lines);
- ``requests`` rows are in the order the requests completed (joined or expired), journey rows
  first, then upstream rows; ``arrival_us`` is filled in at the end from the run's first arrival
  (the rows are spilled to a temporary Arrow file next to the output meanwhile).

Timestamps: an event whose time is negative is skipped (``negative_timestamp``); one earlier
than the previous kept event of the same span is skipped (``reversed_timestamp``); a step whose
``ts_end_ns < ts_start_ns`` likewise.

Values: an integer attribute outside the int64 range of the tables (an ``intValue``, or an
integral ``doubleValue`` in an integer column), a time that is not a finite number of ns in that
range, a non-string ``request.phase`` or a non-numeric ``kv.usage_gpu_ratio`` /
``gen_ai.latency.*`` is a ``bad_value`` of that field (file, line, field): the event (the span,
for a span attribute) is skipped like one with any other invalid value, the records around it kept.
So is a malformed structure: an attribute list that is not a list of ``{"key": str, "value":
{...}}`` (field ``attributes``), an event that is not an object or ``events`` that is not a list
(``events``), a span name, ``spanId`` or ``parentSpanId`` that is not a string. Whatever skips a
span is checked before any of it is counted, whatever skips an event before the event is: every
span and event counted as kept is in the tables.

``steps.cycle_time_us`` is the true step time: next start - this start where ``step.id + 1`` of
the same file was sampled (the computation is done per file, after the file is read: the step
rows of a file are buffered in a temporary Arrow IPC file/Arrow chunks, then re-emitted with the
cycle column, streaming when the ids are strictly increasing, see :meth:`OtlpState._finish_steps`).
``step.duration_us`` is the scheduler's own bookkeeping, kept as recorded.

Memory does not grow with the file size: rows are held as compact Arrow chunks (at most
``chunk_rows`` per table, Python tuples at most :data:`.tables.PY_ROWS`), the journey join holds
only spans waiting for their partner plus the ids remembered for ``idle_lines`` lines (a bound
independent of the file size, reached after ``idle_lines`` lines), and the cycle times need one
batch of look-ahead.

Speed: step spans (most of a trace) take a bulk path (:meth:`OtlpState._steps_span_bulk`: the
whole span's attribute values taken by C-level ``map`` and strided slices over flat lists,
integers by one orjson call, rows buffered column-wise) when every event has the expected
attribute layout, and an event-by-event path with the original semantics otherwise; both give
the same rows and report counts. On large files with >= 3 usable CPUs, worker processes
(:func:`n_workers`) parse the lines that hold only step spans and run the bulk path on them
(:func:`_work_line`); the main process reads the file, keeps the order, handles every other
line (journey spans, bad lines, spans the bulk path does not take) exactly as without workers,
and writes the tables: the same tables and report either way. A worker that raises on a block
or dies costs only speed: the main process parses that block's lines itself (noted in the
report); an exception in the main process ends the workers at once (:class:`_Workers`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from . import tables as T
from ._io import UNREADABLE, Prepared, iter_raw_lines, json_records
from .otlp_columns import Bad, _ColumnBuffer
from .otlp_journey import _ARR_US, JourneySpans
from .otlp_parallel import _parallel_lines, n_workers
from .otlp_steps import StepSpans
from .report import IngestReport

IDLE_LINES = 50_000  # a journey span without its partner is written unjoined after this many lines


class OtlpState(StepSpans, JourneySpans):
    """Parser state shared by all OTLP files of one ingest (sinks and the streaming journey join)."""

    def __init__(
        self,
        report: IngestReport,
        sinks: dict,
        tmpdir: Path | None = None,
        idle_lines: int | None = IDLE_LINES,
        workers: int | None = None,
    ):
        self.report, self.sinks, self.tmpdir = report, sinks, tmpdir
        self.idle_lines = idle_lines
        self.workers = workers  # step-line worker processes (None: auto, see n_workers)
        self.tick = 0  # OTLP lines read so far (all files): the clock of the idle policy
        self._next_sweep = 0
        self.api: dict = {}  # (run, spanId) -> held api record (insertion order = tick order)
        self.api_by_rid: dict = {}  # (run, request id) -> key of the latest held api record
        self.core: dict = {}  # seq -> held core record (waiting for its api span)
        self._wait_parent: dict = {}  # (run, parentSpanId) -> seq of the held core waiting for it
        self._wait_rid: dict = {}  # (run, core id up to its last -0-) -> [seq, ...] held cores
        self.core_parents: dict = {}  # (run, parentSpanId) -> tick (duplicate detection, expires)
        self.joined_api: dict = {}  # (run, spanId) of written api spans -> tick (a repeat is a duplicate, expires)
        self._seq = 0
        self.n_core = self.n_api = self.n_fallback = self.n_core_only = self.n_api_only = 0
        self.first_arrival: dict = {}  # (run, source) -> smallest arrival_ns (for arrival_us)

        def spill(name):
            return T.TableSink("requests", tmpdir / f".{name}.tmp.arrow" if tmpdir is not None else None, fmt="ipc")

        self._journey_rows = spill("requests_journey")
        self._upstream_rows = spill("requests_upstream")
        self._ntmp = 0
        self._kinds: dict = {}  # (file, kind) -> the report's counter dict (fast keep)
        self._plans: dict = {}  # (event name, attribute keys) -> fast-path plan (see _plan)
        self._last_plan = {"step.BATCH_SUMMARY": (None, None), "step.REQUEST_SNAPSHOT": (None, None)}
        self._snap_buf = _ColumnBuffer(sinks["step_requests"])
        self._shapes: dict = {}  # plan shape -> the one object used for it (rows from workers)

    def _counter(self, file: str, kind: str) -> dict:
        c = self._kinds.get((file, kind))
        if c is None:
            c = self._kinds[(file, kind)] = self.report._c(file, kind)
        return c

    def _keep(self, file: str, kind: str) -> None:
        c = self._kinds.get((file, kind))
        if c is None:
            c = self._kinds[(file, kind)] = self.report._c(file, kind)
        c["kept"] += 1

    # ---------------------------------------------------------------------------------------
    def parse_file(self, path: str | Path, run: str, file: str | None = None) -> None:
        rep = self.report
        file = file or str(path)
        rep.file_kind[file] = "otlp"
        # per-file step rows (spilled; cycle times are added by _finish_steps)
        tmp = None
        if self.tmpdir is not None:
            self._ntmp += 1
            tmp = self.tmpdir / f".steps.{self._ntmp}.tmp.arrow"
        self._steps_tmp = T.TableSink("steps", tmp, fmt="ipc")
        self._sum_buf = _ColumnBuffer(self._steps_tmp)
        snaps = self.sinks["step_requests"]
        nw = n_workers(path, self.workers)
        raw = _parallel_lines(path, nw, note=lambda m: rep.note(f"{file}: {m}")) if nw else iter_raw_lines(path)
        unreadable = None
        try:
            self._parse_lines(file, run, json_records(path, rep, file, raw), snaps)
        except UNREADABLE as e:  # the lines read before stay counted: their step rows are written too
            unreadable = e
        finally:
            # at once, also when an exception escapes: ends the worker processes (a generator
            # left to the garbage collector would end them at an arbitrary later time)
            raw.close()
        self._sum_buf.flush()
        self._snap_buf.flush()
        self._finish_steps(file)
        if unreadable is not None:
            raise unreadable

    def _parse_lines(self, file, run, records, snaps) -> None:
        rep = self.report
        for lineno, obj in records:
            self.tick += 1
            if self.tick >= self._next_sweep:
                self._sweep()
            if type(obj) is Prepared:  # a steps-only line a worker parsed (bulk path, see _work_line)
                self._keep(file, "line")
                for res in obj.res:
                    self._keep(file, "scheduler_steps")
                    self._bulk_commit(file, run, res)
                continue
            rs = obj.get("resourceSpans") if isinstance(obj, dict) else None
            if not isinstance(rs, list):
                rep.skip(file, lineno, "line", "unknown_record", "not an OTLP object with a resourceSpans list")
                continue
            self._keep(file, "line")
            for r in rs:
                sss = (r.get("scopeSpans") or []) if isinstance(r, dict) else None
                if not isinstance(sss, list):
                    rep.skip(
                        file,
                        lineno,
                        "resourceSpans",
                        "bad_value",
                        "a resourceSpans entry is not an object with a scopeSpans list",
                        field="scopeSpans",
                    )
                    continue
                for ss in sss:
                    sc = (ss.get("scope") or {}) if isinstance(ss, dict) else None
                    spans = (ss.get("spans") or []) if isinstance(ss, dict) else None
                    if not isinstance(sc, dict) or not isinstance(spans, list):
                        rep.skip(
                            file,
                            lineno,
                            "scopeSpans",
                            "bad_value",
                            "a scopeSpans entry is not an object with a scope object and a spans list",
                            field="spans",
                        )
                        continue
                    scope = sc.get("name")
                    for span in spans:
                        if not isinstance(span, dict):
                            rep.skip(file, lineno, "span", "bad_value", f"a span is not an object: {span!r:.60}", field="spans")
                            continue
                        name = span.get("name", "?")
                        if type(name) is not str:
                            rep.skip(file, lineno, "span", "bad_value", f"span name {name!r:.60} is not a string", field="name")
                            continue
                        try:
                            if scope == "vllm.scheduler.step" and name.startswith("scheduler_steps"):
                                self._steps_span(span, file, lineno, run, snaps)
                            elif scope == "vllm.api" and name == "llm_request":
                                self._api_span(span, file, lineno, run)
                            elif scope == "vllm.scheduler" and name == "llm_core":
                                self._core_span(span, file, lineno, run)
                            elif scope == "vllm.llm_engine" and name == "llm_request":
                                self._upstream_span(span, file, lineno, run)
                            elif scope in ("vllm.scheduler.step", "vllm.api", "vllm.scheduler", "vllm.llm_engine"):
                                rep.skip(file, lineno, name, "unknown_span", f"span {name!r} in scope {scope}")
                            else:
                                rep.skip(file, lineno, name, "unknown_scope", f"scope {scope!r} (span {name!r})")
                        except Bad as b:
                            rep.skip(file, lineno, name, b.reason, b.message, b.field)
                        except (KeyError, TypeError, AttributeError, ValueError, ArithmeticError) as e:
                            rep.skip(file, lineno, name, "bad_value", f"malformed span: {e!r}")

    # ---------------------------------------------------------------------------------------
    def finish_journey(self) -> int:
        """Expire every held span (end of input); return the number of ``requests`` rows of the
        traces (journey + upstream), read back with :meth:`request_tables`."""
        self._sweep(final=True)
        if self.n_core or self.n_api:
            self.report.note(
                f"journey join: {self.n_core - self.n_core_only} joined ({self.n_fallback} by request-id prefix), "
                f"{self.n_core_only} core-only, {self.n_api_only} api-only"
            )
        return self._journey_rows.count + self._upstream_rows.count

    def request_tables(self):
        """Yield the trace ``requests`` rows (journey, then upstream) as Arrow tables with
        ``arrival_us`` filled in (relative to the first arrival of the same run and source)."""
        for sink in (self._journey_rows, self._upstream_rows):
            for t in sink.batches():
                arr = t.column("arrival_ns").to_numpy(zero_copy_only=False).astype("float64")  # nulls -> NaN
                run = t.column("run").to_pylist()
                src = t.column("source").to_pylist()
                first = np.array([self.first_arrival.get(g, np.nan) for g in zip(run, src)], dtype="float64")
                rel = np.round((arr - first) / 1000)
                ok = ~np.isnan(rel)
                col = pa.array(np.where(ok, rel, 0).astype("int64"), type=pa.int64(), mask=~ok)
                yield t.set_column(_ARR_US, "arrival_us", col)
            if sink.path is not None:
                Path(sink.path).unlink(missing_ok=True)
