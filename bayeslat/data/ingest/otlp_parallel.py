"""Parallel parsing of the step lines of large OTLP files: forked worker processes
(:func:`n_workers`, :class:`_Workers`) run the bulk step path (:meth:`.otlp_steps.StepSpans._bulk_compute`)
on blocks of raw lines (:func:`_work_line`) while the main process reads the file in order
(:func:`_parallel_lines`). See the :mod:`.otlp` docstring for what stays in the main process.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import traceback
from collections import deque
from pathlib import Path

from ._io import _fast_loads, open_binary
from .otlp_columns import _SNAP, _SUM
from .otlp_steps import StepSpans

PARALLEL_MIN_BYTES = 64 << 20  # smaller files are parsed in-process (worker start-up ~0.1 s)
BLOCK_BYTES = 2 << 20  # raw bytes of lines per work item
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

    _layout = StepSpans._layout
    _bulk_compute = StepSpans._bulk_compute

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
                p = ctx.Process(target=_worker_loop, args=(theirs, self.conns + [mine]), daemon=True, name="bayeslat-otlp-worker")
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
        pending = deque()  # (worker index or None: in-process, block) in file order
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
