"""Property-based tests (hypothesis) of the ingest readers: OTLP journey / step traces, KV event
streams and inference-perf replay / ground-truth / lifecycle files.

Inputs are valid records in the documented format (tests/synthrun.py's writer, the hand-built
fixtures in tests/data/traces, small builders below), then mutated: lines dropped, repeated,
reordered, truncated, blanked or given non-UTF-8 bytes; JSON values replaced by values of the
wrong type, huge integers, NaN, lone surrogates; keys and list entries deleted or repeated,
event lists reversed; files emptied, gzipped, cut.

The invariant, for any input: ``ingest`` returns (no exception) and every record is accounted
for exactly once, at the line it was read from: every non-blank line is kept or skipped; every
span of a kept line kept or skipped; every event of a kept span kept or skipped (an event of a
skipped span is covered by the span's skip); the kept records are the table rows (steps,
step_requests, request_events, requests, kv_steps, replay requests), a skip has a documented
reason and reads ``file:line: ...``. A file that cannot be read at all is one ``file`` record or
a report error. The counting is observed through a report subclass that logs each count with
the line being read when it was made.

Examples are bounded and derandomized (no example database) so CI runs are reproducible; the
plain tests at the end pin the cases the fuzzing found.
"""

from __future__ import annotations

import copy
import gzip
import json
import re
import tempfile
from collections import Counter, namedtuple
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import bayeslat.data.ingest as ingest_pkg
from bayeslat.data.ingest import check_schema, ingest, tables
from bayeslat.data.ingest.report import IngestReport
from tests.synthrun import _run, write_trace

TR = Path(__file__).parent / "data" / "traces"


def fuzz(n: int):
    """Hypothesis settings: ``n`` examples, reproducible (derandomized, no example database), no
    deadline (the machine is shared). The budgets keep the whole file under ~30 s on 2 cores."""
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


REASONS = {
    "invalid_json",
    "truncated_line",
    "missing_attribute",
    "bad_value",
    "negative_timestamp",
    "reversed_timestamp",
    "unknown_event",
    "unknown_span",
    "unknown_scope",
    "unknown_record",
    "duplicate",
}
STRUCT_KINDS = ("resourceSpans", "scopeSpans", "span")
SPAN_KEEP_KINDS = ("scheduler_steps", "llm_request", "llm_core")

# -------------------------------------------------------------------------------------------------
# A report that logs every count with the line being read when it was made
# -------------------------------------------------------------------------------------------------
Rec = namedtuple("Rec", "file line kind what n reason text")


class _Count(dict):
    def __init__(self, rep, file, kind):
        super().__init__(kept=0, skipped=0)
        self.rep, self.file, self.kind = rep, file, kind

    def __setitem__(self, k, v):
        if k == "kept" and v != self["kept"]:
            self.rep.log.append(Rec(self.file, self.rep.lines.get(self.file), self.kind, "kept", v - self["kept"], None, None))
        super().__setitem__(k, v)


class RecordingReport(IngestReport):
    def __init__(self):
        super().__init__()
        self.log: list[Rec] = []

    def _c(self, file, kind):
        f = self.files.setdefault(file, {})
        c = f.get(kind)
        if c is None:
            c = f[kind] = _Count(self, file, kind)
        return c

    def skip(self, file, line, kind, reason, message, field=None):
        err = super().skip(file, line, kind, reason, message, field)
        self.log.append(Rec(file, line, kind, "skipped", 1, reason, str(err)))
        # the line named is the line being read (whole documents: line 1)
        cur = self.lines.get(file)
        assert line == (cur or 1), (line, cur, str(err))
        return err


def run_ingest(paths, **kw):
    """ingest(paths) with a :class:`RecordingReport`; the report must format and serialise."""
    with mock.patch.object(ingest_pkg, "IngestReport", RecordingReport):
        res = ingest([str(p) for p in paths], **kw)
    rep = res.report
    assert isinstance(rep, RecordingReport)
    rep.format()
    json.loads(rep.to_json())
    for name in tables.TABLES:
        check_schema(res[name], name)
    for r in rep.log:
        if r.what == "skipped":
            assert r.reason in REASONS or r.kind == "file", r
            assert r.text.startswith(f"{r.file}:{r.line}: "), r.text
    return res


def _recs(rep, file):
    return [r for r in rep.log if r.file == file]


def _kept(rep, kind, file=None):
    return sum(r.n for r in rep.log if r.what == "kept" and r.kind == kind and (file is None or r.file == file))


# -------------------------------------------------------------------------------------------------
# Oracles: what the documented formats say the records of a file are
# -------------------------------------------------------------------------------------------------
def _nonblank_lines(data: bytes):
    """(line number, raw line) of the non-blank physical lines, as the readers number them."""
    return [(i, raw) for i, raw in enumerate(data.split(b"\n"), 1) if raw.strip()]  # lines end at \n only


def _parse(raw):
    """(parses, value): JSON whose strings are valid Unicode (an unpaired surrogate is not). The
    value is the readers' parse (orjson reads an integer literal beyond 64 bits as a float)."""
    try:
        json.dumps(json.loads(raw), ensure_ascii=False).encode("utf-8")
        ok = True
    except ValueError:  # (UnicodeEncodeError is one)
        ok = False
    try:
        value = ingest_pkg._io._loads(raw)
    except ValueError:
        assert not ok, raw
        return False, None
    assert ok, raw
    return True, value


def _records(data: bytes, upto: int | None = None):
    """(line, ok, parsed) of the JSON-lines records (a file whose first line does not parse but
    which is one JSON document: that document at line 1); ``upto``: the last line read (a
    damaged file is read up to the error)."""
    lines = _nonblank_lines(data)
    if upto is not None:
        return [(i, *_parse(raw)) for i, raw in lines if i <= upto]
    out = [(i, *_parse(raw)) for i, raw in lines]
    if out and not out[0][1]:
        ok, doc = _parse(data)
        if ok:
            return [(1, True, doc)]
    return out


def _take_line(recs, i, lineno):
    """The line's own record, first among the records counted at that line."""
    assert i < len(recs), f"line {lineno} not counted"
    r = recs[i]
    assert r.line == lineno and r.kind == "line" and r.n == 1, (lineno, r)
    return r


def _take_events(recs, i, lineno, names):
    """Consume the event records of a kept span (``names``: the kinds its events are counted
    under, any order); returns the next index."""
    want, got, n = Counter(names), Counter(), 0
    while n < len(names):
        assert i < len(recs) and recs[i].line == lineno, (lineno, names, recs[i : i + 3])
        r = recs[i]
        got[str(r.kind)] += r.n
        n += r.n
        i += 1
    assert got == want, (lineno, got, want)
    return i


def _event_kind(ev):
    return str(ev.get("name")) if isinstance(ev, dict) else "event"


def _span_records(obj):
    """The span-level records of a kept OTLP line, in order: ``None`` for a malformed
    resourceSpans / scopeSpans / span entry, else (scope name, span dict)."""
    out = []
    for r in obj["resourceSpans"]:
        sss = (r.get("scopeSpans") or []) if isinstance(r, dict) else None
        if not isinstance(sss, list):
            out.append(None)
            continue
        for ss in sss:
            sc = (ss.get("scope") or {}) if isinstance(ss, dict) else None
            spans = (ss.get("spans") or []) if isinstance(ss, dict) else None
            if not isinstance(sc, dict) or not isinstance(spans, list):
                out.append(None)
                continue
            out.extend((sc.get("name"), sp) if isinstance(sp, dict) else None for sp in spans)
    return out


def check_otlp(res, file, data: bytes, upto=None):
    rep = res.report
    recs = _recs(rep, file)
    i = 0
    for lineno, ok, obj in _records(data, upto):
        r = _take_line(recs, i, lineno)
        i += 1
        if not (ok and isinstance(obj, dict) and isinstance(obj.get("resourceSpans"), list)):
            assert r.what == "skipped", (lineno, r)
            continue
        assert r.what == "kept", (lineno, r)
        for sr in _span_records(obj):
            assert i < len(recs) and recs[i].line == lineno, (lineno, sr, recs[i : i + 2])
            s = recs[i]
            i += 1
            if sr is None:
                assert s.what == "skipped" and s.kind in STRUCT_KINDS, s
                continue
            scope, span = sr
            if s.what == "skipped":
                name = span.get("name", "?")
                assert s.kind == (name if isinstance(name, str) else "span"), (s, name)
                continue
            assert s.kind in SPAN_KEEP_KINDS, s
            evs = span.get("events") or []
            assert isinstance(evs, list), f"line {lineno}: span kept with events {evs!r:.60}"
            if scope == "vllm.llm_engine":  # upstream span: one requests row, its events unused
                continue
            i = _take_events(recs, i, lineno, [_event_kind(e) for e in evs])
    assert i == len(recs), recs[i:]
    # the kept records are the rows
    assert len(res["steps"]) == _kept(rep, "step.BATCH_SUMMARY")
    assert len(res["step_requests"]) == _kept(rep, "step.REQUEST_SNAPSHOT")
    assert len(res["request_events"]) == _kept(rep, "journey.SCHEDULED") + _kept(rep, "journey.PREEMPTED")
    q = res["requests"]
    journey = q[q.source == "journey"]
    m = [
        re.match(r"journey join: (\d+) joined \(\d+ by request-id prefix\), (\d+) core-only, (\d+) api-only", n)
        for n in rep.notes
    ]
    m = [x for x in m if x]
    joined, core_only, api_only = map(int, m[0].groups()) if m else (0, 0, 0)
    n_core = _kept(rep, "llm_core")
    n_up = int((q.source == "upstream").sum())
    assert n_core == joined + core_only
    assert _kept(rep, "llm_request") == joined + api_only + n_up  # api spans + upstream spans
    assert len(journey) == joined + core_only + api_only


def _kv_ok_line(obj):
    return isinstance(obj, list) and len(obj) >= 2 and isinstance(obj[1], list)


def check_kv(res, file, data: bytes, upto=None):
    rep = res.report
    recs = _recs(rep, file)
    i = 0
    for lineno, ok, obj in _records(data, upto):
        r = _take_line(recs, i, lineno)
        i += 1
        if r.what == "skipped":
            continue
        assert ok and _kv_ok_line(obj), (lineno, r)
        kinds = [ev[0] if isinstance(ev, list) and ev and isinstance(ev[0], str) and ev[0] else "event" for ev in obj[1]]
        for k in kinds:  # one record per event, in order
            assert i < len(recs) and recs[i].line == lineno and recs[i].kind == k and recs[i].n == 1, (lineno, k, recs[i : i + 2])
            i += 1
    assert i == len(recs), recs[i:]
    assert int(res["kv_steps"]["n_events"].sum()) == sum(r.n for r in recs if r.what == "kept" and r.kind != "line")


def check_replay(res, file, gt_file=None):
    rep = res.report
    recs = _recs(rep, file)
    rows = res["requests"][res["requests"].source == "inference_perf"]
    assert rows["request_id"].is_unique  # a request is one row (never duplicated by its ground truth)
    if [r.kind for r in recs] == ["file"]:  # the replay file does not parse: so is its ground truth skipped
        assert len(rows) == 0
        if gt_file:
            assert [(r.kind, r.what) for r in _recs(rep, gt_file)] == [("file", "skipped")]
        return
    doc = _parse(_read(file))[1]
    reqs = doc.get("requests")
    if not isinstance(reqs, list):
        assert [(r.kind, r.what) for r in recs] == [("line", "skipped")], recs
        assert len(rows) == 0
    else:
        assert all(r.kind == "request" and r.line == 1 for r in recs), recs
        kept = sum(r.n for r in recs if r.what == "kept")
        assert kept + sum(r.n for r in recs if r.what == "skipped") == len(reqs)
        assert len(rows) == kept
    if gt_file:  # each entry merged into a row or skipped; or the file as a whole skipped
        g = _recs(rep, gt_file)
        if [r.kind for r in g] in (["file"], ["line"]):
            assert g[0].what == "skipped"
            assert rows.ttft_ms.isna().all() and rows.e2e_ms.isna().all()
            return
        gt = _parse(_read(gt_file))[1]
        assert all(r.kind == "request" and r.line == 1 for r in g), g
        kept_gt = sum(r.n for r in g if r.what == "kept")
        assert kept_gt + sum(r.n for r in g if r.what == "skipped") == len(gt)
        assert kept_gt <= len(rows)


def _read(path) -> bytes:
    with ingest_pkg._io.open_binary(path) as f:
        return f.read()


def check_file(res, path, data: bytes | None = None):
    """Dispatch on the kind ingest detected; ``data``: the file's (gunzipped) bytes."""
    rep, file = res.report, str(path)
    assert file in rep.files or any(e.startswith(file) for e in rep.errors), file
    kind = rep.file_kind.get(file)
    recs = _recs(rep, file)
    if any(e.startswith(f"{file}: ") for e in rep.errors):  # unreadable (a cut or damaged gzip stream)
        if kind == "otlp":  # the lines read before the error: accounted for as in a whole file
            check_otlp(res, file, data, upto=rep.lines.get(file, 0))
        elif kind == "kv_events":
            check_kv(res, file, data, upto=rep.lines.get(file, 0))
        else:
            assert not recs, recs
        return
    if kind in ("unknown", "lifecycle") or (kind == "ground_truth" and [r.kind for r in recs] == ["file"]):
        assert [(r.kind, r.line, r.n) for r in recs] in ([("file", 1, 1)], [("aggregate", None, 1)]), recs
        return
    if data is None:
        data = _read(path)
    if kind == "otlp":
        check_otlp(res, file, data)
    elif kind == "kv_events":
        check_kv(res, file, data)
    elif kind == "replay":
        check_replay(res, file)
    else:
        raise AssertionError(f"unexpected kind {kind} of {file}")


# -------------------------------------------------------------------------------------------------
# Valid base records
# -------------------------------------------------------------------------------------------------
def _synth_lines():
    req, steps = _run(n=3, rate=50.0, seed=1)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "t.jsonl"
        write_trace(p, req, steps, sample=0.5, seed=1)
        lines = p.read_text().splitlines()
    # the journey lines and two step lines (each step line: 8 sampled steps with their snapshots)
    journey = [ln for ln in lines if '"vllm.scheduler.step"' not in ln]
    return journey + [ln for ln in lines if '"vllm.scheduler.step"' in ln][:2]


def _upstream_line(i=0):
    def a(k, v):
        return {"key": k, "value": v}

    span = {
        "traceId": "t",
        "spanId": f"u{i}",
        "name": "llm_request",
        "kind": 2,
        "startTimeUnixNano": "1769021450278127360",
        "endTimeUnixNano": "1769021453844260888",
        "attributes": [
            a("gen_ai.latency.time_to_first_token", {"doubleValue": 0.27}),
            a("gen_ai.latency.e2e", {"doubleValue": 3.56}),
            a("gen_ai.latency.time_in_queue", {"doubleValue": 1.9e-05}),
            a("gen_ai.usage.prompt_tokens", {"intValue": "1527"}),
            a("gen_ai.usage.completion_tokens", {"intValue": "500"}),
            a("gen_ai.request.id", {"stringValue": f"cmpl-u{i}-0"}),
            a("gen_ai.request.max_tokens", {"intValue": "500"}),
        ],
        "status": {},
    }
    return json.dumps(
        {
            "resourceSpans": [
                {"resource": {"attributes": []}, "scopeSpans": [{"scope": {"name": "vllm.llm_engine"}, "spans": [span]}]}
            ]
        }
    )


_FIX_J = (TR / "journey.jsonl").read_text().splitlines()
_FIX_S = (TR / "steps.jsonl").read_text().splitlines()
# fixtures: api + core of reqA (preempted, resumed), api of reqB (prefix join), steps 20..23
OTLP_BASE = _synth_lines() + _FIX_J[:3] + _FIX_S[:1] + [_upstream_line()]
# an api span without spanId and a core span without parentSpanId (request-id prefix join)
_noid = json.loads(_FIX_J[0])
del _noid["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["spanId"]
_noparent = json.loads(_FIX_J[1])
del _noparent["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["parentSpanId"]
OTLP_BASE += [json.dumps(_noid), json.dumps(_noparent)]

KV_BASE = [
    '[100.0, [["BlockStored", [11, 12, 13], null, [0, 1, 2], 16, null, "GPU", null], ["TransferInitiated", "t1", "reqA", "GPU", "CPU", 3, 5]], 0, 5]',
    '[100.1, [["TransferCompleted", "t1", "reqA", "GPU", "CPU", 3, true, 6]], 0, 6]',
    '[100.2, [["BlockRemoved", [11], "GPU"], ["CacheEviction", "CPU", 2, "lru", 7, null], ["AllBlocksCleared"]], 0, 7]',
    '[100.3, [["TransferCompleted", "t2", "reqB", "CPU", "GPU", 4, true, 8], ["CacheLoadCommitted", "reqB", "CPU", 4, 8], ["CacheStoreCommitted", "reqB", "CPU", 2, 8]], 0, 8]',
    '[100.4, [["BlockStored", [21], 13, [0], 16, null, null, null], ["TransferInitiated", "t3", "reqC", "CPU", "GPU", 1]], null, null]',
    '[100.5, [["BlockStored", [31, 32], null, [0, 1], 16, null, "DISK", null]]]',
]


def _replay_doc(n=4):
    reqs = [
        {
            "index": i,
            "arrival_time_us": 50_000 * i,
            "input_tokens": 500 + i,
            "output_tokens": 100 - i,
            "prefix_group": "",
            "has_error": i == 2,
        }
        for i in range(n)
    ]
    gt = [
        {"index": i, "has_error": i == 2, "e2e_s": None if i == 2 else 1.5 + i / 10, "ttft_s": None if i == 2 else 0.1 + i / 100}
        for i in range(n)
    ]
    doc = {"experiment": "exp-fuzz", "model_id": "m", "config": {"tp": 1, "block_size": 16}, "model_config": {}, "requests": reqs}
    return doc, gt


LIFECYCLE = {
    "load_summary": {"count": 10, "schedule_delay": {"mean": 0.0004, "p90": 0.001}},
    "successes": {
        "count": 9,
        "latency": {
            "request_latency": {"mean": 2.08, "min": 1.5, "p90": 2.39, "max": 2.6},
            "time_to_first_token": {"mean": 0.1, "p99": 0.3},
        },
    },
    "failures": {"count": 1, "latency": {}},
}


# -------------------------------------------------------------------------------------------------
# Mutations
# -------------------------------------------------------------------------------------------------
HUGE = [2**63, 2**63 - 1, -(2**63) - 1, 2**64, -(2**64), 10**30, -(10**30), 10**400]
ODD_STR = [
    "",
    "abc",
    "-1",
    "1e3",
    "1.5",
    "NaN",
    "99999999999999999999",
    "-9223372036854775809",
    "9223372036854775808",
    "\ud800",
    "\x00",
    "é",
]
TEXT = st.one_of(st.sampled_from(ODD_STR), st.text(max_size=4), st.characters(categories=["Cs"]))  # lone surrogates too
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from(HUGE), st.floats(allow_nan=True, allow_infinity=True), TEXT
)
ATTR_VALUES = st.one_of(
    st.builds(
        lambda v: {"intValue": v},
        st.one_of(st.sampled_from(ODD_STR), st.integers().map(str), st.sampled_from(HUGE).map(str), SCALARS),
    ),
    st.builds(lambda v: {"doubleValue": v}, SCALARS),
    st.builds(lambda v: {"stringValue": v}, SCALARS),
    st.builds(lambda v: {"boolValue": v}, SCALARS),
    st.dictionaries(st.sampled_from(["intValue", "doubleValue", "stringValue", "boolValue", "arrayValue"]), SCALARS, max_size=3),
    SCALARS,
)
WEIRD = st.one_of(SCALARS, ATTR_VALUES, st.just([]), st.just({}), st.lists(SCALARS, max_size=3))


def _paths(obj, path=()):
    yield path
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, path + (i,))


def _get(obj, path):
    for k in path:
        obj = obj[k]
    return obj


@st.composite
def mutated(draw, obj):
    """``obj`` (parsed JSON, copied) after 0-3 structural mutations at random places."""
    obj = copy.deepcopy(obj)
    for _ in range(draw(st.integers(0, 3))):
        paths = list(_paths(obj))[1:]
        if not paths:
            break
        lists = [p for p in paths if isinstance(_get(obj, p), list)]
        op = draw(st.sampled_from(["replace", "replace", "attr", "string", "delete", "dup", "reverse", "swap"]))
        if op == "attr":  # an OTLP attribute value (most of a trace's values)
            vals = [p for p in paths if p and p[-1] == "value" and isinstance(_get(obj, p), dict)]
            if vals:
                p = draw(st.sampled_from(vals))
                _get(obj, p[:-1])["value"] = draw(ATTR_VALUES)
                continue
            op = "replace"
        if op == "string":  # a string value (ids, names, phases, media) -> an odd string
            strs = [p for p in paths if isinstance(_get(obj, p), str)]
            if strs:
                p = draw(st.sampled_from(strs))
                _get(obj, p[:-1])[p[-1]] = draw(TEXT)
                continue
            op = "replace"
        if op in ("reverse", "swap") and lists:
            lst = _get(obj, draw(st.sampled_from(lists)))
            if op == "reverse":
                lst.reverse()
            elif len(lst) > 1:
                a, b = draw(st.integers(0, len(lst) - 1)), draw(st.integers(0, len(lst) - 1))
                lst[a], lst[b] = lst[b], lst[a]
            continue
        p = draw(st.sampled_from(paths))
        parent, key = _get(obj, p[:-1]), p[-1]
        if op == "delete":
            del parent[key]
        elif op == "dup" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(parent[key]))
        else:
            parent[key] = draw(WEIRD)
    return obj


BAD_BYTES = [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\x80", b"\xed\xa0\x80", b"\x00", b"\r", b"\n"]


@st.composite
def raw_mutated(draw, raw: bytes):
    """A raw line after an optional byte-level mutation: cut, non-UTF-8 bytes inserted, a byte
    replaced, or replaced by random bytes."""
    op = draw(st.sampled_from(["none", "none", "none", "cut", "insert", "byte", "random"]))
    if op == "cut":
        return raw[: draw(st.integers(0, len(raw)))]
    if op == "insert":
        k = draw(st.integers(0, len(raw)))
        return raw[:k] + draw(st.sampled_from(BAD_BYTES)) + raw[k:]
    if op == "byte" and raw:
        k = draw(st.integers(0, len(raw) - 1))
        return raw[:k] + bytes([draw(st.integers(0, 255))]) + raw[k + 1 :]
    if op == "random":
        return draw(st.binary(max_size=24))
    return raw


def _dumps(obj) -> bytes:
    # lone surrogates are valid JSON escapes (\ud800): ensure_ascii keeps them escaped
    return json.dumps(obj).encode()


@st.composite
def jsonl_file(draw, base: list[str], max_lines: int = 8):
    """A JSON-lines file of base records (any subset, order, repetition), each mutated; blank
    lines, an unterminated last line and an empty file included."""
    picks = draw(st.lists(st.integers(0, len(base) - 1), max_size=max_lines))
    parsed = [json.loads(b) for b in base]
    lines = []
    for i in picks:
        raw = _dumps(draw(mutated(parsed[i])))
        lines.append(draw(raw_mutated(raw)))
        if draw(st.integers(0, 9)) == 0:
            lines.append(draw(st.sampled_from([b"", b"  ", b"\t"])))
    data = b"\n".join(lines)
    if lines and draw(st.booleans()):
        data += b"\n"
    return data


def _write(path: Path, data: bytes, gz_mode: str) -> bytes:
    """Write ``data`` plain or gzipped (``gz``), gzipped and cut (``gz_cut``) or with a byte of
    the compressed stream changed (``gz_flip``); returns the bytes a reader sees (a reader of a
    damaged stream sees a prefix of them, then an error)."""
    if gz_mode == "plain":
        path.write_bytes(data)
        return data
    z = bytearray(gzip.compress(data, mtime=0))
    if gz_mode == "gz_cut":
        z = z[: max(len(z) * 2 // 3, 2)]
    elif gz_mode == "gz_flip" and len(z) > 20:
        z[len(z) // 2] ^= 0x5A
    path.write_bytes(bytes(z))
    return data


GZ = st.sampled_from(["plain"] * 7 + ["gz", "gz_cut", "gz_flip"])


# -------------------------------------------------------------------------------------------------
# Properties
# -------------------------------------------------------------------------------------------------
@fuzz(250)
@given(data=jsonl_file(OTLP_BASE), gz=GZ)
def test_otlp_every_record_accounted(data, gz):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "trace.jsonl"
        seen = _write(p, data, gz)
        res = run_ingest([p])
        check_file(res, p, seen)


@fuzz(150)
@given(data=jsonl_file(KV_BASE, max_lines=10), gz=GZ)
def test_kv_events_every_record_accounted(data, gz):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "kv_events.jsonl"
        seen = _write(p, data, gz)
        res = run_ingest([p], experiment=None, block_bytes=1000.0)
        check_file(res, p, seen)


@st.composite
def replay_files(draw):
    doc, gt = _replay_doc()
    doc, gt = draw(mutated(doc)), draw(mutated(gt))
    raw, graw = draw(raw_mutated(_dumps(doc))), draw(raw_mutated(_dumps(gt)))
    return raw, graw, draw(st.booleans())


@fuzz(200)
@given(files=replay_files(), gz=GZ)
def test_inference_perf_replay_every_request_accounted(files, gz):
    raw, graw, with_gt = files
    with tempfile.TemporaryDirectory() as d:
        p, g = Path(d) / "exp-fuzz.json", Path(d) / "exp-fuzz_ground_truth.json"
        seen = _write(p, raw, gz)
        paths = [p]
        if with_gt:
            g.write_bytes(graw)
            paths.append(g)
        res = run_ingest(paths)
        kinds = (res.report.file_kind.get(str(p)), res.report.file_kind.get(str(g)))
        if with_gt and kinds == ("replay", "ground_truth"):
            check_replay(res, str(p), str(g))
        else:
            check_file(res, p, seen)
            if with_gt:
                check_file(res, g, graw)


@fuzz(100)
@given(doc=mutated(LIFECYCLE), raw_op=st.booleans())
def test_inference_perf_lifecycle_one_record(doc, raw_op):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "summary_lifecycle_metrics.json"
        raw = json.dumps(doc, indent=1).encode()
        p.write_bytes(raw[: len(raw) // 2] if raw_op else raw)
        res = run_ingest([p])
        check_file(res, p)
        agg = res.report.aggregates.get(str(p))
        if agg is not None:
            json.dumps(agg, allow_nan=True)


@fuzz(150)
@given(data=jsonl_file([_FIX_S[0]] + [ln for ln in _synth_lines() if '"vllm.scheduler.step"' in ln], max_lines=4))
def test_step_fast_paths_match_general_path(data):
    """The step fast paths (bulk span, event by event) give the general path's rows and report
    for any mutated step line."""
    from bayeslat.data.ingest import otlp_steps

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "steps.jsonl"
        p.write_bytes(data)
        fast = ingest([p], workers=0)
        with mock.patch.object(otlp_steps, "_plan", lambda en, keys: False):
            general = ingest([p], workers=0)
    for name in ("steps", "step_requests"):
        pd.testing.assert_frame_equal(fast[name], general[name])
    assert fast.report.to_dict() == general.report.to_dict()


@fuzz(150)
@given(data=st.one_of(jsonl_file(OTLP_BASE, max_lines=4), jsonl_file(KV_BASE, max_lines=4)))
def test_stdlib_json_gives_the_same_result(data):
    """orjson and the stdlib parser (the fallback when orjson is absent) give the same tables and
    report for any input without an integer literal beyond 64 bits (the one difference, see the
    module docstring of bayeslat.data.ingest._io)."""
    from bayeslat.data.ingest import _io, otlp_columns, otlp_parallel

    assume(not _BEYOND_64_BITS.search(data))
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "t.jsonl"
        p.write_bytes(data)
        fast = ingest([p], workers=0)
        with (
            mock.patch.object(_io, "_fast_loads", None),
            mock.patch.object(otlp_columns, "_fast_loads", None),
            mock.patch.object(otlp_parallel, "_fast_loads", None),
        ):
            std = ingest([p], workers=0)
    for name in tables.TABLES:
        pd.testing.assert_frame_equal(fast[name], std[name])
    assert fast.report.to_dict() == std.report.to_dict()


# an unquoted integer literal that may be beyond the 64-bit range (a few in range match too)
_BEYOND_64_BITS = re.compile(rb"[:\[,]\s*(-\d{19}|\d{20})")


def test_empty_and_blank_files(tmp_path):
    paths = []
    for name, data in (("empty.jsonl", b""), ("blank.jsonl", b"\n \n\t\n"), ("empty.json", b""), ("nul.jsonl", b"\x00\x00")):
        p = tmp_path / name
        p.write_bytes(data)
        paths.append(p)
    res = run_ingest(paths)
    for p in paths:
        check_file(res, p)
    assert all(len(res[n]) == 0 for n in tables.TABLES)


# -------------------------------------------------------------------------------------------------
# Regression tests: the cases the fuzzing found, each pinned as a plain test
# -------------------------------------------------------------------------------------------------
API, CORE = _FIX_J[0], _FIX_J[1]  # reqA: api span a1, core span (parent a1) with 6 events
STEPS = _FIX_S[0]  # steps 20, 21, 23 with snapshots of 20 and 21
S0 = 1_000_000_000_000  # the fixtures' monotonic clock origin (ns)


def _span_edit(line: str, edit) -> str:
    d = json.loads(line)
    edit(d["resourceSpans"][0]["scopeSpans"][0]["spans"][0])
    return json.dumps(d)


def _attr(events: list, name: str, key: str, value):
    """Set attribute ``key`` of the first event called ``name`` (the attribute list itself when
    ``key`` is None)."""
    ev = next(e for e in events if e["name"] == name)
    if key is None:
        ev["attributes"] = value
        return
    [a] = [a for a in ev["attributes"] if a["key"] == key]
    a["value"] = value


def _ingest_text(tmp_path, text: str | bytes, name="t.jsonl"):
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else (text + "\n").encode())
    res = ingest([p])
    res.report.format()  # the CLI's summary
    return p, res, res.report.to_dict()["files"][str(p)]["records"]


def test_reexported_api_span_is_a_duplicate(tmp_path):
    # an llm_request span exported twice (same spanId), before and after its core span: each
    # repeat is skipped as a duplicate; it used to be counted as kept and silently ignored
    p, res, recs = _ingest_text(tmp_path, f"{API}\n{API}\n{CORE}\n{API}")
    assert recs["llm_request"] == {"kept": 1, "skipped": 2}
    assert res.report.skipped["duplicate"]["examples"] == [
        f"{p}:2: spanId: duplicate: second llm_request span a1",
        f"{p}:4: spanId: duplicate: second llm_request span a1",
    ]
    assert recs["api.ARRIVED"] == {"kept": 1, "skipped": 0}
    assert list(res["requests"].request_id) == ["reqA"]


@pytest.mark.parametrize(
    "case",
    [
        "attr_without_key",
        "attrs_not_list",
        "event_not_object",
        "finished_bad_output",
        "scheduled_bad_step",
        "double_beyond_float",
    ],
)
def test_bad_journey_event_skips_only_that_event(tmp_path, case):
    # a malformed part of one core event (an attribute entry without a key, an attribute list
    # that is not a list, an event that is not an object, a bad integer the event contributes
    # to the request, a doubleValue integer beyond the float range) skips that event with file,
    # line and field; the span, its other events and the request row are kept. It used to count
    # the span as kept and skipped, drop its later events uncounted and lose the request row.
    def edit(span):
        evs = span["events"]
        if case == "attr_without_key":
            _attr(evs, "journey.FIRST_TOKEN", None, [{"value": {"intValue": "1"}}])
        elif case == "attrs_not_list":
            _attr(evs, "journey.FIRST_TOKEN", None, {"key": "ts.monotonic_ns"})
        elif case == "event_not_object":
            evs.insert(2, 7)
        elif case == "finished_bad_output":
            _attr(evs, "journey.FINISHED", "decode.done_tokens", {"stringValue": "x"})
        elif case == "scheduled_bad_step":
            _attr(evs, "journey.SCHEDULED", "scheduler.step", {"intValue": "99999999999999999999"})
        else:
            _attr(evs, "journey.FIRST_TOKEN", "ts.monotonic", {"doubleValue": 10**400})
            _attr(evs, "journey.FIRST_TOKEN", "ts.monotonic_ns", None)

    core = _span_edit(CORE, edit)
    if case == "double_beyond_float":  # ts.monotonic_ns removed: FIRST_TOKEN has only the huge ts.monotonic
        core = core.replace('{"key": "ts.monotonic_ns", "value": null}, ', "")
    p, res, recs = _ingest_text(tmp_path, API + "\n" + core)
    assert recs["llm_core"] == {"kept": 1, "skipped": 0}
    n_events = {"event_not_object": 7}.get(case, 6)
    ev = {k: v for k, v in recs.items() if k.startswith("journey.") or k == "event"}
    assert sum(v["kept"] for v in ev.values()) == n_events - 1
    assert sum(v["skipped"] for v in ev.values()) == 1
    [(reason, r)] = res.report.skipped.items()
    assert reason == "bad_value" and r["examples"][0].startswith(f"{p}:2: "), r
    field = {
        "finished_bad_output": "decode.done_tokens",
        "scheduled_bad_step": "scheduler.step",
        "double_beyond_float": "ts.monotonic",
        "event_not_object": "events",
    }.get(case, "attributes")
    assert r["examples"][0].startswith(f"{p}:2: {field}: bad_value: "), r
    q = res["requests"]
    assert list(q.request_id) == ["reqA"] and q.queued_ns.iloc[0] == S0 + 2_000_000


@pytest.mark.parametrize("case", ["events_int", "events_dict", "name_int", "name_null", "span_id_list", "api_event_name_list"])
def test_malformed_span_counted_once(tmp_path, case):
    # a span whose events are not a list, whose name or spanId is not a string, or whose event
    # name is unhashable: reported once (span or event), the report formats, nothing else lost.
    # These used to count the span as kept and skipped (or crash report.format() on an int kind).
    line = STEPS
    if case == "events_int":
        line = _span_edit(STEPS, lambda s: s.__setitem__("events", 5))
    elif case == "events_dict":
        line = _span_edit(API, lambda s: s.__setitem__("events", {"name": "api.ARRIVED"}))
    elif case == "name_int":
        line = _span_edit(STEPS, lambda s: s.__setitem__("name", 5))
    elif case == "name_null":
        line = _span_edit(STEPS, lambda s: s.__setitem__("name", None))
    elif case == "span_id_list":
        line = _span_edit(API, lambda s: s.__setitem__("spanId", ["a1"]))
    else:
        line = _span_edit(API, lambda s: s["events"][1].__setitem__("name", ["api.HANDOFF_TO_CORE"]))
    p, res, recs = _ingest_text(tmp_path, line + "\n" + STEPS)
    spans = {k: v for k, v in recs.items() if k in ("span", "llm_request", "scheduler_steps", "scheduler_steps_0")}
    assert all(v["kept"] + v["skipped"] <= 2 for v in spans.values()), recs
    if case == "api_event_name_list":
        assert recs["llm_request"] == {"kept": 1, "skipped": 0}
        assert recs["['api.HANDOFF_TO_CORE']"] == {"kept": 0, "skipped": 1}
        assert res.report.skipped.keys() == {"unknown_event"}
    else:
        kept_spans = sum(v["kept"] for v in spans.values())
        skipped_spans = sum(v["skipped"] for v in spans.values())
        assert (kept_spans, skipped_spans) == (1, 1), recs  # the good STEPS line, the bad span
        [(reason, r)] = res.report.skipped.items()
        field = {"events_int": "events", "events_dict": "events", "span_id_list": "spanId"}.get(case, "name")
        assert reason == "bad_value" and r["examples"][0].startswith(f"{p}:1: {field}: bad_value: "), r
    assert len(res["steps"]) == recs["step.BATCH_SUMMARY"]["kept"]


@pytest.mark.parametrize(
    "line, field",
    [
        ('[1.0, [["AllBlocksCleared"]], true, 5]', "dp_rank"),
        ('[1.0, [["AllBlocksCleared"]], 0, false]', "scheduler_step"),
        ('[1.0, [["AllBlocksCleared"]], 9223372036854775808, 5]', "dp_rank"),
        ('[1.0, [["AllBlocksCleared"]], 0, -9223372036854775809]', "scheduler_step"),
        ('[NaN, [["AllBlocksCleared"]], 0, 5]', "ts"),
        ('[Infinity, [["AllBlocksCleared"]], 0, 5]', "ts"),
        ("[1" + "0" * 400 + ', [["AllBlocksCleared"]], 0, 5]', "ts"),
    ],
)
def test_kv_line_fields_out_of_range_are_bad_values(tmp_path, line, field):
    # a dp_rank / scheduler_step that is a bool or beyond int64, a timestamp that is not a
    # finite float: the line is a bad value of that field. They used to be kept and crash the
    # ingest when the kv_steps rows were converted (bool, huge) or give a NaN/inf timestamp.
    good = '[2.0, [["AllBlocksCleared"]], 0, 6]'
    p, res, recs = _ingest_text(tmp_path, line + "\n" + good, "kv_events.jsonl")
    assert recs["line"] == {"kept": 1, "skipped": 1}
    assert res.report.skipped["bad_value"]["examples"][0].startswith(f"{p}:1: {field}: bad_value: ")
    assert list(res["kv_steps"].step) == [6] and res["kv_steps"].ts_first.tolist() == [2.0]


@pytest.mark.parametrize(
    "event, reason",
    [
        ('["CacheEviction", "CPU", 2, "lru", 1e30, null]', "bad_value"),  # step beyond int64 (a float)
        ('["CacheStoreCommitted", "r", "CPU", 1e19, 8]', "bad_value"),  # nblocks beyond int64
        ('["TransferInitiated", ["t1"], "reqA", "GPU", "CPU", 3, 5]', "bad_value"),  # transfer id not a scalar
    ],
)
def test_kv_event_values_out_of_range_are_bad_values(tmp_path, event, reason):
    # an event step given as an integral float beyond int64 used to pass (and crash the ingest);
    # a transfer id that is a list was reported as a missing field
    p, res, recs = _ingest_text(tmp_path, f'[1.0, [{event}, ["AllBlocksCleared"]], 0, 5]', "kv_events.jsonl")
    assert res.report.skipped.keys() == {reason}
    assert res.report.skipped[reason]["examples"][0].startswith(f"{p}:1: {reason}: ")
    assert recs["AllBlocksCleared"] == {"kept": 1, "skipped": 0}
    assert res["kv_steps"].n_events.tolist() == [1]


def _replay_pair(tmp_path, doc, gt):
    """ingest a replay file (exp-fuzz.json) and its ground truth: (result, the records of each)."""
    p, g = tmp_path / "exp-fuzz.json", tmp_path / "exp-fuzz_ground_truth.json"
    p.write_bytes(doc if isinstance(doc, bytes) else json.dumps(doc).encode())
    g.write_bytes(gt if isinstance(gt, bytes) else json.dumps(gt).encode())
    res = ingest([p, g])
    res.report.format()
    f = res.report.to_dict()["files"]
    return res, f.get(str(p), {}).get("records", {}), f.get(str(g), {}).get("records", {})


def test_replay_with_an_unreadable_ground_truth_keeps_its_requests(tmp_path):
    # a ground-truth file that is not JSON is skipped as a file; the requests stay rows (NaN
    # latencies). It used to count the requests as kept and then skip the replay file as a whole.
    doc, _ = _replay_doc()
    res, rp, rg = _replay_pair(tmp_path, doc, b"[{")
    assert rp == {"request": {"kept": 4, "skipped": 0}} and rg == {"file": {"kept": 0, "skipped": 1}}
    q = res["requests"]
    assert list(q.request_id) == ["0", "1", "2", "3"] and q.e2e_ms.isna().all()


@pytest.mark.parametrize("doc", [b'{"experiment"', {"experiment": "x", "requests": [None]}, {"experiment": "x"}])
def test_ground_truth_of_a_replay_without_requests_is_reported(tmp_path, doc):
    # the replay file does not parse, has no usable request or no requests list: its ground
    # truth is still accounted for (it used to get no record at all, or crash with KeyError)
    _, gt = _replay_doc()
    res, rp, rg = _replay_pair(tmp_path, doc, gt)
    assert sum(c["skipped"] for c in rg.values()) in (1, len(gt)) and not any(c["kept"] for c in rg.values()), rg
    assert len(res["requests"]) == 0
    assert sum(c["skipped"] for c in rp.values()) >= 1


@pytest.mark.parametrize(
    "field, value, reason",
    [
        ("arrival_time_us", "abc", "bad_value"),
        ("index", [1], "bad_value"),
        ("input_tokens", 10**30, "bad_value"),
        ("output_tokens", 1.5, "bad_value"),
        ("arrival_time_us", 2**62, "bad_value"),  # x 1000 overflows the ns column
        ("has_error", "no", "bad_value"),
        ("index", 0, "duplicate"),
    ],
)
def test_replay_bad_request_skips_only_that_request(tmp_path, field, value, reason):
    # one request with a mistyped / out-of-range field or a repeated index: that request is
    # skipped with its field; the others are rows. These used to skip the whole file after
    # counting its requests, keep a garbage integer, or give two rows for one index.
    doc, gt = _replay_doc()
    doc["requests"][1][field] = value
    res, rp, rg = _replay_pair(tmp_path, doc, gt)
    assert rp == {"request": {"kept": 3, "skipped": 1}}
    assert res.report.skipped[reason]["examples"][0].startswith(f"{tmp_path / 'exp-fuzz.json'}:1: {field}: {reason}: requests[1]")
    q = res["requests"]
    assert len(q) == 3 and q.request_id.is_unique
    assert q.input_tokens.max() < 1000 and q.arrival_ns.max() < 10**12
    assert rg["request"]["kept"] + rg["request"]["skipped"] == len(gt)


def test_ground_truth_entries_each_accounted(tmp_path):
    # a repeated ground-truth index used to duplicate the request's row; an entry for no
    # request was counted as kept; an e2e beyond the ns range crashed the ingest
    doc, gt = _replay_doc()
    gt += [dict(gt[0], e2e_s=9.0), {"index": 99, "e2e_s": 1.0}, {"e2e_s": 1.0}, "x"]
    gt[3]["e2e_s"] = 1e12
    res, _, rg = _replay_pair(tmp_path, doc, gt)
    assert rg == {"request": {"kept": 3, "skipped": 5}}
    assert {k: v["count"] for k, v in res.report.skipped.items()} == {
        "duplicate": 1,
        "unknown_record": 1,
        "missing_attribute": 1,
        "bad_value": 2,
    }
    q = res["requests"].set_index("request_id")
    assert len(q) == 4 and q.e2e_ms["0"] == 1500.0 and np.isnan(q.e2e_ms["3"])


@pytest.mark.parametrize(
    "doc, field",
    [
        ({"successes": [1]}, "successes"),
        ({"successes": {"latency": 5}}, "successes.latency"),
        ({"failures": "x", "successes": {}}, "failures"),
        ({"successes": {"latency": {"request_latency": {"mean": 10**400}}}}, "successes.latency.request_latency.mean"),
    ],
)
def test_lifecycle_of_the_wrong_layout_is_a_skipped_file(tmp_path, doc, field):
    # a lifecycle document whose parts are not objects, or whose statistic is a number beyond
    # the float range: the file is skipped as a bad value of that field (it used to crash with
    # AttributeError / OverflowError)
    p = tmp_path / "summary_lifecycle_metrics.json"
    p.write_text(json.dumps(doc))
    res = ingest([p])
    assert res.report.to_dict()["files"][str(p)]["records"] == {"file": {"kept": 0, "skipped": 1}}
    assert res.report.skipped["bad_value"]["examples"] == [res.report.skipped["bad_value"]["examples"][0]] and res.report.skipped[
        "bad_value"
    ]["examples"][0].startswith(f"{p}:1: {field}: bad_value: ")


@pytest.mark.parametrize("damage", ["cut", "bad_block"])
def test_damaged_gzip_trace_is_unreadable_not_a_crash(tmp_path, damage):
    # a gzip stream that is cut, or whose second member has an invalid deflate block: the file
    # is reported unreadable (the bad block used to escape as zlib.error); the lines read before
    # the damage stay accounted for, their step rows included (a cut file used to count its
    # steps as kept and write none of them)
    lines = [
        STEPS.replace('"scheduler_steps_0"', f'"scheduler_steps_{i}"').replace('"intValue": "2', f'"intValue": "{i}2')
        for i in range(1, 700)
    ]
    # two gzip members; the first longer than the read buffer (1 MiB), so lines are read before the second
    text = [("\n".join(lines[:600]) + "\n").encode(), ("\n".join(lines[600:]) + "\n").encode()]
    if damage == "cut":
        z = gzip.compress(b"".join(text), mtime=0)
        z = z[: len(z) * 2 // 3]
    else:
        second = bytearray(gzip.compress(text[1], mtime=0))
        second[10] |= 0b110  # BTYPE 11 of the first deflate block: reserved, invalid
        z = gzip.compress(text[0], mtime=0) + bytes(second)
    p = tmp_path / "steps.jsonl.gz"
    p.write_bytes(z)
    res = ingest([p])
    rep = res.report
    assert not rep.ok and len(rep.errors) == 1 and rep.errors[0].startswith(f"{p}: unreadable: ")
    recs = rep.to_dict()["files"][str(p)]["records"]
    assert recs["line"] == {"kept": rep.lines[str(p)], "skipped": 0} and 0 < rep.lines[str(p)] < len(lines)
    if damage == "bad_block":  # (the lines of the buffer being filled when the error came are lost)
        assert rep.lines[str(p)] <= 600
    assert len(res["steps"]) == recs["step.BATCH_SUMMARY"]["kept"] == 3 * recs["line"]["kept"]


def test_kv_step_count_beyond_int64_is_a_bad_value(tmp_path):
    # two events of one step whose block counts add up beyond int64: the second is a bad value
    # (the sum used to crash the ingest when the kv_steps rows were converted)
    line = '[1.0, [["CacheStoreCommitted", "r", "CPU", 9223372036854775807, 8], ["CacheStoreCommitted", "r", "CPU", 5, 8]], 0, 8]'
    p, res, recs = _ingest_text(tmp_path, line, "kv_events.jsonl")
    assert recs["CacheStoreCommitted"] == {"kept": 1, "skipped": 1}
    assert res.report.skipped["bad_value"]["examples"] == [
        f"{p}:1: bad_value: store_committed_blocks of step 8 exceeds the int64 range with 5 more"
    ]
    assert res["kv_steps"].store_committed_blocks.tolist() == [2**63 - 1] and res["kv_steps"].n_events.tolist() == [1]


@pytest.mark.parametrize("raw", [b'"\\ud800x"', b'"\\udfff"', b'"\xed\xa0\x80"'])
def test_unpaired_surrogate_is_an_invalid_line(tmp_path, raw):
    # a string with an unpaired surrogate (escaped, or as CESU-8 bytes) is not valid Unicode:
    # its line is invalid JSON with either parser, as for invalid UTF-8 bytes (it used to be read
    # by the stdlib fallback and crash the ingest when the request id was written to a table)
    api = API.replace('{"stringValue":"reqA"}', '{"stringValue":' + raw.decode("latin-1") + "}")
    assert api != API
    data = api.encode("latin-1") + b"\n" + CORE.encode() + b"\n"
    p = tmp_path / "t.jsonl"
    p.write_bytes(data)
    for fast in (True, False):
        from bayeslat.data.ingest import _io

        with mock.patch.object(_io, "_fast_loads", _io._fast_loads if fast else None):
            res = ingest([p])
        assert res.report.to_dict()["files"][str(p)]["records"]["line"] == {"kept": 1, "skipped": 1}
        assert res.report.skipped["invalid_json"]["examples"] == [
            f"{p}:1: invalid_json: a string holds an unpaired surrogate (\\ud800-\\udfff): not valid Unicode text"
        ]
        assert list(res["requests"].request_id) == ["reqA-0-abc"]  # the core span, unjoined


@pytest.mark.parametrize("value", [{"stringValue": 2**63}, {"arrayValue": 2**64 - 1}])
def test_integer_beyond_int64_in_any_value_form_is_a_bad_value(tmp_path, value):
    # a JSON integer outside int64 given as a stringValue (or another value form) of an integer
    # step attribute used to pass as an int and crash the ingest when the rows were converted
    def edit(span):
        _attr(span["events"], "step.BATCH_SUMMARY", "step.duration_us", value)

    p, res, recs = _ingest_text(tmp_path, _span_edit(STEPS, edit))
    assert recs["step.BATCH_SUMMARY"] == {"kept": 2, "skipped": 1}
    [ex] = res.report.skipped["bad_value"]["examples"]
    assert ex.startswith(f"{p}:1: step.duration_us: bad_value: ") and ex.endswith("is outside the int64 range")
    assert list(res["steps"]["step.id"]) == [21, 23]
