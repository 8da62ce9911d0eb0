"""The ``bayeslat`` command line: a thin argparse front end.

Every sub-command's arguments are declared here; ``bayeslat/cli/<command>.py`` runs it (``run(args)``,
imported only for that command, so ``bayeslat specs`` never imports PyMC), calling the domain code and
printing what it returns. Each returns the process exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: ``probe.UPDATE_WHEN`` (kept here so building the parser imports no domain module; a test
#: asserts the two agree)
UPDATE_WHEN_CHOICES = ("auto", "always", "needed")
#: ``evaluate.SUITES`` (same reason, same test)
VALIDATE_SUITES = ("replay", "aggregate", "all", "loro", "lomo", "lowo", "external")
#: ``design.BINS`` (same reason, same test)
FIT_BINS = (4, 8)


# Type functions: argparse turns their ArgumentTypeError into its usage error (exit 2, the
# message naming the option), before any file is read or any sampling starts.
def _int_at_least(lo: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {lo}, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v

    return parse


positive_int = _int_at_least(1)
nonneg_int = _int_at_least(0)


def probability(text: str) -> float:
    """A number in the open interval (0, 1)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {text!r}") from None
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {v}")
    return v


def bins_arg(text: str):
    """``TxD`` (two integers >= 1: time slices x design bins) or ``none``."""
    if text.strip().lower() == "none":
        return None
    parts = text.lower().replace(",", "x").split("x")
    try:
        t, d = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be TxD (e.g. 4x8) or 'none', got {text!r}") from None
    if t < 1 or d < 1:
        raise argparse.ArgumentTypeError(f"both bin counts must be >= 1, got {text!r}")
    return (t, d)


def _existing_ancestor(path):
    from pathlib import Path

    p = Path(path).absolute()
    while not p.exists():
        p = p.parent
    return p


def out_file(text: str) -> str:
    """A file to write: not a directory, and under a directory (created when missing), not a file."""
    from pathlib import Path

    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; give a file path")
    a = _existing_ancestor(Path(text).parent)
    if not a.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: {a} is a file, not a directory")
    return text


def out_dir(text: str) -> str:
    """A directory to write into (created when missing): not an existing file."""
    from pathlib import Path

    a = _existing_ancestor(text)
    if not a.is_dir():
        where = "" if a == Path(text).absolute() else f"{text}: "
        raise argparse.ArgumentTypeError(f"{where}{a} is a file, not a directory")
    return text


def _dask_args(s, what: str) -> None:
    s.add_argument(
        "--workers",
        type=nonneg_int,
        default=None,
        help=f"{what} run on a local Dask cluster of this many processes (default: the usable CPUs; 0: in this process)",
    )
    s.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler to run on instead (tcp://HOST:8786)")
    s.add_argument("--no-progress", action="store_true", help="no progress line on a terminal")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bayeslat", description="Bayesian latency models for vLLM serving.")
    p.add_argument("--version", action="store_true", help="print the package version and exit")
    sub = p.add_subparsers(dest="command")

    s = sub.add_parser("specs", help="derived quantities of a deployment (params, bytes, FLOPs, kv_blocks)")
    s.add_argument("--model", required=True, help="HuggingFace config.json (or a spec key under specs/models)")
    s.add_argument("--hardware", required=True, help="GPU datasheet JSON (or a key under specs/hardware)")
    s.add_argument("--tp", type=positive_int, default=None, help="tensor-parallel degree (overrides --server)")
    s.add_argument("--server", default=None, help="server config YAML (specs/servers/SCHEMA.md)")
    s.add_argument("--json", action="store_true", help="print JSON")

    s = sub.add_parser("ingest", help="parse vLLM traces / lifecycle data into validated tables")
    s.add_argument(
        "paths",
        nargs="+",
        help="trace files (OTLP JSON lines, kv_events.jsonl, inference-perf per-request JSON; .gz ok) of one run "
        "(with --experiment), or run directories, each holding its experiment YAML and trace files (without)",
    )
    s.add_argument(
        "--experiment",
        default=None,
        help="experiment YAML (server config + model + hardware + workload) of the trace files; "
        "omit it to ingest run directories, one Dask task each",
    )
    s.add_argument(
        "--out",
        required=True,
        type=out_dir,
        help="output directory for the Parquet tables and report.json (run directories: one subdirectory per experiment)",
    )
    s.add_argument("--json", action="store_true", help="print the ingest report as JSON")
    _dask_args(s, "run directories")

    s = sub.add_parser("fit", help="fit the hierarchical model with NUTS and write netCDF")
    s.add_argument(
        "--data", default="bundled", help="'bundled' (real data shipped with bayeslat) or a directory of ingested tables"
    )
    s.add_argument("--runs", nargs="*", default=None, help="restrict to these run ids (substring match)")
    s.add_argument("--exclude", nargs="*", default=None, help="exclude these run ids (substring match)")
    s.add_argument("--out", default="models/default.nc", type=out_file, help="netCDF output path")
    s.add_argument("--backend", default=None, choices=["nutpie", "pymc", "numpyro"], help="NUTS backend")
    s.add_argument("--draws", type=positive_int, default=None)
    s.add_argument("--tune", type=nonneg_int, default=None)
    s.add_argument("--chains", type=positive_int, default=None)
    s.add_argument("--seed", type=int, default=None, help="seed of the sampler (default 0)")
    s.add_argument(
        "--data-seed",
        type=int,
        default=0,
        help="seed of the rows the fit sees: reconstruction offsets and the stratified subsample (default 0; "
        "independent of --seed)",
    )
    s.add_argument(
        "--bins",
        type=bins_arg,
        default=FIT_BINS,
        help="the rows the likelihood sees: every row of each run and kind in bin means, TxD = T time slices "
        "x D design bins (default 4x8; 'none': raw rows, up to 300 per run and kind)",
    )
    s.add_argument(
        "--rows-per-run-kind",
        type=nonneg_int,
        default=0,
        help="a stratified subsample of this many raw rows per (run, kind) instead of bins (default 0: bins; "
        "raw rows need --target-accept 0.99)",
    )
    s.add_argument("--target-accept", type=probability, default=None, help="NUTS target acceptance (default 0.95)")
    s.add_argument(
        "--hardware",
        default="default",
        help="hardware level to attach: a `bayeslat hardware` fit (.nc), 'default' (the shipped models/hardware.nc) or 'none'",
    )
    s.add_argument("--no-progress", action="store_true")

    s = sub.add_parser(
        "hardware",
        help="fit the hardware level (per-GPU kernel efficiencies) to real kernel timings and write netCDF",
    )
    s.add_argument(
        "--kernels",
        default=None,
        help="kernel table: the bundled one (default), a parquet written by bayeslat.data.kernels.build, "
        "or a directory of aiconfigurator CSVs (compacted first, skipped rows reported)",
    )
    s.add_argument("--out", default="models/hardware.nc", type=out_file, help="netCDF output path")
    s.add_argument(
        "--per-family", type=positive_int, default=200, help="kernel shapes per family in the fit (the same on every GPU)"
    )
    s.add_argument("--draws", type=positive_int, default=1000)
    s.add_argument("--tune", type=nonneg_int, default=1000)
    s.add_argument("--chains", type=positive_int, default=2)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", action="store_true", help="print the efficiency table as JSON")
    s.add_argument("--no-progress", action="store_true")

    s = sub.add_parser(
        "calibrate",
        help="attach the out-of-sample probe calibration (leave-one-model-out refits) "
        "that `bayeslat update` weighs probes with, and the workload discrepancy (leave-one-workload-out "
        "refits) that widens predictions of unseen workloads: the last stage of the default fit",
    )
    s.add_argument("model", help="fitted netCDF of the bundled runs (`bayeslat fit`)")
    s.add_argument("--out", type=out_file, default=None, help="netCDF output path (default: overwrite MODEL)")
    s.add_argument("--probe-n", type=positive_int, default=200, help="requests per probe (default 200)")
    s.add_argument(
        "--probe-design",
        default="first",
        choices=["first", "stages"],
        help="probe: the first requests after warm-up, or spread over the run's load stages",
    )
    s.add_argument("--fit-dir", type=out_dir, default=None, help="cache directory of the fold refits")
    s.add_argument(
        "--draws",
        type=positive_int,
        default=None,
        help="NUTS draws of the fold refits (default: the package's sampler, as the shipped default's)",
    )
    s.add_argument("--tune", type=nonneg_int, default=None, help="NUTS tuning steps of the fold refits")
    s.add_argument("--seed", type=int, default=0, help="seed of the fold refits' rows and the probe replays")
    s.add_argument(
        "--no-workload",
        action="store_true",
        help="keep the fit's workload discrepancy (default: calibrate it on leave-one-workload-out refits)",
    )

    s = sub.add_parser("diagnose", help="R-hat, ESS, divergences, BFMI, tree depth, PSIS-LOO, ARD")
    s.add_argument("model", help="fitted netCDF")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("export", help="export posterior coefficients")
    s.add_argument("model", help="fitted netCDF")
    s.add_argument("--group", default=None, help="hardware/model_class[/regime], e.g. 'H100 SXM/dense'")
    s.add_argument("--format", default="json", choices=["json", "yaml", "blis"])
    s.add_argument(
        "--tp",
        type=positive_int,
        default=None,
        help="TP degree of the target deployment (blis: TP sync folded into b4, multi-process executor into "
        "a0); required, or --server, when the group's fit rows include TP > 1",
    )
    s.add_argument("--server", default=None, help="server config YAML of the target (its tensor_parallel, for --tp)")
    s.add_argument(
        "--out",
        type=out_file,
        default=None,
        help="write to this file instead of stdout (blis: the flags alone, as on stdout; comments on stderr)",
    )

    s = sub.add_parser("predict", help="posterior predictive TTFT / ITL / E2E of a workload")
    s.add_argument(
        "spec", nargs="+", help="SPEC.yaml naming model, hardware, server and workload (several: a sweep on Dask, one task each)"
    )
    s.add_argument("--model", default=None, help="fitted netCDF (default: the shipped default fit)")
    s.add_argument("--draws", type=positive_int, default=20)
    s.add_argument("--seed", type=nonneg_int, default=0)
    s.add_argument("--json", action="store_true")
    _dask_args(s, "several SPECs")

    s = sub.add_parser("validate", help="predict every real run and compare with the observed aggregates")
    s.add_argument(
        "--suite",
        default="replay",
        choices=VALIDATE_SUITES,
        help="replay (default) | aggregate | all | loro | lomo | lowo (cross-validation: refits) | external",
    )
    s.add_argument(
        "--external",
        nargs="+",
        default=None,
        metavar="PATH",
        help="real runs not bundled: a trainval-format JSON ({'runs': [...]}) or inference-perf experiment "
        "directories (exp-config.yaml, profile.yaml, results/); alone, the suite is 'external'",
    )
    s.add_argument(
        "--hardware",
        default=None,
        help="GPU of experiment directories whose exp-config.yaml names none (e.g. H100, A100-80, L40S)",
    )
    s.add_argument("--model", default=None, help="fitted netCDF (default: shipped default; CV modes refit)")
    s.add_argument("--draws", type=positive_int, default=8)
    s.add_argument("--runs", nargs="*", default=None, help="restrict to these runs (substring match)")
    s.add_argument("--out", default=None, type=out_file, help="write the JSON report here")
    s.add_argument("--json", action="store_true")
    s.add_argument("--no-progress", action="store_true", help="no progress lines on stderr (never on a non-terminal)")
    s.add_argument(
        "--no-workload-discrepancy",
        action="store_true",
        help="CV suites: predict the held-out runs without the (nested) workload discrepancy",
    )

    s = sub.add_parser("check", help="transfer-failure check of a configuration before deployment")
    s.add_argument("spec", nargs="+", help="SPEC.yaml (several: a sweep on Dask, one task each; not with --probe)")
    s.add_argument("--model", default=None)
    s.add_argument("--probe", nargs="+", default=None, help="probe traces / per-request data of a short run")
    s.add_argument("--draws", type=positive_int, default=20)
    s.add_argument("--json", action="store_true")
    _dask_args(s, "several SPECs")

    s = sub.add_parser("update", help="condition a fitted posterior on a probe run")
    s.add_argument("model", help="fitted netCDF")
    s.add_argument("--probe", nargs="+", required=True)
    s.add_argument("--spec", required=True, help="SPEC.yaml of the probed configuration")
    s.add_argument("--out", required=True, type=out_file, help="netCDF of the updated fit")
    s.add_argument(
        "--refit",
        action="store_true",
        help="refit every level on training + probe rows (minutes) instead of conditioning the "
        "probe's deployment level on it (seconds; the default)",
    )
    s.add_argument(
        "--when",
        default="auto",
        choices=UPDATE_WHEN_CHOICES,
        help="auto (default): update a deployment the fit has not seen always, a trained one only where "
        "the probe's check is not transfer-ok (updating trained deployments on agreeing probes "
        "made held-out workloads' predictions worse: benchmarks/probe_gate.py); needed: only where "
        "the check is not transfer-ok; always: every probe. Not updated: --out is the fit unchanged "
        "(with --refit too)",
    )
    s.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from bayeslat._version import __version__

        print(__version__)
        return 0
    if not args.command:
        parser.print_help()
        return 2
    from bayeslat.errors import BayeslatError

    module = importlib.import_module(f"bayeslat.cli.{args.command}")
    try:
        return int(module.run(args) or 0)
    except (BayeslatError, FileNotFoundError) as err:
        # one line whatever the message holds (an error text quoted from a parser may span several)
        msg = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
        print(f"bayeslat {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
