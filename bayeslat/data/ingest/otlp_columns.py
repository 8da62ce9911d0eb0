"""OTLP attribute decoding and the column buffers of the step fast path: the attribute list of a span
or event -> dict with the int64 / time checks (:func:`attrs`, :func:`_int`, :class:`Bad`), the
fast-path plans of step events (:class:`_Plan`) and the column-wise row buffers they fill
(:class:`_ColumnBuffer`). See :mod:`.otlp` for the parser and its rules.
"""

from __future__ import annotations

import math
from array import array
from itertools import chain
from operator import itemgetter

import numpy as np
import pyarrow as pa

from . import tables as T
from ._io import _fast_loads

STEP_ATTRS = [c for c, *_ in T._STEP_ATTRS]
SNAP_ATTRS = [
    "request.phase",
    "request.num_prompt_tokens",
    "request.num_computed_tokens",
    "request.num_output_tokens",
    "request.num_preemptions",
    "request.scheduled_tokens_this_step",
    "kv.blocks_allocated_gpu",
    "kv.blocks_cached_gpu",
    "request.effective_prompt_len",
]
_STEP_N = len(T.columns("steps"))
# fast path of step events: the attributes in the row's column order
_SUM_KEYS = STEP_ATTRS  # step.id, ts_start, ts_end, 12 ints + kv.usage_gpu_ratio
_RATIO = STEP_ATTRS.index("kv.usage_gpu_ratio")
_SNAP_KEYS = ["step.id", "request.id"] + SNAP_ATTRS


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
