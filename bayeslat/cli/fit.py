"""``bayeslat fit``: build the training rows, run the fit pipeline, write the netCDF fit and print a
one-line summary."""

from __future__ import annotations

import sys

from bayeslat import model, pipeline
from bayeslat.data import design


def _data_seed(args) -> int:
    """The seed of the rows a fit sees (the reconstruction's offset estimate and the stratified
    subsample), kept apart from the sampler's ``--seed`` so that changing the MCMC seed never
    changes the data."""
    v = getattr(args, "data_seed", None)
    return 0 if v is None else int(v) % 2**32


def _data_args(args) -> dict:
    return {
        "runs": args.runs,
        "exclude": args.exclude,
        "data_seed": _data_seed(args),
        "rows_per_run_kind": getattr(args, "rows_per_run_kind", None),
        "bins": getattr(args, "bins", design.BINS),  # (None: raw rows)
    }


def _load_obs(args):
    return pipeline.training_obs(args.data, **_data_args(args))


def _stage_line(line: str) -> None:
    print(f"bayeslat fit: {line}", file=sys.stderr, flush=True)


def run(args) -> int:
    obs = _load_obs(args)
    seed = 0 if args.seed is None else args.seed
    print(model.blas_note(args.backend or model.DEFAULT_BACKEND), file=sys.stderr)
    # the simulator-discrepancy stage replays bundled runs: it runs for --data bundled
    idata = pipeline.fit(
        obs,
        seed=seed,
        discrepancy=args.data == "bundled",
        backend=args.backend,
        draws=args.draws,
        tune=args.tune,
        chains=args.chains,
        progressbar=not args.no_progress,
        attrs=pipeline.fit_attrs(args.data, **_data_args(args)),
        target_accept=getattr(args, "target_accept", None),
        hardware=None if getattr(args, "hardware", "default") == "none" else getattr(args, "hardware", "default"),
        log=None if args.no_progress or not sys.stderr.isatty() else _stage_line,
    )
    path = model.save(idata, args.out)
    div = int(idata.sample_stats["diverging"].sum()) if "diverging" in idata.sample_stats else -1
    print(
        f"wrote {path}: {len(obs.y)} rows ({int(obs.n_rows.sum()):,} raw rows), backend {idata.attrs['backend']}, "
        f"{idata.attrs['sampling_seconds']:.1f} s sampling, {div} divergences"
    )
    return 0
