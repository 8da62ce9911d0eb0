"""``bayeslat specs``: print the derived quantities of a deployment (params, bytes, FLOPs, KV blocks)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

from bayeslat.config import load_hardware, load_model, load_server
from bayeslat.deployment import derived
from bayeslat.errors import SpecError


def run(args) -> int:
    """``bayeslat specs --model M --hardware H [--tp N] [--server S] [--json]``: print derived
    quantities (JSON with ``--json``, else a table). Exit 0; 2 on a SpecError (message on stderr)."""
    try:
        model = load_model(args.model)
        hw = load_hardware(args.hardware)
        server = load_server(args.server) if args.server else load_server(None)
        if getattr(args, "tp", None) is not None:
            if args.tp < 1:
                raise SpecError(f"must be >= 1, got {args.tp}", field="--tp")
            server = replace(server, tensor_parallel=int(args.tp))
        out = derived(model, hw, server)
    except SpecError as e:
        print(f"bayeslat specs: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out, indent=2, default=float))
        return 0
    rows = [(k, v) for k, v in out.items() if not isinstance(v, dict)]
    rows += [(f"params.{k}", v) for k, v in out["params"].items()]
    rows += [(f"ctx.{k}", v) for k, v in out["feature_context"].items()]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        s = f"{v:,.6g}" if isinstance(v, float) else (f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v))
        print(f"{k:<{width}}  {s}")
    return 0
