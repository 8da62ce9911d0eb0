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

Transfers repeat in the stream: the first ``(kind, transfer id)`` of a run is kept, later ones are
skipped as ``duplicate``. An event is attributed to its own ``step`` field when it has one, else
to the line's ``scheduler_step``. Bytes = blocks x ``block_bytes`` (NaN when unknown). The
per-step aggregate is O(steps with KV events) in memory.
"""
from __future__ import annotations

from pathlib import Path

from . import tables as T
from ._io import iter_json_records
from .report import IngestReport

COUNTERS = ["n_events", "blocks_stored_gpu", "blocks_stored_cpu", "blocks_stored_other", "blocks_removed_gpu",
            "blocks_removed_cpu", "blocks_removed_other", "transfers_initiated", "transfers_failed", "blocks_offloaded",
            "blocks_loaded", "store_committed_blocks", "load_committed_blocks", "evictions", "blocks_evicted"]
_I = {c: i for i, c in enumerate(COUNTERS)}
KNOWN = {"BlockStored", "BlockRemoved", "AllBlocksCleared", "TransferInitiated", "TransferCompleted",
         "CacheStoreCommitted", "CacheLoadCommitted", "CacheEviction"}


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
        if isinstance(v, float) and v.is_integer():
            return int(v)
        raise _Bad("bad_value", f"{what}={v!r} is not an integer")
    if v < 0:
        raise _Bad("bad_value", f"{what}={v} is negative")
    if v >= 2 ** 63:
        raise _Bad("bad_value", f"{what}={v} is out of the int64 range")
    return v


def _opt_step(ev, i):
    if len(ev) > i and ev[i] is not None:
        return _nint(ev[i], "step")
    return None


class KvState:
    def __init__(self, report: IngestReport):
        self.report = report
        self.agg: dict = {}     # (run, dp_rank, step) -> [ts_first, ts_last, counters...]
        self.seen: set = set()  # (run, kind, transfer id)

    def _row(self, key, ts):
        r = self.agg.get(key)
        if r is None:
            r = self.agg[key] = [ts, ts] + [0] * len(COUNTERS)
        else:
            if ts is not None:
                r[0] = ts if r[0] is None else min(r[0], ts)
                r[1] = ts if r[1] is None else max(r[1], ts)
        return r

    def parse_file(self, path: str | Path, run: str, file: str | None = None) -> None:
        rep = self.report
        file = file or str(path)
        rep.file_kind[file] = "kv_events"
        for lineno, obj in iter_json_records(path, rep, file):
            if not isinstance(obj, list) or len(obj) < 2 or not isinstance(obj[1], list):
                rep.skip(file, lineno, "line", "unknown_record", "not [ts, [events...], dp_rank, scheduler_step]")
                continue
            ts = obj[0]
            if not isinstance(ts, (int, float)) or isinstance(ts, bool):
                rep.skip(file, lineno, "line", "bad_value", f"timestamp {ts!r} is not a number")
                continue
            if ts < 0:
                rep.skip(file, lineno, "line", "negative_timestamp", f"timestamp {ts}")
                continue
            dp = obj[2] if len(obj) > 2 else None
            lstep = obj[3] if len(obj) > 3 else None
            if dp is not None and not isinstance(dp, int) or lstep is not None and not isinstance(lstep, int):
                rep.skip(file, lineno, "line", "bad_value", f"dp_rank={dp!r} / scheduler_step={lstep!r} not integers")
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
        if name == "BlockStored":
            if not isinstance(ev[1], list):
                raise _Bad("bad_value", f"BlockStored block_hashes {ev[1]!r} is not a list")
            r = self._row((run, dp, lstep), ts)
            r[2 + _I["blocks_stored_" + _medium(ev[6] if len(ev) > 6 else None)]] += len(ev[1])
        elif name == "BlockRemoved":
            if not isinstance(ev[1], list):
                raise _Bad("bad_value", f"BlockRemoved block_hashes {ev[1]!r} is not a list")
            r = self._row((run, dp, lstep), ts)
            r[2 + _I["blocks_removed_" + _medium(ev[2] if len(ev) > 2 else None)]] += len(ev[1])
        elif name == "AllBlocksCleared":
            r = self._row((run, dp, lstep), ts)
        elif name in ("TransferInitiated", "TransferCompleted"):
            tid, src, dst, nb = ev[1], ev[3], ev[4], _nint(ev[5], "nblocks")
            key = (run, name, tid)
            if key in self.seen:
                raise _Bad("duplicate", f"{name} of transfer {tid} repeated")
            if name == "TransferInitiated":
                step = _opt_step(ev, 6)
                r = self._row((run, dp, step if step is not None else lstep), ts)
                r[2 + _I["transfers_initiated"]] += 1
            else:
                ok = bool(ev[6]) if len(ev) > 6 and ev[6] is not None else True
                step = _opt_step(ev, 7)
                r = self._row((run, dp, step if step is not None else lstep), ts)
                if not ok:
                    r[2 + _I["transfers_failed"]] += 1
                else:
                    s, d = _medium(src), _medium(dst)
                    if s == "gpu" and d == "cpu":
                        r[2 + _I["blocks_offloaded"]] += nb
                    elif s == "cpu" and d == "gpu":
                        r[2 + _I["blocks_loaded"]] += nb
            self.seen.add(key)
        elif name in ("CacheStoreCommitted", "CacheLoadCommitted"):
            nb = _nint(ev[3], "nblocks")
            step = _opt_step(ev, 4)
            r = self._row((run, dp, step if step is not None else lstep), ts)
            r[2 + _I["store_committed_blocks" if name == "CacheStoreCommitted" else "load_committed_blocks"]] += nb
        elif name == "CacheEviction":
            n = _nint(ev[2], "n")
            step = _opt_step(ev, 4)
            r = self._row((run, dp, step if step is not None else lstep), ts)
            r[2 + _I["evictions"]] += 1
            r[2 + _I["blocks_evicted"]] += n
        r[2 + _I["n_events"]] += 1

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
            sink.append((key[0], key[1], key[2], r[0], r[1], *r[2:2 + _I["blocks_loaded"] + 1], off, ld,
                         *r[2 + _I["store_committed_blocks"]:]))
        self.agg = {}
