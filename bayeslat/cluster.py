"""Independent tasks on Dask (``dask.distributed``): many experiments to ingest, many deployments to
predict or check.

:func:`map_tasks` runs ``fn(item)`` for every item and returns the results in the items' order. Each
task is a pure function of its item (files or a spec, and the seed in it), so the results are the
same on one worker, on two, or on a cluster, and the same as :func:`map_tasks` with ``workers=0``,
which runs the tasks one after the other in this process without Dask.

Where the tasks run:

- ``scheduler`` (an address such as ``tcp://10.0.0.5:8786``, or a ``distributed.Client``): an
  existing cluster; its workers need bayeslat installed (and the files, for ingest);
- else a local cluster started for the call: ``workers`` processes (default: the usable CPUs), one
  thread each (the tasks hold the GIL: parsing, the simulator), no dashboard;
- ``workers=0``: in this process (no Dask needed).

Like the rest of the package, this module belongs to no layer (as :mod:`bayeslat.errors`): it
imports nothing of bayeslat, and the layers hand it their task functions.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager

from bayeslat.errors import SpecError

__all__ = ["map_tasks", "dask_client", "stderr_progress", "usable_cpus"]


def usable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@contextmanager
def dask_client(workers: int | None = None, scheduler=None):
    """A ``distributed.Client``: of ``scheduler`` (an address or a Client, used as it is), else of a
    local cluster of ``workers`` single-threaded processes, closed on exit."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise SpecError("dask.distributed is not installed (pip install 'dask[distributed]')", field="scheduler") from e
    if scheduler is not None and not isinstance(scheduler, str):
        yield scheduler
        return
    if scheduler is not None:
        with Client(scheduler) as client:
            yield client
        return
    n = usable_cpus() if workers is None else int(workers)
    if n < 1:
        raise SpecError(f"a local cluster needs >= 1 worker, got {workers}", field="workers")
    with (
        LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        yield client


def map_tasks(fn, items, *, workers: int | None = None, scheduler=None, progress=None) -> list:
    """``[fn(item) for item in items]``, run on Dask (module docstring). ``progress``: a callable
    taking (done, total) after each task completes (None: silent). An exception of a task is raised
    here as it is, with a note naming the item's index."""
    items = list(items)
    total = len(items)
    if total == 0:
        return []
    if scheduler is None and workers == 0:
        out = []
        for i, item in enumerate(items):
            out.append(_call(fn, item, i))
            if progress:
                progress(i + 1, total)
        return out
    from distributed import as_completed

    with dask_client(workers, scheduler) as client:
        # pure=False: a task is keyed by its position, so equal items still run (and fail) apart
        futures = [client.submit(_call, fn, item, i, pure=False) for i, item in enumerate(items)]
        index = {f.key: i for i, f in enumerate(futures)}
        out: list = [None] * total
        for done, fut in enumerate(as_completed(futures), start=1):
            out[index[fut.key]] = fut.result()
            if progress:
                progress(done, total)
    return out


def _call(fn, item, i: int):
    try:
        return fn(item)
    except Exception as e:
        e.add_note(f"(bayeslat.cluster: task {i} of the sweep)")
        raise


def stderr_progress(label: str):
    """A (done, total) progress callable printing ``label done/total`` with the time so far and
    an estimate of the time left (the mean time per item so far) on one line of stderr when it is
    a terminal, and nothing otherwise (logs stay clean)."""
    if not sys.stderr.isatty():
        return None
    t0 = time.perf_counter()

    def show(done: int, total: int) -> None:
        el = time.perf_counter() - t0
        left = f", ~{el / done * (total - done):.0f} s left" if 0 < done < total else ""
        end = "\n" if done == total else ""
        print(f"\r{label} {done}/{total} ({el:.0f} s{left})   ", end=end, file=sys.stderr, flush=True)

    return show
