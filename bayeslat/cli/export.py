"""``bayeslat export``: a fit's coefficients of one group as bayeslat json / yaml or BLIS flags."""

from __future__ import annotations

import sys
from pathlib import Path

from bayeslat.export.blis import target_tp
from bayeslat.export.coefficients import export
from bayeslat.export.groups import group_notes
from bayeslat.model import load


def _target_tp(args, idata, group) -> int:
    """``--tp`` / ``--server`` resolved by ``export.target_tp``; an assumption it makes goes to stderr."""
    tp, note = target_tp(idata, group, getattr(args, "tp", None), getattr(args, "server", None), file=str(args.model))
    if note:
        print(f"bayeslat export: {note}", file=sys.stderr)
    return tp


def run(args) -> int:
    """``bayeslat export MODEL [--group H/C] [--format json|yaml|blis] [--tp N | --server CONFIG] [--out FILE]``.

    blis: stdout (or ``--out``) holds the flags alone, so ``blis run ... $(bayeslat export ...)``
    works; the comments (group, target TP, term notes, assumptions) go to stderr."""
    idata = load(args.model)
    group = "H100 SXM/dense" if args.group is None else args.group
    for note in group_notes(idata, group):
        print(f"bayeslat export: assumption: {note}", file=sys.stderr)
    if args.format == "blis":
        text = export(idata, group, "blis", tp=_target_tp(args, idata, group))
        lines = text.splitlines()
        sys.stderr.write("".join(ln + "\n" for ln in lines if ln.startswith("#")))
        text = "".join(ln + "\n" for ln in lines if not ln.startswith("#"))
    else:
        if getattr(args, "tp", None) is not None or getattr(args, "server", None) is not None:
            print(
                f"bayeslat export: --tp / --server change the blis format only; the {args.format} export holds "
                "every feature's coefficients",
                file=sys.stderr,
            )
        text = export(idata, group, args.format)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0
