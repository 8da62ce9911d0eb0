"""The journey spans of an OTLP trace (``vllm.api`` ``llm_request``, ``vllm.scheduler``
``llm_core``, upstream ``vllm.llm_engine`` ``llm_request``) and their streaming join: the
:class:`JourneySpans` part of :class:`.otlp.OtlpState` that writes ``requests`` and
``request_events`` rows (the join policy is in the :mod:`.otlp` docstring).
"""

from __future__ import annotations

from itertools import islice

from . import tables as T
from .otlp_columns import Bad, _event_ts, _events, _int, _seconds_ns, _span_ns, attrs

API_EVENTS = {
    "api.ARRIVED": "arrival",
    "api.HANDOFF_TO_CORE": "handoff",
    "api.FIRST_RESPONSE": "first_response",
    "api.DEPARTED": "departed",
    "api.ABORTED": "aborted_at",
}
CORE_EVENTS = ("journey.QUEUED", "journey.SCHEDULED", "journey.FIRST_TOKEN", "journey.PREEMPTED", "journey.FINISHED")
# integer attributes of a request_events row (after the kind and time; phase goes after the first)
_ROW_INTS = (
    "scheduler.step",
    "prefill.done_tokens",
    "prefill.total_tokens",
    "decode.done_tokens",
    "decode.max_tokens",
    "num_preemptions",
)
_INT_OR_NONE = {int, type(None)}
_REQ_COLS = T.columns("requests")
_REQ_STR = [i for i, (c, d, *_) in enumerate(T.SCHEMAS["requests"]) if d == "string"]
_ARR_US = _REQ_COLS.index("arrival_us")
_NONE_REQ = (None,) * len(_REQ_COLS)


class JourneySpans:
    """Journey-span methods of :class:`.otlp.OtlpState` (a mixin: it uses the state's ``report``,
    ``sinks``, ``tick``, ``idle_lines``, the held spans and remembered ids, the counters and the
    spill sinks ``_journey_rows`` / ``_upstream_rows``)."""

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
        rec = {
            "rid": str(rid),
            "prompt": _int(a, "gen_ai.usage.prompt_tokens"),
            "max_tokens": _int(a, "gen_ai.request.max_tokens"),
            "aborted": False,
            "file": file,
            "line": lineno,
        }
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
        rec = {
            "run": run,
            "rid": None if rid is None else str(rid),
            "parent": parent,
            "n_pre_events": 0,
            "n_pre": None,
            "rows": rows,
            "file": file,
            "line": lineno,
        }
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

        self._row(
            self._upstream_rows,
            {
                "source": "upstream",
                "run": run,
                "request_id": str(rid),
                "clock": "unix",
                "arrival_ns": t0,
                "departed_ns": t1,
                "input_tokens": _int(a, "gen_ai.usage.prompt_tokens"),
                "max_tokens": _int(a, "gen_ai.request.max_tokens"),
                "output_tokens": _int(a, "gen_ai.usage.completion_tokens"),
                "ttft_ms": ms("gen_ai.latency.time_to_first_token"),
                "e2e_ms": ms("gen_ai.latency.e2e"),
                "queue_ms": ms("gen_ai.latency.time_in_queue"),
                "aborted": False,
                "has_error": False,
            },
        )
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
            self._row(
                self._journey_rows,
                {
                    "source": "journey",
                    "run": run,
                    "request_id": api["rid"],
                    "clock": "monotonic",
                    "arrival_ns": arr,
                    "handoff_ns": api.get("handoff"),
                    "first_response_ns": fr,
                    "departed_ns": dep,
                    "input_tokens": api.get("prompt"),
                    "max_tokens": api.get("max_tokens"),
                    "n_preemptions": None,
                    "aborted": api["aborted"],
                    "has_error": api["aborted"],
                    "ttft_ms": (fr - arr) / 1e6 if fr is not None and arr is not None else None,
                    "e2e_ms": (dep - arr) / 1e6 if dep is not None and arr is not None else None,
                },
            )
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
        self._row(
            self._journey_rows,
            {
                "source": "journey",
                "run": run,
                "request_id": rid,
                "clock": "monotonic",
                "arrival_ns": arr,
                "handoff_ns": api.get("handoff"),
                "queued_ns": c.get("queued"),
                "first_scheduled_ns": c.get("first_sched"),
                "first_token_ns": c.get("first_token"),
                "first_response_ns": fr,
                "finished_ns": c.get("finished"),
                "departed_ns": dep,
                "input_tokens": api.get("prompt") if api.get("prompt") is not None else c.get("prompt"),
                "max_tokens": api.get("max_tokens") if api.get("max_tokens") is not None else c.get("max_tokens"),
                "output_tokens": c.get("output"),
                "n_preemptions": n_pre,
                "finish_status": status,
                "aborted": aborted,
                "has_error": aborted,
                "ttft_ms": (fr - arr) / 1e6 if fr is not None and arr is not None else None,
                "e2e_ms": (dep - arr) / 1e6 if dep is not None and arr is not None else None,
                "queue_ms": (c["first_sched"] - c["queued"]) / 1e6
                if c.get("first_sched") is not None and c.get("queued") is not None
                else None,
            },
        )
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
