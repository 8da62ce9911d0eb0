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
failing that, the one whose request id is the core id up to its last ``-0-``. Joining happens
after all files are read (spans of one request may sit in different lines/files), so journey
state is O(requests) (a few hundred bytes each); steps / snapshots are streamed out in chunks.

Timestamps: an event whose time is negative is skipped (``negative_timestamp``); one earlier
than the previous kept event of the same span is skipped (``reversed_timestamp``); a step whose
``ts_end_ns < ts_start_ns`` likewise.

``steps.cycle_time_us`` is the true step time: next start - this start where ``step.id + 1`` of
the same file was sampled (the computation is done per file, after the file is read: the step
rows of a file are buffered in a temporary Parquet file/Arrow chunks, then re-emitted with the
cycle column). ``step.duration_us`` is the scheduler's own bookkeeping, kept as recorded.
"""
from __future__ import annotations

from array import array
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import tables as T
from ._io import iter_json_records
from .report import IngestReport

API_EVENTS = {"api.ARRIVED": "arrival", "api.HANDOFF_TO_CORE": "handoff", "api.FIRST_RESPONSE": "first_response",
              "api.DEPARTED": "departed", "api.ABORTED": "aborted_at"}
CORE_EVENTS = ("journey.QUEUED", "journey.SCHEDULED", "journey.FIRST_TOKEN", "journey.PREEMPTED", "journey.FINISHED")
STEP_ATTRS = [c for c, *_ in T._STEP_ATTRS]
SNAP_ATTRS = ["request.phase", "request.num_prompt_tokens", "request.num_computed_tokens", "request.num_output_tokens",
              "request.num_preemptions", "request.scheduled_tokens_this_step", "kv.blocks_allocated_gpu",
              "kv.blocks_cached_gpu", "request.effective_prompt_len"]
_STEP_N = len(T.columns("steps"))


class Bad(Exception):
    def __init__(self, reason: str, message: str, field: str | None = None):
        super().__init__(message)
        self.reason, self.message, self.field = reason, message, field


def attrs(lst) -> dict:
    """OTLP attribute list -> dict (intValue -> int; unparsable ints stay strings)."""
    d = {}
    if not lst:
        return d
    for a in lst:
        v = a["value"]
        if "intValue" in v:
            x = v["intValue"]
            try:
                d[a["key"]] = int(x)
            except (TypeError, ValueError):
                d[a["key"]] = x
        elif "stringValue" in v:
            d[a["key"]] = v["stringValue"]
        elif "doubleValue" in v:
            d[a["key"]] = float(v["doubleValue"])
        elif "boolValue" in v:
            d[a["key"]] = bool(v["boolValue"])
        else:
            d[a["key"]] = next(iter(v.values()), None)
    return d


def _int(d: dict, key: str, required: bool = False):
    v = d.get(key)
    if v is None:
        if required:
            raise Bad("missing_attribute", f"attribute {key} is missing", key)
        return None
    if type(v) is int:
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    raise Bad("bad_value", f"attribute {key}={v!r} is not an integer", key)


class OtlpState:
    """Parser state shared by all OTLP files of one ingest (sinks and the journey join)."""

    def __init__(self, report: IngestReport, sinks: dict, tmpdir: Path | None = None):
        self.report, self.sinks, self.tmpdir = report, sinks, tmpdir
        self.api: dict = {}          # (run, spanId) -> api record
        self.api_by_rid: dict = {}   # (run, request id) -> (run, spanId)
        self.core: list = []         # core records
        self.core_parents: set = set()
        self.upstream: list = []     # upstream request dicts
        self._ntmp = 0

    # ---------------------------------------------------------------------------------------
    def parse_file(self, path: str | Path, run: str, file: str | None = None) -> None:
        rep = self.report
        file = file or str(path)
        rep.file_kind[file] = "otlp"
        # per-file step buffer (for cycle times)
        self._step_ids, self._step_ts = array("q"), array("q")
        tmp = None
        if self.tmpdir is not None:
            self._ntmp += 1
            tmp = self.tmpdir / f".steps.{self._ntmp}.tmp.parquet"
        self._steps_tmp = T.TableSink("steps", tmp)
        snaps = self.sinks["step_requests"]
        for lineno, obj in iter_json_records(path, rep, file):
            rs = obj.get("resourceSpans") if isinstance(obj, dict) else None
            if not isinstance(rs, list):
                rep.skip(file, lineno, "line", "unknown_record", "not an OTLP object with a resourceSpans list")
                continue
            rep.keep(file, "line")
            for r in rs:
                for ss in r.get("scopeSpans") or ():
                    scope = (ss.get("scope") or {}).get("name")
                    for span in ss.get("spans") or ():
                        name = span.get("name", "?")
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
                        except (KeyError, TypeError, AttributeError, ValueError) as e:
                            rep.skip(file, lineno, name, "bad_value", f"malformed span: {e!r}")
        self._finish_steps(file)

    # ---------------------------------------------------------------------------------------
    def _steps_span(self, span, file, lineno, run, snaps) -> None:
        rep = self.report
        rep.keep(file, "scheduler_steps")
        ids, tss, tmp = self._step_ids, self._step_ts, self._steps_tmp
        for ev in span.get("events") or ():
            en = ev.get("name")
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
                        if v is not None and k != "kv.usage_gpu_ratio" and type(v) is not int:
                            v = _int(a, k)
                        row.append(v)
                    row.append(None)
                    row.append(None)
                    ids.append(sid)
                    tss.append(t0)
                    tmp.append(tuple(row))
                elif en == "step.REQUEST_SNAPSHOT":
                    sid = _int(a, "step.id", True)
                    rid = a.get("request.id")
                    if rid is None:
                        raise Bad("missing_attribute", "attribute request.id is missing", "request.id")
                    row = [run, sid, str(rid), a.get("request.phase")]
                    for k in SNAP_ATTRS[1:]:
                        v = a.get(k)
                        row.append(v if v is None or type(v) is int else _int(a, k))
                    snaps.append(tuple(row))
                else:
                    raise Bad("unknown_event", f"event {en!r} in span {span['name']}")
                rep.keep(file, en)
            except Bad as b:
                rep.skip(file, lineno, str(en), b.reason, b.message, b.field)

    def _finish_steps(self, file: str) -> None:
        sink = self._steps_tmp
        sink.flush()
        ids = np.frombuffer(self._step_ids, dtype=np.int64) if len(self._step_ids) else np.zeros(0, np.int64)
        ts = np.frombuffer(self._step_ts, dtype=np.int64) if len(self._step_ts) else np.zeros(0, np.int64)
        n = len(ids)
        if n:
            uniq, first = np.unique(ids, return_index=True)
            if len(uniq) < n:
                self.report.note(f"{file}: {n - len(uniq)} steps repeat a step.id (cycle times use the first)")
            uts = ts[first]
            pos = np.minimum(np.searchsorted(uniq, ids + 1), len(uniq) - 1)
            has = uniq[pos] == ids + 1
            cyc = np.where(has, (uts[pos] - ts) / 1000.0, np.nan)
            neg = int((cyc < 0).sum())
            if neg:
                self.report.note(f"{file}: {neg} cycle times are negative (next step starts before this one)")
        else:
            has, cyc = np.zeros(0, bool), np.zeros(0)
        main = self.sinks["steps"]
        if sink.path is not None:
            sink.close()
            batches = pq.ParquetFile(str(sink.path)).iter_batches(batch_size=65536)
        else:
            batches = (b for t in sink.kept for b in t.to_batches())
        i = 0
        for b in batches:
            m = b.num_rows
            t = pa.Table.from_batches([b])
            t = t.set_column(_STEP_N - 2, "cycle_time_us", pa.array(cyc[i:i + m], type=pa.float64()))
            t = t.set_column(_STEP_N - 1, "successor_sampled", pa.array(has[i:i + m], type=pa.bool_()))
            main.write_arrow(t)
            i += m
        if sink.path is not None:
            Path(sink.path).unlink(missing_ok=True)
        self._steps_tmp = None

    # ---------------------------------------------------------------------------------------
    def _span_events(self, span, file, lineno, timeattr):
        """Yield (name, ts_ns, attrs) of a span's events in order, skipping bad ones."""
        rep = self.report
        last = None
        for ev in span.get("events") or ():
            en = ev.get("name")
            try:
                a = attrs(ev.get("attributes"))
                if timeattr == "api":
                    if en not in API_EVENTS:
                        raise Bad("unknown_event", f"event {en!r} in span llm_request")
                    v = a.get("event.ts.monotonic")
                    if v is None:
                        raise Bad("missing_attribute", "attribute event.ts.monotonic is missing", "event.ts.monotonic")
                    t = round(v * 1e9) if isinstance(v, float) else _int(a, "event.ts.monotonic")
                else:
                    if en not in CORE_EVENTS:
                        raise Bad("unknown_event", f"event {en!r} in span llm_core")
                    t = a.get("ts.monotonic_ns")
                    if t is not None:
                        t = _int(a, "ts.monotonic_ns")
                    elif a.get("ts.monotonic") is not None:
                        v = a["ts.monotonic"]
                        if not isinstance(v, (int, float)):
                            raise Bad("bad_value", f"ts.monotonic={v!r}", "ts.monotonic")
                        t = round(v * 1e9)
                    else:
                        raise Bad("missing_attribute", "attributes ts.monotonic_ns and ts.monotonic are missing", "ts.monotonic_ns")
                if t < 0:
                    raise Bad("negative_timestamp", f"{en} at {t} ns", "ts")
                if last is not None and t < last:
                    raise Bad("reversed_timestamp", f"{en} at {t} ns is before the previous event ({last} ns)", "ts")
                last = t
                rep.keep(file, en)
                yield en, t, a
            except Bad as b:
                rep.skip(file, lineno, str(en), b.reason, b.message, b.field)

    def _api_span(self, span, file, lineno, run) -> None:
        a = attrs(span.get("attributes"))
        rid = a.get("gen_ai.request.id")
        if rid is None:
            raise Bad("missing_attribute", "llm_request without gen_ai.request.id", "gen_ai.request.id")
        rec = {"rid": str(rid), "prompt": _int(a, "gen_ai.usage.prompt_tokens"), "max_tokens": _int(a, "gen_ai.request.max_tokens"),
               "aborted": False, "file": file, "line": lineno}
        self.report.keep(file, "llm_request")
        for en, t, _ in self._span_events(span, file, lineno, "api"):
            key = API_EVENTS[en]
            if key == "aborted_at":
                rec["aborted"] = True
            rec.setdefault(key, t)
        key = (run, span.get("spanId") or f"@{file}:{lineno}:{rid}")
        self.api[key] = rec
        self.api_by_rid[(run, rec["rid"])] = key

    def _core_span(self, span, file, lineno, run) -> None:
        a = attrs(span.get("attributes"))
        rid = a.get("gen_ai.request.id")
        parent = span.get("parentSpanId") or None
        if rid is None and parent is None:
            raise Bad("missing_attribute", "llm_core without gen_ai.request.id and parentSpanId", "gen_ai.request.id")
        if parent is not None and (run, parent) in self.core_parents:
            raise Bad("duplicate", f"second llm_core span for parent {parent}")
        if parent is not None:
            self.core_parents.add((run, parent))
        self.report.keep(file, "llm_core")
        rec = {"run": run, "rid": None if rid is None else str(rid), "parent": parent, "n_pre_events": 0, "n_pre": None,
               "rows": [], "file": file, "line": lineno}
        for en, t, ea in self._span_events(span, file, lineno, "core"):
            if en == "journey.QUEUED":
                rec.setdefault("queued", t)
            elif en == "journey.FIRST_TOKEN":
                rec.setdefault("first_token", t)
            elif en == "journey.FINISHED":
                rec.setdefault("finished", t)
                rec["output"] = _int(ea, "decode.done_tokens")
                rec["status"] = ea.get("finish.status")
            if en in ("journey.SCHEDULED", "journey.PREEMPTED"):
                if en == "journey.SCHEDULED":
                    rec.setdefault("first_sched", t)
                    kind = "resumed" if str(ea.get("schedule.kind", "FIRST")).upper() == "RESUME" else "scheduled"
                else:
                    kind = "preempted"
                    rec["n_pre_events"] += 1
                rec["rows"].append((kind, t, _int(ea, "scheduler.step"), ea.get("phase"), _int(ea, "prefill.done_tokens"),
                                    _int(ea, "prefill.total_tokens"), _int(ea, "decode.done_tokens"),
                                    _int(ea, "decode.max_tokens"), _int(ea, "num_preemptions")))
            np_ = ea.get("num_preemptions")
            if type(np_) is int:
                rec["n_pre"] = np_ if rec["n_pre"] is None else max(rec["n_pre"], np_)
            for k, col in (("prefill.total_tokens", "prompt"), ("decode.max_tokens", "max_tokens")):
                if ea.get(k) is not None and rec.get(col) is None:
                    rec[col] = _int(ea, k)
        self.core.append(rec)

    def _upstream_span(self, span, file, lineno, run) -> None:
        a = attrs(span.get("attributes"))
        rid = a.get("gen_ai.request.id")
        if rid is None:
            raise Bad("missing_attribute", "llm_request without gen_ai.request.id", "gen_ai.request.id")
        t0, t1 = span.get("startTimeUnixNano"), span.get("endTimeUnixNano")
        t0 = int(t0) if t0 is not None else None
        t1 = int(t1) if t1 is not None else None
        if (t0 is not None and t0 < 0) or (t1 is not None and t1 < 0):
            raise Bad("negative_timestamp", f"span times {t0}..{t1}")
        if t0 is not None and t1 is not None and t1 < t0:
            raise Bad("reversed_timestamp", f"endTimeUnixNano {t1} < startTimeUnixNano {t0}")

        def ms(k):
            v = a.get(k)
            return float(v) * 1e3 if isinstance(v, (int, float)) else None

        self.upstream.append({"source": "upstream", "run": run, "request_id": str(rid), "clock": "unix",
                              "arrival_ns": t0, "departed_ns": t1,
                              "input_tokens": _int(a, "gen_ai.usage.prompt_tokens"), "max_tokens": _int(a, "gen_ai.request.max_tokens"),
                              "output_tokens": _int(a, "gen_ai.usage.completion_tokens"),
                              "ttft_ms": ms("gen_ai.latency.time_to_first_token"), "e2e_ms": ms("gen_ai.latency.e2e"),
                              "queue_ms": ms("gen_ai.latency.time_in_queue"), "aborted": False, "has_error": False})
        self.report.keep(file, "llm_request")

    # ---------------------------------------------------------------------------------------
    def finish_journey(self) -> list[dict]:
        """Join api and core spans; emit request_events rows; return request dicts."""
        out, used = [], set()
        ev_sink = self.sinks["request_events"]
        n_fallback = n_core_only = 0
        for c in self.core:
            run = c["run"]
            key = (run, c["parent"]) if c["parent"] is not None else None
            api = self.api.get(key) if key is not None else None
            if api is None and c["rid"] is not None:
                i = c["rid"].rfind("-0-")
                if i > 0:
                    key = self.api_by_rid.get((run, c["rid"][:i]))
                    api = self.api.get(key) if key is not None else None
                    if api is not None:
                        n_fallback += 1
            if api is not None and key in used:
                api = None  # the api span already joined another core span
            if api is not None:
                used.add(key)
            else:
                n_core_only += 1
                api = {}
            rid = api.get("rid") or c["rid"] or c["parent"]
            status = c.get("status")
            aborted = bool(api.get("aborted")) or (status is not None and "ABORT" in str(status).upper())
            arr, dep, fr = api.get("arrival"), api.get("departed"), api.get("first_response")
            n_pre = max(c["n_pre"] or 0, c["n_pre_events"])
            out.append({"source": "journey", "run": run, "request_id": rid, "clock": "monotonic",
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
            for i, r in enumerate(c["rows"]):
                ev_sink.append((run, rid, i) + r)
        n_api_only = 0
        for key, api in self.api.items():
            if key in used:
                continue
            n_api_only += 1
            arr, dep, fr = api.get("arrival"), api.get("departed"), api.get("first_response")
            out.append({"source": "journey", "run": key[0], "request_id": api["rid"], "clock": "monotonic",
                        "arrival_ns": arr, "handoff_ns": api.get("handoff"), "first_response_ns": fr, "departed_ns": dep,
                        "input_tokens": api.get("prompt"), "max_tokens": api.get("max_tokens"), "n_preemptions": None,
                        "aborted": api["aborted"], "has_error": api["aborted"],
                        "ttft_ms": (fr - arr) / 1e6 if fr is not None and arr is not None else None,
                        "e2e_ms": (dep - arr) / 1e6 if dep is not None and arr is not None else None})
        if self.core or self.api:
            self.report.note(f"journey join: {len(self.core) - n_core_only} joined ({n_fallback} by request-id prefix), "
                             f"{n_core_only} core-only, {n_api_only} api-only")
        self.api, self.core = {}, []
        return out + self.upstream
