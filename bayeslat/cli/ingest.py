"""``bayeslat ingest``: parse trace files into the validated tables and print the ingest report."""

from __future__ import annotations

import sys

from bayeslat.data.ingest import ingest
from bayeslat.data.ingest._io import detect_kind, head_bytes
from bayeslat.errors import IngestError


def run(args) -> int:
    """``bayeslat ingest PATHS --experiment YAML --out DIR [--json]``: 0 when every file was
    read (skipped records are reported, not fatal), 2 on unreadable input or a file of no kind
    ingest reads (one line each on stderr; the report is printed and written all the same)."""
    try:
        res = ingest(args.paths, experiment=args.experiment, out=args.out)
    except IngestError as e:
        print(f"bayeslat ingest: error: {e}", file=sys.stderr)
        return 2
    rep = res.report
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
