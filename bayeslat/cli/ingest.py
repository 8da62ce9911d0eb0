"""``bayeslat ingest``: parse trace files into the validated tables and print the ingest report."""

from __future__ import annotations

import sys
from pathlib import Path

from bayeslat.data.ingest import ingest
from bayeslat.data.ingest._io import detect_kind, head_bytes
from bayeslat.data.ingest.many import ingest_many
from bayeslat.errors import IngestError


def run(args) -> int:
    """``bayeslat ingest PATHS --experiment YAML --out DIR [--json]``: 0 when every file was
    read (skipped records are reported, not fatal), 2 on unreadable input or a file of no kind
    ingest reads (one line each on stderr; the report is printed and written all the same).
    Without ``--experiment``, PATHS are run directories, ingested one Dask task each into
    ``DIR/<experiment name>`` (``--workers``, ``--scheduler``); the exit code is the worst run's."""
    if args.experiment is None:
        return _run_many(args)
    try:
        res = ingest(args.paths, experiment=args.experiment, out=args.out)
    except IngestError as e:
        print(f"bayeslat ingest: error: {e}", file=sys.stderr)
        return 2
    return _report(res.report, args)


def _run_many(args) -> int:
    from bayeslat import cluster

    not_dirs = [p for p in args.paths if not Path(p).is_dir()]
    if not_dirs:
        print(
            f"bayeslat ingest: error: {not_dirs[0]}: not a run directory (trace files need --experiment EXP.yaml)",
            file=sys.stderr,
        )
        return 2
    progress = None if args.no_progress else cluster.stderr_progress("ingest: runs")
    try:
        done = ingest_many(args.paths, args.out, workers=args.workers, scheduler=args.scheduler, progress=progress)
    except IngestError as e:
        print(f"bayeslat ingest: error: {e}", file=sys.stderr)
        return 2
    rc = 0
    for job in done:
        print(f"== {job['run_dir']} -> {job['out']}")
        rc = max(rc, _report(job["report"], args))
    return rc


def _report(rep, args) -> int:
    print(rep.to_json() if getattr(args, "json", False) else rep.format())
    # a file named on the command line that gave nothing is an error, not only a skip count in the
    # report; an experiment YAML among the paths (a shell glob of a run directory) and an empty
    # file (a run without KV events) are not
    unknown = [
        f for f, k in rep.file_kind.items() if k == "unknown" and head_bytes(f, 64).strip() and detect_kind(f) != "experiment"
    ]
    for e in rep.errors:
        print(f"bayeslat ingest: error: {e}", file=sys.stderr)
    for f in unknown:
        print(
            f"bayeslat ingest: error: {f}: not an OTLP trace, KV event stream or inference-perf file (nothing read from it)",
            file=sys.stderr,
        )
    return 0 if rep.ok and not unknown else 2
