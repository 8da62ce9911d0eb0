"""Regenerate every benchmark's one current result file, ``benchmarks/results/<script>.json``.

    python benchmarks/run_all.py                     # every variant below (hours on 2 cores)
    python benchmarks/run_all.py --only probe_update probe_gate:lowo
    python benchmarks/run_all.py --list              # the command lines, nothing run
    python benchmarks/run_all.py --fast              # small settings; results under benchmarks/out/fast/

Each variant runs its command line (``COMMANDS``) with ``--out`` pointing at a temporary file,
which is then merged into ``benchmarks/results/<script>.json``: a benchmark with several variants
as ``{"benchmark": NAME, "variants": {VARIANT: {"command": ..., "result": ...}}}``, one with a
single variant as its own JSON with a top-level ``"command"``. A variant that fails leaves its
current result as it is. Output of each command goes to ``benchmarks/out/run_all/<script>_<variant>.log``.
Prints a table (benchmark, variant, seconds, status) and writes the timings to
``benchmarks/results/run_all.json``. Variants run in the order below: the fold fits of the
accuracy suites are shared with ``probe_update``'s 1000-draw variants (``--fit-dir
benchmarks/out/cv_fits``, same sampler settings), and ``probe_gate`` reads the ``probe_update``
result (skipped where that variant failed in the same run).

``--fast``: each variant with the small settings of ``FAST`` appended (later options win), to
check that everything runs; its files go to ``benchmarks/out/fast/`` and never replace a result.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = "benchmarks/results"
FAST_DIR = "benchmarks/out/fast"
LOGS = ROOT / "benchmarks" / "out" / "run_all"

_VA = "python benchmarks/validate_accuracy.py"
_PU = "python benchmarks/probe_update.py --fit-dir benchmarks/out/cv_fits --pred-draws 40 --oos-calibration"
_NVL = "--as-new-gpu 'H100 (NVL datasheet)' --datasheet specs/hardware/h100-nvl.json"
_MEDIAN = "--ttft-level median --ttft-slice-floor 0.03"
_GATE = "python benchmarks/probe_gate.py benchmarks/results/probe_update.json --variant"

#: benchmark -> variant -> the command line that produces it (without --out)
COMMANDS: dict[str, dict[str, str]] = {
    "kernel_priors": {"default": "python benchmarks/kernel_priors.py"},
    "kernel_step_priors": {"default": "python benchmarks/kernel_step_priors.py"},
    "kernel_transfer": {"default": "python benchmarks/kernel_transfer.py"},
    "kernel_rows": {"default": "python benchmarks/kernel_rows.py"},
    "decode_batch": {"default": "python benchmarks/decode_batch.py --figure docs/figures/decode_batch.png"},
    "version_shift": {"default": "python benchmarks/version_shift.py"},
    "simulate_speed": {"default": "python benchmarks/simulate_speed.py"},
    "reconstruct_agreement": {"default": "python benchmarks/reconstruct_agreement.py"},
    "ingest_throughput": {"default": "python benchmarks/ingest_throughput.py --size-mb 1024"},
    "dask_scaling": {"default": "python benchmarks/dask_scaling.py --runs 10 --size-mb 1024"},
    "prior_comparison": {
        "default": "python benchmarks/prior_comparison.py --reuse-default --cv-draws 2000 --cv-tune 1000 --fit-dir benchmarks/out/cv_fits",
        "lowo": "python benchmarks/prior_comparison.py --reuse-default --cv-draws 2000 --cv-tune 1000 --fit-dir benchmarks/out/cv_fits --cv-suites lowo",
        "regime_by_class": "python benchmarks/prior_comparison.py --priors betaprime regime_by_class --reuse-default --cv-draws 2000 --cv-tune 1000 --fit-dir benchmarks/out/cv_fits",
    },
    "hardware_transfer": {"default": "python benchmarks/hardware_transfer.py"},
    "validate_accuracy": {
        "default": f"{_VA} --suites replay aggregate --draws 40",
        "lomo": f"{_VA} --suites lomo --draws 40 --tune 500 --fit-draws 1000 --fit-dir benchmarks/out/cv_fits",
        "lowo": f"{_VA} --suites lowo --draws 40 --tune 500 --fit-draws 1000 --fit-dir benchmarks/out/cv_fits",
        # the folds of `bayeslat calibrate` (default sampler, every row in bins), and the same with the
        # former default's rows and sampler (40 raw rows per run and kind)
        "lomo_default_sampler": f"{_VA} --suites lomo --draws 40 --fit-dir benchmarks/out/cv_fits",
        "lomo_subsample": (
            f"{_VA} --suites lomo --draws 40 --n-per-run-kind 40 --tune 1000 --fit-draws 4000 --target-accept 0.99 "
            "--fit-dir benchmarks/out/cv_fits"
        ),
    },
    "workload_discrepancy": {"default": "python benchmarks/workload_discrepancy.py --fit-dir benchmarks/out/cv_fits"},
    "transfer_eval": {
        "default": "python benchmarks/transfer_eval.py --modes lomo lotp lowo --fit-dir benchmarks/out/cv_fits --pred-draws 40"
    },
    "probe_update": {
        "lomo": _PU,
        "lomo_1000_draw_folds": f"{_PU} --fit-tune 500 --fit-draws 1000",
        "new_gpu": f"{_PU} --as-new-gpu 'H100 as an unseen GPU' --fit-tune 500 --fit-draws 1000",
        "wrong_datasheet": f"{_PU} {_NVL}",
        "lowo": f"{_PU} --hold-out workload",
        "lomo_ttft_median": f"{_PU} {_MEDIAN}",
        "wrong_datasheet_ttft_median": f"{_PU} {_NVL} {_MEDIAN}",
        "lowo_ttft_median": f"{_PU} --hold-out workload {_MEDIAN}",
    },
    "probe_gate": {v: f"{_GATE} {v}" for v in ("lomo", "wrong_datasheet", "lowo")},
    "probe_ceiling": {
        "lomo": "python benchmarks/probe_ceiling.py",
        "lowo": "python benchmarks/probe_ceiling.py --hold-out workload",
    },
    "time_split_accuracy": {"default": "python benchmarks/time_split_accuracy.py --draws 800 --tune 800"},
    "parameter_recovery": {"default": "python benchmarks/parameter_recovery.py"},
    "fit_backends": {"default": "python benchmarks/fit_backends.py --data bundled --draws 1000 --tune 1000 --timeout 480"},
    "fit_rows": {"default": "python benchmarks/fit_rows.py"},
    "figures": {
        "default": "python benchmarks/figures.py --results benchmarks/results/validate_accuracy.json --fig-dir docs/figures"
    },
}

#: benchmark -> the benchmark whose result (same variant) it reads: not run if that variant failed now
DEPENDS: dict[str, str] = {"probe_gate": "probe_update"}

#: --fast: options appended to every variant of a benchmark (argparse: the last value wins)
FAST: dict[str, str] = {
    "simulate_speed": "--draws 1",
    "reconstruct_agreement": "--runs llama-2-7b-tp1-codegen",
    "ingest_throughput": "--size-mb 20",
    "dask_scaling": "--runs 2 --size-mb 5 --draws 2 --seeds 1",
    "prior_comparison": "--draws 100 --tune 100 --no-cv",
    "hardware_transfer": "--draws 10",
    "kernel_step_priors": "--boot 20",
    "kernel_transfer": "--per-family 40 --draws 200 --tune 200 --pred-draws 50 --gpus l40s",
    "kernel_rows": "--per-family 20 40 --draws 100 --tune 100 --pred-draws 20",
    "decode_batch": "--draws 20 --figure benchmarks/out/fast/figures/decode_batch.png",
    "validate_accuracy": "--draws 4 --tune 100 --fit-draws 100",
    "workload_discrepancy": "--draws 4 --tune 100 --fit-draws 100",
    "transfer_eval": "--quick",
    "probe_update": "--pred-draws 4 --fit-tune 100 --fit-draws 100",
    "probe_gate": "--draws 40",
    "probe_ceiling": "--pred-draws 4",
    "time_split_accuracy": "--draws 100 --tune 100",
    "parameter_recovery": "--seeds 0 --draws 100 --tune 100",
    "fit_backends": "--draws 100 --tune 100 --timeout 300",
    "fit_rows": "--draws 100 --tune 100",
    "figures": "--fig-dir benchmarks/out/fast/figures",
}


def variants(only: list[str] | None) -> list[tuple[str, str]]:
    """(benchmark, variant) pairs in run order; ``only``: names ``BENCHMARK`` or ``BENCHMARK:VARIANT``."""
    pairs = [(b, v) for b, vs in COMMANDS.items() for v in vs]
    if not only:
        return pairs
    unknown = [o for o in only if not any(o in (b, f"{b}:{v}") for b, v in pairs)]
    if unknown:
        raise SystemExit(f"unknown benchmark or variant: {', '.join(unknown)} (see --list)")
    return [(b, v) for b, v in pairs if b in only or f"{b}:{v}" in only]


def command(bench: str, variant: str, fast: bool) -> str:
    cmd = COMMANDS[bench][variant]
    if fast:
        cmd = cmd.replace(f"{RESULTS}/", f"{FAST_DIR}/")  # probe_gate reads the fast probe_update
        if FAST.get(bench):
            cmd += " " + FAST[bench]
    return cmd


def merge(path: Path, bench: str, variant: str, cmd: str, result) -> None:
    """Write ``result`` as ``variant`` of ``path`` in the format of the module docstring."""
    if len(COMMANDS[bench]) == 1:
        data = {"command": cmd, **result}
    else:
        old = json.loads(path.read_text()) if path.exists() else {}
        have = old.get("variants", {}) | {variant: {"command": cmd, "result": result}}
        order = [v for v in COMMANDS[bench] if v in have] + [v for v in have if v not in COMMANDS[bench]]
        data = {"benchmark": bench, "variants": {v: have[v] for v in order}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def run_one(bench: str, variant: str, fast: bool) -> dict:
    cmd = command(bench, variant, fast)
    argv = shlex.split(cmd)
    argv[0] = sys.executable
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{bench}_{variant}{'_fast' if fast else ''}.log"
    with tempfile.TemporaryDirectory(prefix="bayeslat-run-all-") as d:
        out = Path(d) / f"{bench}_{variant}.json"
        t0 = time.perf_counter()
        with open(log, "w") as f:
            f.write(f"$ {cmd} --out {out}\n")
            f.flush()
            rc = subprocess.run(argv + ["--out", str(out)], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
        seconds = time.perf_counter() - t0
        status = "ok"
        if rc != 0:
            status = f"failed (exit {rc})"
        elif not out.exists():
            status = "failed (no output)"
        else:
            result = json.loads(out.read_text())
            if isinstance(result, dict) and result.get("partial"):
                status = "failed (partial output)"
            else:
                merge(ROOT / (FAST_DIR if fast else RESULTS) / f"{bench}.json", bench, variant, cmd, result)
    return {
        "benchmark": bench,
        "variant": variant,
        "command": cmd,
        "seconds": round(seconds, 1),
        "status": status,
        "log": str(log.relative_to(ROOT)),
    }


def _commit() -> str | None:
    """The checkout's commit (``+`` if it has uncommitted changes), for the record."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True)
        return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="+", default=None, metavar="NAME", help="benchmarks (or BENCHMARK:VARIANT) to run")
    ap.add_argument("--list", action="store_true", help="print the command lines, run nothing")
    ap.add_argument("--fast", action="store_true", help=f"small settings, results under {FAST_DIR}/")
    a = ap.parse_args(argv)
    todo = variants(a.only)
    if a.list:
        for b, v in todo:
            print(f"{b:22s} {v:28s} {command(b, v, a.fast)}")
        return 0
    rows = []
    print(f"{'benchmark':22s} {'variant':28s} {'seconds':>9s}  status", flush=True)
    for b, v in todo:
        dep = DEPENDS.get(b)
        if any(r["benchmark"] == dep and r["variant"] == v and r["status"] != "ok" for r in rows):
            r = {
                "benchmark": b,
                "variant": v,
                "command": command(b, v, a.fast),
                "seconds": 0.0,
                "status": f"skipped ({dep} {v} failed)",
            }
        else:
            r = run_one(b, v, a.fast)
        rows.append(r)
        print(f"{b:22s} {v:28s} {r['seconds']:9.1f}  {r['status']}", flush=True)
    timings = ROOT / (FAST_DIR if a.fast else RESULTS) / "run_all.json"
    old = json.loads(timings.read_text()).get("runs", []) if timings.exists() else []
    done = {(r["benchmark"], r["variant"]) for r in rows}
    runs = [r for r in old if (r["benchmark"], r["variant"]) not in done] + rows
    timings.parent.mkdir(parents=True, exist_ok=True)
    timings.write_text(
        json.dumps(
            {
                "written": time.strftime("%Y-%m-%d %H:%M:%S"),
                "commit": _commit(),
                "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
                "fast": a.fast,
                "runs": runs,
            },
            indent=1,
        )
        + "\n"
    )
    failed = [r for r in rows if r["status"] != "ok"]
    print(f"wrote {timings.relative_to(ROOT)}; {len(rows) - len(failed)} ok, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
