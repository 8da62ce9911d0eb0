"""Where specs live and how their files are read: units, dtype sizes, the bundled spec directory
``bayeslat/data/specs`` and the path-or-key resolution every loader shares.

Units: bytes, FLOPs (multiply-add = 2 FLOPs), FLOP/s, bytes/s, tokens. ``GiB = 2**30``.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from bayeslat.errors import SpecError, read_text

GiB = 2**30
DTYPE_BYTES = {
    "float32": 4.0,
    "float": 4.0,
    "bfloat16": 2.0,
    "float16": 2.0,
    "half": 2.0,
    "fp8": 1.0,
    "fp8_e4m3": 1.0,
    "fp8_e5m2": 1.0,
    "int8": 1.0,
    "int4": 0.5,
}


def specs_dir() -> Path:
    """The bundled spec directory ``bayeslat/data/specs`` (a symlink to the repo's ``specs/``)."""
    return Path(str(resources.files("bayeslat") / "data" / "specs"))


def _read_json(p: Path, field: str):
    try:
        return json.loads(read_text(p))
    except json.JSONDecodeError as e:
        raise SpecError(f"invalid JSON: {e.msg}", file=str(p), line=e.lineno, field=field) from None


def _resolve(path_or_key: str | Path, kind: str, filename: str | None, suffixes: tuple[str, ...]) -> Path:
    """A path if it exists, else a key under ``specs_dir()/kind`` (folder with ``filename`` or a file)."""
    p = Path(path_or_key)
    if p.is_file():
        return p
    if p.is_dir() and filename and (p / filename).is_file():
        return p / filename
    base = specs_dir() / kind
    key = str(path_or_key)
    cands = []
    if filename:
        cands.append(base / key / filename)
    cands += [base / (key + s) for s in suffixes] + [base / key]
    for c in cands:
        if c.is_file():
            return c
    raise SpecError(f"no such file, nor a bundled {kind} key (looked in {base})", file=str(path_or_key))
