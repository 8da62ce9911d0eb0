"""Streaming parser of vLLM's KV event stream (``kv_events.jsonl``) -> ``kv_steps``.

Each line is ``[ts, [events...], dp_rank, scheduler_step]`` (``dp_rank`` and
``scheduler_step`` may be absent or null -> null). Events are positional arrays; assumed layouts
(trailing fields beyond those listed are ignored, missing trailing optional fields are null):

- ``["BlockStored", block_hashes, parent_hash, token_ids, block_size, lora_id, medium, lora_name]``
  -> ``len(block_hashes)`` blocks stored on ``medium`` (null medium = GPU, as older vLLM omits it)
- ``["BlockRemoved", block_hashes, medium]`` -> blocks removed
- ``["AllBlocksCleared"]`` -> counted as an event only
- ``["TransferInitiated", id, req, src, dst, nblocks, step]``
- ``["TransferCompleted", id, req, src, dst, nblocks, success, step]``: ``success`` absent ->
  true; successful GPU->CPU = offloaded, CPU->GPU = loaded (media compared case-insensitively).
- ``["CacheStoreCommitted" | "CacheLoadCommitted", req, medium, nblocks, step]``
- ``["CacheEviction", medium, n, reason, step, extra]``

Values: a line whose ``ts`` is not a finite number or whose ``dp_rank`` / ``scheduler_step`` is
not null or an integer in the int64 range is skipped (``bad_value`` of that field; a negative ``ts``:
``negative_timestamp``); an event whose block count or step is not a non-negative int64 integer
(an integral float is taken), whose transfer id is not a string or number, or that would take a
count of its step beyond the int64 range, likewise.

Transfers repeat in the stream: the first ``(kind, transfer id)`` of a run is kept, later ones are
skipped as ``duplicate``. An event is attributed to its own ``step`` field when it has one, else
to the line's ``scheduler_step``. Bytes = blocks x ``block_bytes`` (NaN when unknown). The
per-step aggregate is O(steps with KV events) in memory.
"""

from __future__ import annotations

import math
from pathlib import Path

from . import tables as T
from ._io import iter_json_records
from .report import IngestReport

COUNTERS = [
    "n_events",
    "blocks_stored_gpu",
    "blocks_stored_cpu",
    "blocks_stored_other",
    "blocks_removed_gpu",
    "blocks_removed_cpu",
    "blocks_removed_other",
    "transfers_initiated",
    "transfers_failed",
    "blocks_offloaded",
    "blocks_loaded",
    "store_committed_blocks",
    "load_committed_blocks",
    "evictions",
    "blocks_evicted",
]
_I = {c: i for i, c in enumerate(COUNTERS)}
_C = {c: 2 + i for c, i in _I.items()}  # position of a counter in an aggregate row [ts_first, ts_last, counters...]
_I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1
KNOWN = {
    "BlockStored",
    "BlockRemoved",
    "AllBlocksCleared",
    "TransferInitiated",
    "TransferCompleted",
    "CacheStoreCommitted",
    "CacheLoadCommitted",
    "CacheEviction",
}


class _Bad(Exception):
    def __init__(self, reason, message):
        super().__init__(message)
        self.reason, self.message = reason, message


def _medium(m) -> str:
    if m is None:
        return "gpu"
    m = str(m).lower()
    return m if m in ("gpu", "cpu") else "other"


def _nint(v, what):
    if isinstance(v, bool) or not isinstance(v, int):
        if not (isinstance(v, float) and v.is_integer()):
            raise _Bad("bad_value", f"{what}={v!r} is not an integer")
        v = int(v)
    if v < 0:
        raise _Bad("bad_value", f"{what}={v} is negative")
    if v >= 2**63:
        raise _Bad("bad_value", f"{what}={v} is out of the int64 range")
    return v


def _seconds(v) -> float:
    """A line's timestamp as the float64 of the tables' ts columns; NaN when it is not a number
    (or an integer beyond the float range)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return math.nan
    try:
        return float(v)
    except OverflowError:
        return math.nan


def _line_int(v) -> bool:
    """``dp_rank`` / ``scheduler_step`` of a line: null or an integer in the int64 range."""
    return v is None or type(v) is int and _I64_MIN <= v <= I64_MAX


def _opt_step(ev, i):
    if len(ev) > i and ev[i] is not None:
        return _nint(ev[i], "step")
    return None


class KvState:
    def __init__(self, report: IngestReport):
        self.report = report
        self.agg: dict = {}  # (run, dp_rank, step) -> [ts_first, ts_last, counters...]
        self.seen: set = set()  # (run, kind, transfer id)

    def parse_file(self, path: str | Path, run: str, file: str | None = None) -> None:
        rep = self.report
        file = file or str(path)
        rep.file_kind[file] = "kv_events"
        for lineno, obj in iter_json_records(path, rep, file):
            if not isinstance(obj, list) or len(obj) < 2 or not isinstance(obj[1], list):
                rep.skip(file, lineno, "line", "unknown_record", "not [ts, [events...], dp_rank, scheduler_step]")
                continue
            ts = obj[0]
            if type(ts) is not float:
                ts = _seconds(ts)
            if not math.isfinite(ts):
                rep.skip(file, lineno, "line", "bad_value", f"timestamp {obj[0]!r:.40} is not a finite number", "ts")
                continue
            if ts < 0:
                rep.skip(file, lineno, "line", "negative_timestamp", f"timestamp {ts}", "ts")
                continue
            dp = obj[2] if len(obj) > 2 else None
            lstep = obj[3] if len(obj) > 3 else None
            if not (
                (dp is None or type(dp) is int and _I64_MIN <= dp <= I64_MAX)
                and (lstep is None or type(lstep) is int and _I64_MIN <= lstep <= I64_MAX)
            ):
                rep.skip(
                    file,
                    lineno,
                    "line",
                    "bad_value",
                    f"dp_rank={dp!r:.40} / scheduler_step={lstep!r:.40} are not null or integers in the int64 range",
                    "scheduler_step" if _line_int(dp) else "dp_rank",
                )
                continue
            rep.keep(file, "line")
            for ev in obj[1]:
                name = ev[0] if isinstance(ev, list) and ev and isinstance(ev[0], str) else None
                kind = name or "event"
                try:
                    if name is None:
                        raise _Bad("unknown_record", f"event {str(ev)[:80]} is not a positional array")
                    if name not in KNOWN:
                        raise _Bad("unknown_event", f"KV event {name!r}")
                    self._event(ev, name, run, dp, lstep, ts)
                    rep.keep(file, name)
                except _Bad as b:
                    rep.skip(file, lineno, kind, b.reason, b.message)
                except (IndexError, TypeError) as e:
                    rep.skip(file, lineno, kind, "missing_attribute", f"{name}: too few fields ({len(ev)}): {e}")

    def _event(self, ev, name, run, dp, lstep, ts):
        """Count one event in the row of its (run, dp_rank, step); :class:`_Bad`, with nothing
        counted, when a field is invalid or a count of the row would leave the int64 range."""
        step, inc, seen = None, [], None  # inc: (counter, amount)
        if name in ("BlockStored", "BlockRemoved"):
            if not isinstance(ev[1], list):
                raise _Bad("bad_value", f"{name} block_hashes {ev[1]!r:.40} is not a list")
            i, what = (6, "blocks_stored_") if name == "BlockStored" else (2, "blocks_removed_")
            inc.append((_C[what + _medium(ev[i] if len(ev) > i else None)], len(ev[1])))
        elif name in ("TransferInitiated", "TransferCompleted"):
            tid, src, dst, nb = ev[1], ev[3], ev[4], _nint(ev[5], "nblocks")
            if not isinstance(tid, (str, int, float)):  # null, a list, ...: no transfer to de-duplicate on
                raise _Bad("bad_value", f"{name} transfer id {tid!r:.40} is not a string or number")
            seen = (run, name, tid)
            if seen in self.seen:
                raise _Bad("duplicate", f"{name} of transfer {tid} repeated")
            if name == "TransferInitiated":
                step = _opt_step(ev, 6)
                inc.append((_C["transfers_initiated"], 1))
            else:
                ok = bool(ev[6]) if len(ev) > 6 and ev[6] is not None else True
                step = _opt_step(ev, 7)
                s, d = _medium(src), _medium(dst)
                if not ok:
                    inc.append((_C["transfers_failed"], 1))
                elif s == "gpu" and d == "cpu":
                    inc.append((_C["blocks_offloaded"], nb))
                elif s == "cpu" and d == "gpu":
                    inc.append((_C["blocks_loaded"], nb))
        elif name in ("CacheStoreCommitted", "CacheLoadCommitted"):
            nb = _nint(ev[3], "nblocks")
            step = _opt_step(ev, 4)
            inc.append((_C["store_committed_blocks" if name == "CacheStoreCommitted" else "load_committed_blocks"], nb))
        elif name == "CacheEviction":
            n = _nint(ev[2], "n")
            step = _opt_step(ev, 4)
            inc += [(_C["evictions"], 1), (_C["blocks_evicted"], n)]
        key = (run, dp, step if step is not None else lstep)
        r = self.agg.get(key)
        if r is None:
            r = self.agg[key] = [ts, ts] + [0] * len(COUNTERS)
        else:
            for i, n in inc:
                if r[i] + n > I64_MAX:
                    raise _Bad("bad_value", f"{COUNTERS[i - 2]} of step {key[2]} exceeds the int64 range with {n} more")
            if ts < r[0]:
                r[0] = ts
            elif ts > r[1]:
                r[1] = ts
        for i, n in inc:
            r[i] += n
        r[_C["n_events"]] += 1
        if seen is not None:
            self.seen.add(seen)

    def finish(self, sink: T.TableSink, block_bytes: dict | float | None = None) -> None:
        """Emit one kv_steps row per (run, dp_rank, step), sorted. ``block_bytes``: bytes of one
        KV block (a number, or a dict run -> number)."""

        def keyf(k):
            return (k[0], -1 if k[1] is None else k[1], -1 if k[2] is None else k[2])

        for key in sorted(self.agg, key=keyf):
            r = self.agg[key]
            bb = block_bytes.get(key[0]) if isinstance(block_bytes, dict) else block_bytes
            c = dict(zip(COUNTERS, r[2:]))
            off = c["blocks_offloaded"] * bb if bb else None
            ld = c["blocks_loaded"] * bb if bb else None
            sink.append(
                (
                    key[0],
                    key[1],
                    key[2],
                    r[0],
                    r[1],
                    *r[2 : 2 + _I["blocks_loaded"] + 1],
                    off,
                    ld,
                    *r[2 + _I["store_committed_blocks"] :],
                )
            )
        self.agg = {}
