"""``bayeslat export``: a fit's coefficients of one group as bayeslat json / yaml or BLIS flags."""

from __future__ import annotations

import sys
from pathlib import Path

from bayeslat.config import load_server
from bayeslat.errors import SpecError
from bayeslat.export.blis import multi_gpu_rows
from bayeslat.export.coefficients import export
from bayeslat.export.groups import _parse_group, group_notes
from bayeslat.model import load


def _target_tp(args, idata, group) -> int:
    """The TP degree a BLIS export is for: ``--tp``, else ``--server``'s ``tensor_parallel``.
    Neither: TP 1 when every fit row of the group is at TP 1 (said on stderr), an error when any
    is at TP > 1 (b4 and a0 hold TP-dependent terms) or the fit keeps no rows to tell."""
    tp = getattr(args, "tp", None)
    server = getattr(args, "server", None)
    if server is not None:
        s_tp = int(load_server(server).tensor_parallel)
        if tp is not None and tp != s_tp:
            raise SpecError(
                f"--tp {tp} disagrees with the server config's tensor_parallel {s_tp}", file=str(server), field="tensor_parallel"
            )
        return s_tp
    if tp is not None:
        return int(tp)
    hw, cls = _parse_group(group)
    rows = multi_gpu_rows(idata, group)
    if rows is None or rows[0] > 0:
        seen = (
            "keeps no fit rows to tell the TP it was trained at"
            if rows is None
            else f"has {rows[0]} of its {rows[1]} rows of group {hw}/{cls} at TP > 1"
        )
        raise SpecError(
            f"the fit {seen}: the BLIS terms b4 (TP sync per layer) and a0 (multi-process executor) "
            "depend on the target's TP degree; pass --tp N or --server CONFIG",
            file=str(args.model),
            field="tp",
        )
    print(
        f"bayeslat export: assuming target TP 1 (no --tp / --server; all {rows[1]} fit rows of group {hw}/{cls} are at TP 1)",
        file=sys.stderr,
    )
    return 1


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
