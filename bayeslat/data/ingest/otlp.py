"""Streaming parser of OTLP JSON-lines traces of vLLM (journey + step tracing, upstream spans).

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

import math
import multiprocessing
import multiprocessing.connection
import os
import signal
import traceback
from array import array
from collections import deque
from itertools import chain, compress, islice
from operator import ge, itemgetter
from pathlib import Path

import numpy as np
import pyarrow as pa

from . import tables as T
from ._io import UNREADABLE, Prepared, _fast_loads, iter_raw_lines, json_records, open_binary
from .report import IngestReport

IDLE_LINES = 50_000  # a journey span without its partner is written unjoined after this many lines

API_EVENTS = {"api.ARRIVED": "arrival", "api.HANDOFF_TO_CORE": "handoff", "api.FIRST_RESPONSE": "first_response",
              "api.DEPARTED": "departed", "api.ABORTED": "aborted_at"}
CORE_EVENTS = ("journey.QUEUED", "journey.SCHEDULED", "journey.FIRST_TOKEN", "journey.PREEMPTED", "journey.FINISHED")
# integer attributes of a request_events row (after the kind and time; phase goes after the first)
_ROW_INTS = ("scheduler.step", "prefill.done_tokens", "prefill.total_tokens", "decode.done_tokens", "decode.max_tokens",
             "num_preemptions")
_INT_OR_NONE = {int, type(None)}
STEP_ATTRS = [c for c, *_ in T._STEP_ATTRS]
SNAP_ATTRS = ["request.phase", "request.num_prompt_tokens", "request.num_computed_tokens", "request.num_output_tokens",
              "request.num_preemptions", "request.scheduled_tokens_this_step", "kv.blocks_allocated_gpu",
              "kv.blocks_cached_gpu", "request.effective_prompt_len"]
_STEP_N = len(T.columns("steps"))
# fast path of step events: the attributes in the row's column order
_SUM_KEYS = STEP_ATTRS                       # step.id, ts_start, ts_end, 12 ints + kv.usage_gpu_ratio
_RATIO = STEP_ATTRS.index("kv.usage_gpu_ratio")
_SNAP_KEYS = ["step.id", "request.id"] + SNAP_ATTRS
_REQ_COLS = T.columns("requests")
_REQ_STR = [i for i, (c, d, *_) in enumerate(T.SCHEMAS["requests"]) if d == "string"]
_ARR_US = _REQ_COLS.index("arrival_us")
_NONE_REQ = (None,) * len(_REQ_COLS)


class _Slow(Exception):
    """The fast path of an event does not apply: take the general (original) path."""


_KEY, _VALUE, _INT = itemgetter("key"), itemgetter("value"), itemgetter("intValue")
_NAME, _ATTRS, _DOUBLE, _STRV = itemgetter("name"), itemgetter("attributes"), itemgetter("doubleValue"), itemgetter("stringValue")
_SUM, _SNAP = "step.BATCH_SUMMARY", "step.REQUEST_SNAPSHOT"


def _int_array(strs: list) -> array:
    """``array("q", [int(s) for s in strs])`` for ``intValue`` strings, parsed in one C call: the
    strings joined as a JSON array and read by orjson. Exact: the result is used only when it has
    one element per string and ``array("q")`` takes every element, i.e. when every string is a
    JSON integer literal in the int64 range (whose value int() gives too): ``array("q")`` rejects
    floats, strings, lists, dicts and None itself, and bools (which it would take as 0/1) are
    excluded beforehand (``true``/``false`` contain an ``e``, which no integer literal does);
    anything else raises (the caller then takes the general path). Without orjson: plain
    ``int``."""
    if _fast_loads is None:
        return array("q", map(int, strs))
    js = "[" + ",".join(strs) + "]"
    if "e" in js:
        raise _Slow
    res = _fast_loads(js)
    if len(res) != len(strs):
        raise _Slow
    return array("q", res)


_STR_OR_NONE = {str, type(None)}


def _getter(idx: list[int]):
    """itemgetter that always returns a tuple (also for one index)."""
    if len(idx) == 1:
        i = idx[0]
        return lambda seq: (seq[i],)
    return itemgetter(*idx)


class _Plan:
    """Fast path of step events with one attribute-key sequence ``keys``: ``ints`` picks the
    integer attribute values in the table's column order, ``pos`` is the position of the ratio
    (summary) or request.id (snapshot) value, ``phase`` that of request.phase, ``shape`` the
    columns present (rows of one shape share a column buffer)."""
    __slots__ = ("ints", "pos", "phase", "shape", "keys", "width", "drop", "_rep")

    def __init__(self, en: str, keys: tuple):
        summary = en == "step.BATCH_SUMMARY"
        cols, strs = (_SUM_KEYS, ("kv.usage_gpu_ratio",)) if summary else (_SNAP_KEYS, ("request.id", "request.phase"))
        int_cols = [k for k in cols if k not in strs and k in keys]
        idx = [keys.index(k) for k in int_cols]
        self.ints = _getter(idx)
        self.pos = keys.index(strs[0]) if strs[0] in keys else None
        self.phase = keys.index("request.phase") if not summary and "request.phase" in keys else None
        self.shape = (tuple(int_cols), self.pos is not None, self.phase is not None)
        self.keys, self.width = list(keys), len(keys)
        # bulk path: when the integer attributes come in column order, the flat list of all
        # events' values minus the non-integer positions (deleted as strided slices, highest
        # position first) is the integers row by row; else ``drop`` is None (use ``ints``)
        self.drop = sorted(set(range(len(keys))) - set(idx), reverse=True) if idx == sorted(idx) else None
        self._rep = (0, [])

    def keys_times(self, n: int) -> list:
        """``keys * n`` (cached for the last n: spans usually carry the same number of events)."""
        if self._rep[0] != n:
            self._rep = (n, self.keys * n)
        return self._rep[1]

    def int_strings(self, flat: list) -> list:
        """The ``intValue`` strings of the integer columns, row by row, from the flat attribute
        dicts of n events (``flat``, consumed); raises unless each is an ``intValue``."""
        if self.drop is None:
            groups = zip(*[iter(flat)] * self.width)
            return list(map(_INT, map(_VALUE, chain.from_iterable(map(self.ints, groups)))))
        w = self.width
        for q in self.drop:
            del flat[q::w]
            w -= 1
        return list(map(_INT, map(_VALUE, flat)))


def _plan(en: str, keys: tuple):
    """The :class:`_Plan` of an event with these attribute keys, or False when the general path
    must be taken (an unknown or repeated key, a required key missing)."""
    cols, required = (_SUM_KEYS, _SUM_KEYS[:3]) if en == "step.BATCH_SUMMARY" else (_SNAP_KEYS, _SNAP_KEYS[:2])
    if len(set(keys)) != len(keys) or not set(keys) <= set(cols) or not set(required) <= set(keys):
        return False
    return _Plan(en, keys)


class _ColumnBuffer:
    """Rows of one table produced by the fast path, kept column-wise (integers in one flat
    ``array('q')``, the ratio in an ``array('d')``, strings in lists, the run as [run, count]
    segments) and turned into an Arrow table in a few vectorised calls. All buffered rows have
    one :class:`_Plan` shape; a row of another shape, a general-path row or ``chunk_rows`` rows
    flush it to the sink first, so rows keep their order."""

    def __init__(self, sink: T.TableSink):
        self.sink, self.shape = sink, None
        self.ints, self.floats, self.runs, self.rids, self.phases = array("q"), array("d"), [], [], []
        self.n = 0

    def add_run(self, run: str, n: int) -> None:
        """The run of the next ``n`` rows."""
        segs = self.runs
        if segs and segs[-1][0] == run:
            segs[-1][1] += n
        else:
            segs.append([run, n])

    def start(self, shape) -> None:
        """Make ready for a fast-path row of ``shape`` (flushing what does not fit before it)."""
        if self.n and (shape is not self.shape or self.n >= self.sink.chunk_rows):
            self.flush()
        self.shape = shape
        if self.sink.rows:
            self.sink.flush()

    def flush(self) -> None:
        n = self.n
        if not n:
            return
        int_cols, has_pos, has_phase = self.shape
        schema = T.arrow_schema(self.sink.name)
        ints = np.frombuffer(self.ints, dtype=np.int64).reshape(n, len(int_cols))
        runs = [pa.repeat(pa.scalar(r, pa.string()), k) for r, k in self.runs]
        cols = {"run": runs[0] if len(runs) == 1 else pa.concat_arrays(runs)}
        for j, c in enumerate(int_cols):
            cols[c] = pa.array(ints[:, j])
        if self.sink.name == "steps":
            if has_pos:  # NaN -> null, as for general-path rows (from_pandas)
                cols["kv.usage_gpu_ratio"] = pa.array(np.frombuffer(self.floats, dtype=np.float64), from_pandas=True)
        else:
            cols["request.id"] = pa.array(self.rids, pa.string())
            if has_phase:
                cols["request.phase"] = pa.array(self.phases, pa.string())
        t = pa.Table.from_arrays([cols[f.name] if f.name in cols else pa.nulls(n, f.type) for f in schema], schema=schema)
        self.ints, self.floats, self.runs, self.rids, self.phases = array("q"), array("d"), [], [], []
        self.n = 0
        self.sink.write_arrow(t)


class Bad(Exception):
    def __init__(self, reason: str, message: str, field: str | None = None):
        super().__init__(message)
        self.reason, self.message, self.field = reason, message, field


I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1  # the range of the tables' integer columns


def attrs(lst) -> dict:
    """OTLP attribute list -> dict (intValue -> int, doubleValue -> float). A value that does not
    convert (an unparsable intValue or doubleValue, an integer outside the int64 range in any
    value form) stays as given (an out-of-range integer as its decimal string), so that every use
    of it as a number (:func:`_int`, ...) reports it as a bad value of its field instead of
    crashing the ingest when the rows are converted to Arrow. A list that is not of ``{"key": str, "value": {...}}``
    entries is a :class:`Bad` value of the field ``attributes``."""
    d = {}
    if not lst:
        return d
    if type(lst) is not list:
        raise Bad("bad_value", f"attributes {lst!r:.60} is not a list", "attributes")
    for a in lst:
        v = a.get("value") if type(a) is dict else None
        if type(v) is not dict or type(a.get("key")) is not str:
            raise Bad("bad_value", f"attribute {a!r:.60} is not a {{key, value}} object", "attributes")
        if "intValue" in v:
            x = v["intValue"]
            try:
                i = int(x)
            except (TypeError, ValueError, OverflowError):
                d[a["key"]] = x
            else:
                d[a["key"]] = i if I64_MIN <= i <= I64_MAX else (x if type(x) is str else str(i))
        elif "stringValue" in v:
            x = v["stringValue"]  # (a JSON integer outside int64 here too: as its text)
            d[a["key"]] = str(x) if type(x) is int and not I64_MIN <= x <= I64_MAX else x
        elif "doubleValue" in v:
            x = v["doubleValue"]
            try:
                d[a["key"]] = float(x)
            except OverflowError:  # an integer beyond the float range: inf, as a float literal beyond it reads
                d[a["key"]] = math.inf if x > 0 else -math.inf
            except (TypeError, ValueError):
                d[a["key"]] = x
        elif "boolValue" in v:
            d[a["key"]] = bool(v["boolValue"])
        else:
            x = next(iter(v.values()), None)
            d[a["key"]] = str(x) if type(x) is int and not I64_MIN <= x <= I64_MAX else x
    return d


def _events(span: dict) -> list:
    """The ``events`` list of a span (empty when absent); :class:`Bad` when it is not a list, so
    that the span is skipped as a whole before any of it is counted."""
    evs = span.get("events") or []
    if type(evs) is not list:
        raise Bad("bad_value", f"events {evs!r:.60} is not a list", "events")
    return evs


def _out_of_range(v) -> bool:
    """``v`` (an attribute value) is an integer, or the text of one, outside the int64 range."""
    if type(v) is str:
        try:
            v = int(v)
        except ValueError:
            return False
    elif isinstance(v, float) and v.is_integer():
        v = int(v)
    return type(v) is int and not I64_MIN <= v <= I64_MAX


def _int(d: dict, key: str, required: bool = False):
    """The integer attribute ``key`` of ``d`` (None when absent, unless ``required``); raises
    :class:`Bad` (``bad_value``, field ``key``) unless it is an integer (or an integral double)
    in the int64 range."""
    v = d.get(key)
    if v is None:
        if required:
            raise Bad("missing_attribute", f"attribute {key} is missing", key)
        return None
    if type(v) is int:
        if I64_MIN <= v <= I64_MAX:
            return v
    elif isinstance(v, float) and v.is_integer() and I64_MIN <= v <= I64_MAX:
        return int(v)
    why = "is outside the int64 range" if _out_of_range(v) else "is not an integer"
    raise Bad("bad_value", f"attribute {key}={v!r} {why}", key)


def _seconds_ns(v, key: str) -> int:
    """A time in seconds (int or float attribute ``key``) -> integer ns; :class:`Bad` unless
    finite and in the int64 range."""
    x = v * 1e9
    if not (math.isfinite(x) and I64_MIN <= x <= I64_MAX):
        raise Bad("bad_value", f"attribute {key}={v!r} s is not a time in the int64 ns range", key)
    return round(x)


def _event_ts(name, t: int, last: int | None) -> int:
    """``t`` (ns) of span event ``name`` when not negative and not before the span's previous
    kept event ``last``; :class:`Bad` otherwise (the module docstring's timestamp rules)."""
    if t < 0:
        raise Bad("negative_timestamp", f"{name} at {t} ns", "ts")
    if last is not None and t < last:
        raise Bad("reversed_timestamp", f"{name} at {t} ns is before the previous event ({last} ns)", "ts")
    return t


def _span_ns(span: dict, key: str):
    """The integer span field ``key`` (``startTimeUnixNano``, ...), None when absent; :class:`Bad`
    unless an integer (text) in the int64 range."""
    v = span.get(key)
    if v is None:
        return None
    try:
        t = int(v)
    except (TypeError, ValueError, OverflowError):
        raise Bad("bad_value", f"{key}={v!r} is not an integer", key) from None
    if not I64_MIN <= t <= I64_MAX:
        raise Bad("bad_value", f"{key}={v!r} is outside the int64 range", key)
    return t


class OtlpState:
    """Parser state shared by all OTLP files of one ingest (sinks and the streaming journey join)."""

    def __init__(self, report: IngestReport, sinks: dict, tmpdir: Path | None = None, idle_lines: int | None = IDLE_LINES,
                 workers: int | None = None):
        self.report, self.sinks, self.tmpdir = report, sinks, tmpdir
        self.idle_lines = idle_lines
        self.workers = workers       # step-line worker processes (None: auto, see n_workers)
        self.tick = 0                # OTLP lines read so far (all files): the clock of the idle policy
        self._next_sweep = 0
        self.api: dict = {}          # (run, spanId) -> held api record (insertion order = tick order)
        self.api_by_rid: dict = {}   # (run, request id) -> key of the latest held api record
        self.core: dict = {}         # seq -> held core record (waiting for its api span)
        self._wait_parent: dict = {}  # (run, parentSpanId) -> seq of the held core waiting for it
        self._wait_rid: dict = {}    # (run, core id up to its last -0-) -> [seq, ...] held cores
        self.core_parents: dict = {}  # (run, parentSpanId) -> tick (duplicate detection, expires)
        self.joined_api: dict = {}   # (run, spanId) of written api spans -> tick (a repeat is a duplicate, expires)
        self._seq = 0
        self.n_core = self.n_api = self.n_fallback = self.n_core_only = self.n_api_only = 0
        self.first_arrival: dict = {}  # (run, source) -> smallest arrival_ns (for arrival_us)

        def spill(name):
            return T.TableSink("requests", tmpdir / f".{name}.tmp.arrow" if tmpdir is not None else None, fmt="ipc")
        self._journey_rows = spill("requests_journey")
        self._upstream_rows = spill("requests_upstream")
        self._ntmp = 0
        self._kinds: dict = {}       # (file, kind) -> the report's counter dict (fast keep)
        self._plans: dict = {}       # (event name, attribute keys) -> fast-path plan (see _plan)
        self._last_plan = {"step.BATCH_SUMMARY": (None, None), "step.REQUEST_SNAPSHOT": (None, None)}
        self._snap_buf = _ColumnBuffer(sinks["step_requests"])
        self._shapes: dict = {}      # plan shape -> the one object used for it (rows from workers)

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
                    rep.skip(file, lineno, "resourceSpans", "bad_value", "a resourceSpans entry is not an object with a "
                             "scopeSpans list", field="scopeSpans")
                    continue
                for ss in sss:
                    sc = (ss.get("scope") or {}) if isinstance(ss, dict) else None
                    spans = (ss.get("spans") or []) if isinstance(ss, dict) else None
                    if not isinstance(sc, dict) or not isinstance(spans, list):
                        rep.skip(file, lineno, "scopeSpans", "bad_value", "a scopeSpans entry is not an object with a "
                                 "scope object and a spans list", field="spans")
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
    def _steps_span(self, span, file, lineno, run, snaps) -> None:
        """Step events. Each event first tries a fast path that applies when every attribute is
        one of the expected keys, once, in its expected form (``intValue`` / a lone
        ``stringValue`` / a lone ``doubleValue``) and the event is valid; it gives exactly the
        row of the general path (:meth:`_step_event`), which handles everything else."""
        evs = _events(span)
        self._keep(file, "scheduler_steps")
        if self._steps_span_bulk(span, file, run, snaps):
            return
        tmp = self._steps_tmp
        c_sum = c_snap = None  # the report's kept/skipped counters of the two event kinds
        layout = self._layout
        sbuf, rbuf = self._sum_buf, self._snap_buf
        for ev in evs:
            if type(ev) is not dict:
                self.report.skip(file, lineno, "event", "bad_value", f"an event is not an object: {ev!r:.60}", "events")
                continue
            en = ev.get("name")
            if en == "step.BATCH_SUMMARY":
                try:
                    lst = ev["attributes"]
                    plan = layout(en, list(map(_KEY, lst)))
                    vals = list(map(_VALUE, lst))
                    iv = array("q", map(int, map(_INT, plan.ints(vals))))  # OverflowError outside int64
                    sid, t0, t1 = iv[0], iv[1], iv[2]
                    if sid < 0 or t0 < 0 or t1 < t0:
                        raise _Slow
                    if plan.pos is not None:
                        x = vals[plan.pos]
                        if len(x) != 1:
                            raise _Slow
                        x = float(x["doubleValue"])
                except Exception:  # plan False, an unexpected value form, an invalid step, ...
                    self._step_event(ev, en, span, file, lineno, run, snaps)
                    continue
                if sbuf.shape is not plan.shape or sbuf.n >= sbuf.sink.chunk_rows or tmp.rows:
                    sbuf.start(plan.shape)
                sbuf.ints.extend(iv)
                if plan.pos is not None:
                    sbuf.floats.append(x)
                sbuf.add_run(run, 1)
                sbuf.n += 1
                if c_sum is None:
                    c_sum = self._counter(file, en)
                c_sum["kept"] += 1
            elif en == "step.REQUEST_SNAPSHOT":
                try:
                    lst = ev["attributes"]
                    plan = layout(en, list(map(_KEY, lst)))
                    vals = list(map(_VALUE, lst))
                    iv = array("q", map(int, map(_INT, plan.ints(vals))))  # OverflowError outside int64
                    rid = vals[plan.pos]
                    if len(rid) != 1:
                        raise _Slow
                    rid = rid["stringValue"]
                    if rid is None:
                        raise _Slow
                    rid = str(rid)
                    ph = None
                    if plan.phase is not None:
                        ph = vals[plan.phase]
                        if len(ph) != 1:
                            raise _Slow
                        ph = ph["stringValue"]
                        if ph is not None and type(ph) is not str:
                            raise _Slow
                except Exception:
                    self._step_event(ev, en, span, file, lineno, run, snaps)
                    continue
                if rbuf.shape is not plan.shape or rbuf.n >= rbuf.sink.chunk_rows or snaps.rows:
                    rbuf.start(plan.shape)
                rbuf.ints.extend(iv)
                rbuf.add_run(run, 1)
                rbuf.rids.append(rid)
                rbuf.phases.append(ph)
                rbuf.n += 1
                if c_snap is None:
                    c_snap = self._counter(file, en)
                c_snap["kept"] += 1
            else:
                self._step_event(ev, en, span, file, lineno, run, snaps)
        tmp.maybe_flush()
        snaps.maybe_flush()

    def _layout(self, en: str, keys: list):
        """The fast-path :class:`_Plan` of ``en`` events whose attribute keys are ``keys`` (a
        list, kept), False if none applies; cached per key sequence, the last one per event kind
        checked first."""
        lk, plan = self._last_plan[en]
        if keys != lk:
            tk = tuple(keys)
            plan = self._plans.get((en, tk))
            if plan is None:
                plan = self._plans[(en, tk)] = _plan(en, tk)
            self._last_plan[en] = (keys, plan)
        return plan

    def _steps_span_bulk(self, span, file, run, snaps) -> bool:
        """The whole span at once, all loops in C (``map``/strided slices over flat lists), when
        every event is a BATCH_SUMMARY or REQUEST_SNAPSHOT, all events of a kind have the same
        attribute keys (a fast-path :class:`_Plan`) and every value converts and validates.
        Returns False, having changed nothing, otherwise (the caller then goes event by event)."""
        res = self._bulk_compute(span)
        if res is None:
            return False
        self._bulk_commit(file, run, res)
        return True

    def _bulk_compute(self, span):
        """The rows of :meth:`_steps_span_bulk` (a pure function of the span, but for the plan
        caches): ``(kinds in first-seen order, n summaries, n snapshots, (summary part,
        snapshot part))``, or None when the bulk path does not apply."""
        try:
            events = span["events"]
            names = list(map(_NAME, events))
            even, odd = names[0::2], names[1::2]
            if even.count(_SUM) == len(even) and odd.count(_SNAP) == len(odd):  # the usual layout
                sums, snps = events[0::2], events[1::2]
            else:
                n_sum = names.count(_SUM)
                if n_sum == len(names):
                    sums, snps = events, ()
                else:
                    # every name is one of the two (str.__eq__ of a non-str would be NotImplemented)
                    if n_sum + names.count(_SNAP) != len(names):
                        return None
                    sums = list(compress(events, map(_SUM.__eq__, names))) if n_sum else ()
                    snps = list(compress(events, map(_SNAP.__eq__, names)))
            out = []
            for en, evs in ((_SUM, sums), (_SNAP, snps)):
                if not evs:
                    out.append(None)
                    continue
                flat = list(chain.from_iterable(map(_ATTRS, evs)))  # all attribute dicts, event by event
                keys = list(map(_KEY, flat))
                plan = self._layout(en, keys[:len(evs[0]["attributes"])])  # the first event's keys
                if plan is False:
                    return None
                n, width = len(evs), plan.width
                if keys != plan.keys_times(n):  # every event has the first one's keys
                    return None
                del keys
                # the non-integer values first (int_strings consumes flat)
                x = list(map(_VALUE, flat[plan.pos::width])) if plan.pos is not None else None
                ph = list(map(_VALUE, flat[plan.phase::width])) if plan.phase is not None else None
                iv = _int_array(plan.int_strings(flat))
                k = len(plan.shape[0])
                if en == _SUM:
                    sid, t0, t1 = iv[0::k], iv[1::k], iv[2::k]
                    if min(sid) < 0 or min(t0) < 0 or not all(map(ge, t1, t0)):
                        return None
                    fl = None
                    if x is not None:
                        if set(map(len, x)) != {1}:
                            return None
                        fl = array("d", map(float, map(_DOUBLE, x)))
                    out.append((plan.shape, iv, fl, n))
                else:
                    if set(map(len, x)) != {1}:
                        return None
                    rid = list(map(_STRV, x))
                    if None in rid:
                        return None
                    rid = list(map(str, rid))
                    if ph is not None:
                        if set(map(len, ph)) != {1}:
                            return None
                        ph = list(map(_STRV, ph))
                        if not set(map(type, ph)) <= _STR_OR_NONE:
                            return None
                    else:
                        ph = [None] * n
                    out.append((plan.shape, iv, rid, ph, n))
        except Exception:
            return None
        if sums and snps:  # the report's kinds in the order first seen
            kinds = (_SUM, _SNAP) if names[0] == _SUM else (_SNAP, _SUM)
        else:
            kinds = tuple(names[:1])
        return kinds, len(sums), len(snps), tuple(out)

    def _bulk_commit(self, file, run, res) -> None:
        """Append the rows computed by :meth:`_bulk_compute` (no exception possible but a full
        disk) and count them in the report."""
        kinds, n_sum, n_snp, (s, r) = res
        if s is not None:
            shape, iv, fl, n = s
            shape = self._shapes.setdefault(shape, shape)  # one object per shape (buffer identity test)
            buf = self._sum_buf
            buf.start(shape)
            buf.ints.extend(iv)
            if fl is not None:
                buf.floats.extend(fl)
            buf.add_run(run, n)
            buf.n += n
        if r is not None:
            shape, iv, rid, ph, n = r
            shape = self._shapes.setdefault(shape, shape)
            buf = self._snap_buf
            buf.start(shape)
            buf.ints.extend(iv)
            buf.add_run(run, n)
            buf.rids.extend(rid)
            buf.phases.extend(ph)
            buf.n += n
        for en in kinds:  # the report's kinds in the order first seen
            self._counter(file, en)["kept"] += n_sum if en == _SUM else n_snp

    def _step_event(self, ev, en, span, file, lineno, run, snaps) -> None:
        """The general path of one step event (any attribute form; skips with a reason)."""
        rep = self.report
        try:
            a = attrs(ev.get("attributes"))
            if en == "step.BATCH_SUMMARY":
                sid = _int(a, "step.id", True)
                t0 = _int(a, "step.ts_start_ns", True)
                t1 = _int(a, "step.ts_end_ns", True)
                if sid < 0:
                    raise Bad("bad_value", f"step.id={sid} is negative", "step.id")
                if t0 < 0 or t1 < 0:
                    raise Bad("negative_timestamp", f"step {sid}: ts_start_ns={t0}, ts_end_ns={t1}", "step.ts_start_ns")
                if t1 < t0:
                    raise Bad("reversed_timestamp", f"step {sid}: ts_end_ns {t1} < ts_start_ns {t0}", "step.ts_end_ns")
                row = [run, sid, t0, t1]
                for k in STEP_ATTRS[3:]:
                    v = a.get(k)
                    if v is not None:
                        if k != "kv.usage_gpu_ratio":
                            if type(v) is not int:
                                v = _int(a, k)
                        elif type(v) is not float:
                            if type(v) is not int:  # e.g. a string or bool: not a ratio
                                raise Bad("bad_value", f"attribute {k}={v!r} is not a number", k)
                            v = float(v)
                    row.append(v)
                row.append(None)
                row.append(None)
                self._sum_buf.flush()
                self._steps_tmp.rows.append(tuple(row))
            elif en == "step.REQUEST_SNAPSHOT":
                sid = _int(a, "step.id", True)
                rid = a.get("request.id")
                if rid is None:
                    raise Bad("missing_attribute", "attribute request.id is missing", "request.id")
                ph = a.get("request.phase")
                if ph is not None and type(ph) is not str:
                    raise Bad("bad_value", f"attribute request.phase={ph!r} is not a string", "request.phase")
                row = [run, sid, str(rid), ph]
                for k in SNAP_ATTRS[1:]:
                    v = a.get(k)
                    row.append(v if v is None or type(v) is int else _int(a, k))
                self._snap_buf.flush()
                snaps.rows.append(tuple(row))
            else:
                raise Bad("unknown_event", f"event {en!r} in span {span['name']}")
            self._keep(file, en)
        except Bad as b:
            rep.skip(file, lineno, str(en), b.reason, b.message, b.field)

    def _finish_steps(self, file: str) -> None:
        """Re-emit the file's step rows (spilled to a temporary Arrow IPC file while parsing)
        with cycle times, a batch at a time. A first pass reads the step ids to check that they
        are strictly increasing (the usual case); the second then pairs each row with the next
        one (one batch of look-ahead), so memory stays bounded whatever the file size. Only when
        the ids repeat or go backwards are all ids and start times (16 bytes a step) loaded, for
        np.unique (cycle times then use the first record of a repeated id)."""
        sink = self._steps_tmp
        sink.flush()
        ID, TS = 1, 2  # column positions of step.id and step.ts_start_ns
        increasing, last, n = True, None, 0
        for t in sink.batches():
            ids = t.column(ID).to_numpy()
            n += len(ids)
            if len(ids) and ((last is not None and ids[0] <= last) or not bool((ids[1:] > ids[:-1]).all())):
                increasing = False
                break
            if len(ids):
                last = ids[-1]
        main = self.sinks["steps"]
        neg = 0

        def emit(t, has, cyc):
            nonlocal neg
            neg += int((cyc < 0).sum())
            t = t.set_column(_STEP_N - 2, "cycle_time_us", pa.array(cyc, type=pa.float64()))
            t = t.set_column(_STEP_N - 1, "successor_sampled", pa.array(has, type=pa.bool_()))
            main.write_arrow(t)

        if increasing:
            prev = None  # (table, ids, ts) waiting for the first row of the next batch
            for t in chain(sink.batches(), [None]):
                if t is not None and t.num_rows == 0:
                    continue
                if prev is not None:
                    pt, ids, ts = prev
                    nid = np.append(ids[1:], t.column(ID)[0].as_py() if t is not None else -1)
                    nts = np.append(ts[1:], t.column(TS)[0].as_py() if t is not None else 0)
                    has = nid == ids + 1
                    emit(pt, has, np.where(has, (nts - ts) / 1000.0, np.nan))
                prev = None if t is None else (t, t.column(ID).to_numpy(), t.column(TS).to_numpy())
        else:
            ids = np.concatenate([t.column(ID).to_numpy() for t in sink.batches()])
            ts = np.concatenate([t.column(TS).to_numpy() for t in sink.batches()])
            uniq, first = np.unique(ids, return_index=True)
            if len(uniq) < len(ids):
                self.report.note(f"{file}: {len(ids) - len(uniq)} steps repeat a step.id (cycle times use the first)")
            uts = ts[first]
            del first
            i = 0
            for t in sink.batches():
                m = t.num_rows
                nxt = ids[i:i + m] + 1
                pos = np.minimum(np.searchsorted(uniq, nxt), len(uniq) - 1)
                has = uniq[pos] == nxt
                emit(t, has, np.where(has, (uts[pos] - ts[i:i + m]) / 1000.0, np.nan))
                i += m
        if neg:
            self.report.note(f"{file}: {neg} cycle times are negative (next step starts before this one)")
        if sink.path is not None:
            Path(sink.path).unlink(missing_ok=True)
        self._steps_tmp = self._sum_buf = None

    # ---------------------------------------------------------------------------------------
    # Journey spans: one loop over the events per span kind. Everything that can make a span
    # invalid is checked before the span is counted (a Bad skips the whole span), everything that
    # can make an event invalid (name, time, the values it contributes) before the event is
    # counted (a Bad skips that event only): a counted span or event is always in the tables.
    def _api_span(self, span, file, lineno, run) -> None:
        a = attrs(span.get("attributes"))
        rid = a.get("gen_ai.request.id")
        if rid is None:
            raise Bad("missing_attribute", "llm_request without gen_ai.request.id", "gen_ai.request.id")
        sid = span.get("spanId")
        if sid is not None and type(sid) is not str:
            raise Bad("bad_value", f"spanId={sid!r:.60} is not a string", "spanId")
        key = (run, sid or f"@{file}:{lineno}:{rid}")
        if key in self.joined_api or key in self.api:  # a re-export: the request has (or is waiting for) its row
            raise Bad("duplicate", f"second llm_request span {key[1]}", "spanId")
        rec = {"rid": str(rid), "prompt": _int(a, "gen_ai.usage.prompt_tokens"), "max_tokens": _int(a, "gen_ai.request.max_tokens"),
               "aborted": False, "file": file, "line": lineno}
        evs = _events(span)
        self._keep(file, "llm_request")
        last = None
        for ev in evs:
            if type(ev) is not dict:
                self.report.skip(file, lineno, "event", "bad_value", f"an event is not an object: {ev!r:.60}", "events")
                continue
            en = ev.get("name")
            try:
                ea = attrs(ev.get("attributes"))
                if type(en) is not str or en not in API_EVENTS:
                    raise Bad("unknown_event", f"event {en!r} in span llm_request")
                v = ea.get("event.ts.monotonic")
                if v is None:
                    raise Bad("missing_attribute", "attribute event.ts.monotonic is missing", "event.ts.monotonic")
                t = _seconds_ns(v, "event.ts.monotonic") if isinstance(v, float) else _int(ea, "event.ts.monotonic")
                last = _event_ts(en, t, last)
                self._keep(file, en)
            except Bad as b:
                self.report.skip(file, lineno, str(en), b.reason, b.message, b.field)
                continue
            what = API_EVENTS[en]
            if what == "aborted_at":
                rec["aborted"] = True
            rec.setdefault(what, t)
        self.n_api += 1
        rec["key"], rec["tick"] = key, self.tick
        # the earliest held core that joins it: by parentSpanId, or (no parent) by request-id prefix
        best = self._wait_parent.get(key)
        for seq in self._wait_rid.get((run, rec["rid"]), ()):
            if self.core[seq]["parent"] is None:
                if best is None or seq < best:
                    best = seq
                break
        if best is not None:
            c = self.core[best]
            self._join(c, rec, fallback=c["parent"] is None or (run, c["parent"]) != key)
            return
        self.api[key] = rec
        self.api_by_rid[(run, rec["rid"])] = key

    def _core_span(self, span, file, lineno, run) -> None:
        a = attrs(span.get("attributes"))
        rid = a.get("gen_ai.request.id")
        parent = span.get("parentSpanId") or None
        if rid is None and parent is None:
            raise Bad("missing_attribute", "llm_core without gen_ai.request.id and parentSpanId", "gen_ai.request.id")
        if parent is not None and type(parent) is not str:
            raise Bad("bad_value", f"parentSpanId={parent!r:.60} is not a string", "parentSpanId")
        if parent is not None and (run, parent) in self.core_parents:
            raise Bad("duplicate", f"second llm_core span for parent {parent}")
        evs = _events(span)
        if parent is not None:
            self.core_parents[(run, parent)] = self.tick
        self._keep(file, "llm_core")
        rows = []
        rec = {"run": run, "rid": None if rid is None else str(rid), "parent": parent, "n_pre_events": 0, "n_pre": None,
               "rows": rows, "file": file, "line": lineno}
        last = None
        for ev in evs:
            if type(ev) is not dict:
                self.report.skip(file, lineno, "event", "bad_value", f"an event is not an object: {ev!r:.60}", "events")
                continue
            en = ev.get("name")
            try:
                ea = attrs(ev.get("attributes"))
                if en not in CORE_EVENTS:
                    raise Bad("unknown_event", f"event {en!r} in span llm_core")
                t = ea.get("ts.monotonic_ns")
                if t is not None:
                    if type(t) is not int:
                        t = _int(ea, "ts.monotonic_ns")
                elif ea.get("ts.monotonic") is not None:
                    v = ea["ts.monotonic"]
                    if not isinstance(v, (int, float)):
                        raise Bad("bad_value", f"ts.monotonic={v!r}", "ts.monotonic")
                    t = _seconds_ns(v, "ts.monotonic")
                else:
                    raise Bad("missing_attribute", "attributes ts.monotonic_ns and ts.monotonic are missing", "ts.monotonic_ns")
                t = _event_ts(en, t, last)
                # the integer values the event contributes (_int raises for the first bad one)
                get = ea.get
                out = _int(ea, "decode.done_tokens") if en == "journey.FINISHED" else None
                iv = None
                if en == "journey.SCHEDULED" or en == "journey.PREEMPTED":
                    iv = tuple(map(get, _ROW_INTS))
                    if not set(map(type, iv)) <= _INT_OR_NONE:
                        iv = tuple(_int(ea, k) for k in _ROW_INTS)
                prompt = get("prefill.total_tokens") if rec.get("prompt") is None else None
                if prompt is not None and type(prompt) is not int:
                    prompt = _int(ea, "prefill.total_tokens")
                mx = get("decode.max_tokens") if rec.get("max_tokens") is None else None
                if mx is not None and type(mx) is not int:
                    mx = _int(ea, "decode.max_tokens")
            except Bad as b:
                self.report.skip(file, lineno, str(en), b.reason, b.message, b.field)
                continue
            last = t
            self._keep(file, en)
            if en == "journey.QUEUED":
                rec.setdefault("queued", t)
            elif en == "journey.FIRST_TOKEN":
                rec.setdefault("first_token", t)
            elif en == "journey.FINISHED":
                rec.setdefault("finished", t)
                rec["output"] = out
                rec["status"] = get("finish.status")
            elif iv is not None:
                if en == "journey.SCHEDULED":
                    rec.setdefault("first_sched", t)
                    kind = "resumed" if str(get("schedule.kind", "FIRST")).upper() == "RESUME" else "scheduled"
                else:
                    kind = "preempted"
                    rec["n_pre_events"] += 1
                rows.append((kind, t, iv[0], get("phase")) + iv[1:])
            np_ = get("num_preemptions")
            if type(np_) is int:
                rec["n_pre"] = np_ if rec["n_pre"] is None else max(rec["n_pre"], np_)
            if prompt is not None:
                rec["prompt"] = prompt
            if mx is not None:
                rec["max_tokens"] = mx
        self.n_core += 1
        self._seq += 1
        rec["seq"], rec["tick"] = self._seq, self.tick
        rid = rec["rid"]
        i = rid.rfind("-0-") if rid is not None else -1
        rec["prefix"] = (run, rid[:i]) if i > 0 else None
        if parent is not None:
            api = self.api.get((run, parent))
            if api is not None:
                return self._join(rec, api, fallback=False)
        elif rec["prefix"] is not None:
            key = self.api_by_rid.get(rec["prefix"])
            api = self.api.get(key) if key is not None else None
            if api is not None:
                return self._join(rec, api, fallback=True)
        if parent is None and rec["prefix"] is None:
            return self._emit(rec, None)  # nothing can ever join it
        self.core[rec["seq"]] = rec
        if parent is not None:
            self._wait_parent[(run, parent)] = rec["seq"]
        if rec["prefix"] is not None:
            self._wait_rid.setdefault(rec["prefix"], []).append(rec["seq"])

    def _upstream_span(self, span, file, lineno, run) -> None:
        a = attrs(span.get("attributes"))
        rid = a.get("gen_ai.request.id")
        if rid is None:
            raise Bad("missing_attribute", "llm_request without gen_ai.request.id", "gen_ai.request.id")
        t0, t1 = _span_ns(span, "startTimeUnixNano"), _span_ns(span, "endTimeUnixNano")
        if (t0 is not None and t0 < 0) or (t1 is not None and t1 < 0):
            raise Bad("negative_timestamp", f"span times {t0}..{t1}")
        if t0 is not None and t1 is not None and t1 < t0:
            raise Bad("reversed_timestamp", f"endTimeUnixNano {t1} < startTimeUnixNano {t0}")

        def ms(k):
            v = a.get(k)
            if v is None:
                return None
            if type(v) is not int and type(v) is not float:
                raise Bad("bad_value", f"attribute {k}={v!r} is not a number", k)
            return float(v) * 1e3

        self._row(self._upstream_rows, {
            "source": "upstream", "run": run, "request_id": str(rid), "clock": "unix",
            "arrival_ns": t0, "departed_ns": t1,
            "input_tokens": _int(a, "gen_ai.usage.prompt_tokens"), "max_tokens": _int(a, "gen_ai.request.max_tokens"),
            "output_tokens": _int(a, "gen_ai.usage.completion_tokens"),
            "ttft_ms": ms("gen_ai.latency.time_to_first_token"), "e2e_ms": ms("gen_ai.latency.e2e"),
            "queue_ms": ms("gen_ai.latency.time_in_queue"), "aborted": False, "has_error": False})
        self._keep(file, "llm_request")

    # -- the streaming join ---------------------------------------------------------------------
    def _row(self, sink, d: dict) -> None:
        """A ``requests`` row (dict) -> the spill sink; tracks the first arrival per run/source."""
        row = list(map(d.get, _REQ_COLS))
        for i in _REQ_STR:
            v = row[i]
            if v is not None and type(v) is not str:
                row[i] = str(v)
        arr = d.get("arrival_ns")
        if arr is not None:
            g = (d["run"], d["source"])
            f = self.first_arrival.get(g)
            if f is None or arr < f:
                self.first_arrival[g] = arr
        sink.append(tuple(row))

    def _unhold_core(self, c) -> None:
        if self.core.pop(c["seq"], None) is None:
            return
        if c["parent"] is not None and self._wait_parent.get((c["run"], c["parent"])) == c["seq"]:
            del self._wait_parent[(c["run"], c["parent"])]
        if c["prefix"] is not None:
            lst = self._wait_rid.get(c["prefix"])
            if lst is not None:
                lst.remove(c["seq"])
                if not lst:
                    del self._wait_rid[c["prefix"]]

    def _unhold_api(self, api) -> None:
        key = api["key"]
        if self.api.get(key) is api:
            del self.api[key]
            rk = (key[0], api["rid"])
            if self.api_by_rid.get(rk) == key:
                del self.api_by_rid[rk]

    def _join(self, c, api, fallback: bool) -> None:
        if fallback:
            self.n_fallback += 1
        self._unhold_core(c)
        self._unhold_api(api)
        self.joined_api[api["key"]] = self.tick
        self._emit(c, api)

    def _emit(self, c, api) -> None:
        """Write one journey request (``c`` core record or None, ``api`` record or None)."""
        if c is None:  # api-only
            self.n_api_only += 1
            run = api["key"][0]
            arr, dep, fr = api.get("arrival"), api.get("departed"), api.get("first_response")
            self._row(self._journey_rows, {
                "source": "journey", "run": run, "request_id": api["rid"], "clock": "monotonic",
                "arrival_ns": arr, "handoff_ns": api.get("handoff"), "first_response_ns": fr, "departed_ns": dep,
                "input_tokens": api.get("prompt"), "max_tokens": api.get("max_tokens"), "n_preemptions": None,
                "aborted": api["aborted"], "has_error": api["aborted"],
                "ttft_ms": (fr - arr) / 1e6 if fr is not None and arr is not None else None,
                "e2e_ms": (dep - arr) / 1e6 if dep is not None and arr is not None else None})
            return
        if api is None:
            self.n_core_only += 1
            api = {}
        run = c["run"]
        rid = api.get("rid") or c["rid"] or c["parent"]
        status = c.get("status")
        aborted = bool(api.get("aborted")) or (status is not None and "ABORT" in str(status).upper())
        arr, dep, fr = api.get("arrival"), api.get("departed"), api.get("first_response")
        n_pre = max(c["n_pre"] or 0, c["n_pre_events"])
        self._row(self._journey_rows, {
            "source": "journey", "run": run, "request_id": rid, "clock": "monotonic",
            "arrival_ns": arr, "handoff_ns": api.get("handoff"), "queued_ns": c.get("queued"),
            "first_scheduled_ns": c.get("first_sched"), "first_token_ns": c.get("first_token"),
            "first_response_ns": fr, "finished_ns": c.get("finished"), "departed_ns": dep,
            "input_tokens": api.get("prompt") if api.get("prompt") is not None else c.get("prompt"),
            "max_tokens": api.get("max_tokens") if api.get("max_tokens") is not None else c.get("max_tokens"),
            "output_tokens": c.get("output"), "n_preemptions": n_pre, "finish_status": status,
            "aborted": aborted, "has_error": aborted,
            "ttft_ms": (fr - arr) / 1e6 if fr is not None and arr is not None else None,
            "e2e_ms": (dep - arr) / 1e6 if dep is not None and arr is not None else None,
            "queue_ms": (c["first_sched"] - c["queued"]) / 1e6 if c.get("first_sched") is not None and c.get("queued") is not None else None})
        rid = None if rid is None else str(rid)
        ev_sink = self.sinks["request_events"]
        for i, r in enumerate(c["rows"]):
            ev_sink.append((run, rid, i) + r[:3] + (None if r[3] is None else str(r[3]),) + r[4:])

    def _expire_core(self, c) -> None:
        """A held core span gives up waiting: request-id prefix fallback, else core-only."""
        self._unhold_core(c)
        key = self.api_by_rid.get(c["prefix"]) if c["prefix"] is not None else None
        api = self.api.get(key) if key is not None else None
        if api is not None:
            self._unhold_api(api)
            self.joined_api[api["key"]] = self.tick
            self.n_fallback += 1
        self._emit(c, api)

    def _expire_api(self, api) -> None:
        """A held api span gives up waiting: a held core with a parent that matches it by
        request-id prefix (the general fallback), else api-only."""
        self._unhold_api(api)
        lst = self._wait_rid.get((api["key"][0], api["rid"]))
        if lst:
            c = self.core[lst[0]]
            self._unhold_core(c)
            self.joined_api[api["key"]] = self.tick
            self.n_fallback += 1
            self._emit(c, api)
        else:
            self.joined_api[api["key"]] = self.tick
            self._emit(None, api)

    def _sweep(self, final: bool = False) -> None:
        """Expire held spans (and remembered core parents) idle for ``idle_lines`` lines."""
        self._next_sweep = self.tick + 1024
        if final:
            cut = float("inf")
        elif self.idle_lines is None:
            return
        else:
            cut = self.tick - self.idle_lines
        while self.core:
            c = next(iter(self.core.values()))
            if c["tick"] > cut:
                break
            self._expire_core(c)
        while self.api:
            api = next(iter(self.api.values()))
            if api["tick"] > cut:
                break
            self._expire_api(api)
        for cp in (self.core_parents, self.joined_api):
            # the leading entries up to the first one not idle, deleted after one scan (a scan
            # per deletion would walk the deleted slots at the front of the dict every time)
            n = 0
            for t in cp.values():
                if t > cut:
                    break
                n += 1
            for k in list(islice(cp, n)):
                del cp[k]

    # ---------------------------------------------------------------------------------------
    def finish_journey(self) -> int:
        """Expire every held span (end of input); return the number of ``requests`` rows of the
        traces (journey + upstream), read back with :meth:`request_tables`."""
        self._sweep(final=True)
        if self.n_core or self.n_api:
            self.report.note(f"journey join: {self.n_core - self.n_core_only} joined ({self.n_fallback} by request-id prefix), "
                             f"{self.n_core_only} core-only, {self.n_api_only} api-only")
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


# -------------------------------------------------------------------------------------------------
# Parallel parsing of step lines
# -------------------------------------------------------------------------------------------------
PARALLEL_MIN_BYTES = 64 << 20   # smaller files are parsed in-process (worker start-up ~0.1 s)
BLOCK_BYTES = 2 << 20           # raw bytes of lines per work item
MAX_WORKERS = 4


def n_workers(path, workers: int | None = None) -> int:
    """Worker processes for one OTLP file: ``workers`` if given (0 = none), else, when orjson
    is installed, fork is available, the file has at least :data:`PARALLEL_MIN_BYTES` (gzip: an
    eighth of that) and at least 3 CPUs are usable, ``min(MAX_WORKERS, CPUs - 1)`` (the main
    process keeps one: it reads, joins the journey spans and writes the tables)."""
    if _fast_loads is None or "fork" not in multiprocessing.get_all_start_methods():
        return 0
    if workers is not None:
        return max(int(workers), 0)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    if cpus < 3:
        return 0
    try:
        size = Path(path).stat().st_size
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
    except OSError:
        return 0
    return min(MAX_WORKERS, cpus - 1) if size * (8 if gz else 1) >= PARALLEL_MIN_BYTES else 0


class _BulkWorker:
    """The state a worker needs for :meth:`OtlpState._bulk_compute`: the plan caches."""

    _layout = OtlpState._layout
    _bulk_compute = OtlpState._bulk_compute

    def __init__(self):
        self._plans = {}
        self._last_plan = {_SUM: (None, None), _SNAP: (None, None)}


_WORKER = None


def _work_line(raw):
    """A worker's result for one raw line: the :meth:`OtlpState._bulk_compute` results of its
    spans when it is a valid JSON object whose every span is a ``vllm.scheduler.step`` /
    ``scheduler_steps*`` span the bulk path takes; else None (the main process then parses and
    handles the line itself, exactly as without workers)."""
    global _WORKER
    if _WORKER is None:
        _WORKER = _BulkWorker()
    try:
        obj = _fast_loads(raw)
    except ValueError:
        return None
    if type(obj) is not dict:
        return None
    rs = obj.get("resourceSpans")
    if type(rs) is not list:
        return None
    out = []
    for r in rs:
        if type(r) is not dict:
            return None
        sss = r.get("scopeSpans") or ()
        if type(sss) is not list:
            return None
        for ss in sss:
            if type(ss) is not dict:
                return None
            sc = ss.get("scope") or {}
            spans = ss.get("spans") or ()
            if type(sc) is not dict or sc.get("name") != "vllm.scheduler.step" or type(spans) is not list:
                return None
            for span in spans:
                if type(span) is not dict:
                    return None
                name = span.get("name", "?")
                if type(name) is not str or not name.startswith("scheduler_steps"):
                    return None
                res = _WORKER._bulk_compute(span)
                if res is None:
                    return None
                out.append(res)
    return out


def _work_block(raws: list) -> list:
    return [_work_line(r) for r in raws]


def _worker_loop(conn, inherited) -> None:
    """A worker process (forked): receives blocks of raw lines on ``conn`` and sends back, per
    block, ``("ok", _work_block(block))`` or ``("error", traceback)`` when that raised (the
    worker goes on with the next block); ends on ``None`` or when the main process's end of the
    pipe is closed. ``inherited``: the main process's pipe ends copied by the fork (closed here,
    so a worker never keeps another worker's pipe open). SIGINT is ignored: the main process
    handles Ctrl-C and ends the workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for c in inherited:
        c.close()
    while True:
        try:
            raws = conn.recv()
        except (EOFError, OSError):
            return
        if raws is None:
            return
        try:
            msg = ("ok", _work_block(raws))
        except Exception:
            msg = ("error", traceback.format_exc())
        try:
            try:
                conn.send(msg)
            except (OSError, EOFError):
                return
            except Exception:  # the result does not pickle (nothing was sent yet)
                conn.send(("error", traceback.format_exc()))
        except (OSError, EOFError):
            return


class _Workers:
    """``nproc`` forked worker processes (:func:`_worker_loop`), each with its own pipe and at
    most one block in flight, so neither side can block the other on a full pipe. No threads:
    :meth:`close` ends every worker (SIGTERM, then SIGKILL) and reaps it, deterministically, from
    whatever state the ingest was left in (an exception, a worker that died, Ctrl-C)."""

    def __init__(self, nproc: int):
        ctx = multiprocessing.get_context("fork")
        self.procs, self.conns, self.alive = [], [], []
        try:
            for _ in range(nproc):
                mine, theirs = ctx.Pipe()
                p = ctx.Process(target=_worker_loop, args=(theirs, self.conns + [mine]), daemon=True,
                                name="bayeslat-otlp-worker")
                p.start()
                theirs.close()
                self.procs.append(p)
                self.conns.append(mine)
                self.alive.append(True)
        except BaseException:
            self.close()
            raise

    def send(self, i: int, raws: list) -> str | None:
        """Give worker ``i`` a block; an error message (the worker is then dead) or None."""
        try:
            self.conns[i].send(raws)
            return None
        except (OSError, EOFError) as e:
            return self._dead(i, f"could not be sent a block ({e!r})")

    def result(self, i: int):
        """``(results, None)`` of worker ``i``'s block, or ``(None, message)`` when the worker
        raised on it or died; waits for the result or the worker's exit, never forever on a
        dead worker."""
        conn, p = self.conns[i], self.procs[i]
        while True:
            ready = multiprocessing.connection.wait([conn, p.sentinel])
            if conn in ready:
                try:
                    kind, val = conn.recv()
                except (EOFError, OSError) as e:
                    return None, self._dead(i, f"closed its pipe ({e!r})")
                if kind == "ok":
                    return val, None
                return None, f"worker process {p.pid} raised on a block (parsed in-process instead):\n{val}"
            if not conn.poll():  # exited without (the rest of) its result
                return None, self._dead(i, "exited")

    def _dead(self, i: int, what: str) -> str:
        p = self.procs[i]
        self.alive[i] = False
        p.join(1)
        return f"worker process {p.pid} {what} (exit code {p.exitcode}); its lines are parsed in-process"

    def close(self) -> None:
        for c in self.conns:
            c.close()
        for p in self.procs:
            if p.exitcode is None:
                p.terminate()
        for p in self.procs:
            p.join(5)
            if p.exitcode is None:  # pragma: no cover - ignored SIGTERM
                p.kill()
                p.join(5)


def _parallel_lines(path, nproc: int, block_bytes: int | None = None, note=None):
    """:func:`._io.iter_raw_lines` of ``path`` with each line's :func:`_work_line` result,
    computed by ``nproc`` forked worker processes (:class:`_Workers`) on blocks of
    ``block_bytes``; in order, with at most one block per worker in flight (bounded memory).
    A block whose worker raised or died gets None results (the main process then parses its
    lines, exactly as without workers) and ``note(message)`` is called; a dead worker gets no
    more blocks (with none left, the main process parses every line). The workers are ended when
    the generator finishes or is closed (:meth:`OtlpState.parse_file` closes it also when an
    exception escapes)."""
    block_bytes = block_bytes or BLOCK_BYTES
    workers = _Workers(nproc)
    try:
        pending = deque()          # (worker index or None: in-process, block) in file order
        free = deque(range(nproc))

        def take():
            """The oldest pending block with its results (freeing its worker)."""
            i, blk = pending.popleft()
            if i is None:
                return blk, None
            res, msg = workers.result(i)
            if msg is not None and note is not None:
                note(f"lines {blk[0][0]}-{blk[-1][0]}: {msg}")
            if workers.alive[i]:
                free.append(i)
            return blk, res

        def submit(blk):
            """Hand ``blk`` to a free worker (first taking the oldest pending block, returned,
            when none is free); None as its worker when no worker is alive."""
            out = take() if not free and pending else None
            while free:
                i = free.popleft()
                msg = workers.send(i, [r for _, r in blk])
                if msg is None:
                    pending.append((i, blk))
                    return out
                if note is not None:
                    note(f"lines {blk[0][0]}-{blk[-1][0]}: {msg}")
            pending.append((None, blk))
            return out

        def lines(done):
            blk, res = done
            if res is None or len(res) != len(blk):
                res = [None] * len(blk)
            for (lineno, raw), r in zip(blk, res):
                yield lineno, raw, r

        with open_binary(path) as f:
            blk, size, lineno = [], 0, 0
            for raw in f:
                lineno += 1
                if not raw or raw.isspace():
                    continue
                blk.append((lineno, raw))
                size += len(raw)
                if size >= block_bytes:
                    done = submit(blk)
                    blk, size = [], 0
                    if done is not None:
                        yield from lines(done)
            if blk:
                done = submit(blk)
                if done is not None:
                    yield from lines(done)
        while pending:
            yield from lines(take())
    finally:
        workers.close()
