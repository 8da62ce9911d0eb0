"""Golden outputs of the command line: the guard of a change that must not change behaviour.

``python benchmarks/golden.py`` writes the output of each command below to
``benchmarks/golden/<name>``; ``python benchmarks/golden.py --check`` runs them again and compares
(JSON numbers to a relative 1e-9, text exactly), prints a table and exits 1 on any difference.
Every command has a fixed seed. The commands: ``specs --json``, ``predict --json`` of every example
SPEC, ``check --json`` of the A100 and H100 examples, ``validate --suite replay --draws 8 --json``
and ``export`` in every format.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "golden"
EXAMPLES = sorted((ROOT / "specs" / "examples").glob("*.yaml"))
# paths relative to the checkout (the commands run there): outputs that echo them stay comparable
MODEL = "models/default.nc"


def commands() -> dict[str, list[str]]:
    cmds = {
        "specs_llama-2-70b_h100_tp4.json": [
            "specs",
            "--model",
            "llama-2-70b-hf",
            "--hardware",
            "h100-sxm",
            "--server",
            "llama-2-70b-tp4",
            "--json",
        ]
    }
    for p in EXAMPLES:
        cmds[f"predict_{p.stem}.json"] = [
            "predict",
            str(p.relative_to(ROOT)),
            "--model",
            MODEL,
            "--draws",
            "20",
            "--seed",
            "0",
            "--json",
        ]
    for stem in ("llama-2-7b-a100-codegen", "llama-2-7b-h100-codegen"):
        cmds[f"check_{stem}.json"] = ["check", f"specs/examples/{stem}.yaml", "--model", MODEL, "--draws", "20", "--json"]
    cmds["validate_replay.json"] = ["validate", "--suite", "replay", "--model", MODEL, "--draws", "8", "--json"]
    for fmt in ("json", "yaml"):
        cmds[f"export_h100_dense.{fmt}"] = ["export", MODEL, "--group", "H100 SXM/dense", "--format", fmt]
    cmds["export_h100_dense_tp2.blis"] = ["export", MODEL, "--group", "H100 SXM/dense", "--format", "blis", "--tp", "2"]
    return cmds


def run(argv: list[str]) -> str:
    res = subprocess.run([sys.executable, "-m", "bayeslat.cli", *argv], capture_output=True, text=True, cwd=ROOT)
    if res.returncode not in (0, 3):  # 3: check's out-of-distribution verdict
        raise SystemExit(f"bayeslat {' '.join(argv)} exited {res.returncode}:\n{res.stderr[-2000:]}")
    return res.stdout


def _volatile(key: str) -> bool:
    # wall-clock times and creation stamps differ between runs by design
    return key.endswith(("_s", "_seconds", "seconds")) or key in ("created", "elapsed", "wall")


def diff(a, b, path: str = "") -> list[str]:
    """Differences between two parsed JSON values (numbers to a relative 1e-9)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}/{k}: only in {'golden' if k in a else 'now'}" for k in sorted(set(a) ^ set(b))]
        for k in sorted(set(a) & set(b)):
            if not _volatile(k):
                out += diff(a[k], b[k], f"{path}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} -> {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in diff(x, y, f"{path}[{i}]")]
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12):
            return []
        return [f"{path}: {a!r} -> {b!r}"]
    return [] if a == b else [f"{path}: {a!r} -> {b!r}"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with benchmarks/golden/ instead of writing it")
    ap.add_argument("--only", nargs="*", default=None, help="names (substring match)")
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    failed = 0
    print(f"{'output':<48}{'seconds':>9}  result")
    for name, argv in commands().items():
        if a.only and not any(x in name for x in a.only):
            continue
        t = time.perf_counter()
        text = run(argv)
        dt = time.perf_counter() - t
        path = OUT / name
        if not a.check:
            path.write_text(text)
            print(f"{name:<48}{dt:>9.1f}  written")
            continue
        gold = path.read_text()
        if name.endswith(".json"):
            d = diff(json.loads(gold), json.loads(text))
        else:
            d = [] if gold == text else ["text differs"]
        failed += bool(d)
        print(f"{name:<48}{dt:>9.1f}  {'identical' if not d else f'{len(d)} differences'}")
        for line in d[:20]:
            print(f"    {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
