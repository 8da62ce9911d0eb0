"""The step spans of an OTLP trace (``vllm.scheduler.step`` / ``scheduler_steps_*``): the
:class:`StepSpans` part of :class:`.otlp.OtlpState` that turns ``step.BATCH_SUMMARY`` and
``step.REQUEST_SNAPSHOT`` events into ``steps`` / ``step_requests`` rows (bulk path, fast path
event by event, general path) and adds the cycle times per file.
"""

from __future__ import annotations

from array import array
from itertools import chain, compress
from operator import ge
from pathlib import Path

import numpy as np
import pyarrow as pa

from .otlp_columns import (
    _ATTRS,
    _DOUBLE,
    _INT,
    _KEY,
    _NAME,
    _SNAP,
    _STEP_N,
    _STR_OR_NONE,
    _STRV,
    _SUM,
    _VALUE,
    SNAP_ATTRS,
    STEP_ATTRS,
    Bad,
    _events,
    _int,
    _int_array,
    _plan,
    _Slow,
    attrs,
)


class StepSpans:
    """Step-span methods of :class:`.otlp.OtlpState` (a mixin: it uses the state's ``report``,
    ``sinks``, ``_steps_tmp``, ``_sum_buf`` / ``_snap_buf``, the plan caches ``_plans`` /
    ``_last_plan`` / ``_shapes`` and ``_counter`` / ``_keep``)."""

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
                plan = self._layout(en, keys[: len(evs[0]["attributes"])])  # the first event's keys
                if plan is False:
                    return None
                n, width = len(evs), plan.width
                if keys != plan.keys_times(n):  # every event has the first one's keys
                    return None
                del keys
                # the non-integer values first (int_strings consumes flat)
                x = list(map(_VALUE, flat[plan.pos :: width])) if plan.pos is not None else None
                ph = list(map(_VALUE, flat[plan.phase :: width])) if plan.phase is not None else None
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
                nxt = ids[i : i + m] + 1
                pos = np.minimum(np.searchsorted(uniq, nxt), len(uniq) - 1)
                has = uniq[pos] == nxt
                emit(t, has, np.where(has, (uts[pos] - ts[i : i + m]) / 1000.0, np.nan))
                i += m
        if neg:
            self.report.note(f"{file}: {neg} cycle times are negative (next step starts before this one)")
        if sink.path is not None:
            Path(sink.path).unlink(missing_ok=True)
        self._steps_tmp = self._sum_buf = None
