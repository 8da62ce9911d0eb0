"""Many runs at once: each run directory (its experiment YAML and its trace files) is ingested by
one task on Dask (:func:`bayeslat.cluster.map_tasks`), into its own output directory.

A task is :func:`ingest_run`, a pure function of its files: its tables and report are those of
``ingest(paths, experiment, out)`` run alone, whatever the number of workers. Inside a task the
step lines are parsed in that task's process (``workers=0``): the cluster's workers are the
parallelism, and a task does not start processes of its own inside a Dask worker.
"""

from __future__ import annotations

from pathlib import Path

from bayeslat import cluster
from bayeslat.errors import IngestError

from ._io import detect_kind
from .experiment import load_experiment


def run_jobs(run_dirs, out_root) -> list[dict]:
    """One job per run directory: ``{"run_dir", "experiment", "paths", "out"}``. The experiment is
    the one file in the directory that reads as an experiment YAML (by content); every other file
    is a trace to ingest (its kind is detected by ``ingest``; a file of no kind is reported there).
    The output directory is ``out_root / <experiment name>``."""
    jobs, names = [], {}
    for d in map(Path, run_dirs):
        if not d.is_dir():
            raise IngestError("not a directory (a run directory holds an experiment YAML and its trace files)", file=str(d))
        files = sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith("."))
        exps = [p for p in files if detect_kind(p) == "experiment"]
        if len(exps) != 1:
            found = ", ".join(p.name for p in exps) or "none"
            raise IngestError(f"a run directory needs exactly one experiment YAML, found {found}", file=str(d))
        name = str(load_experiment(exps[0])["name"])
        if name in names:
            raise IngestError(f"experiment name {name!r} is also the name in {names[name]}", file=str(exps[0]), field="name")
        names[name] = str(exps[0])
        traces = [str(p) for p in files if p != exps[0]]
        if not traces:
            raise IngestError("the run directory has no trace file", file=str(d))
        jobs.append({"run_dir": str(d), "experiment": str(exps[0]), "paths": traces, "out": str(Path(out_root) / name)})
    return jobs


def ingest_run(job: dict) -> dict:
    """Ingest one run directory's job (:func:`run_jobs`): ``job`` plus its ``report``
    (:class:`IngestReport`)."""
    from . import ingest

    res = ingest(job["paths"], experiment=job["experiment"], out=job["out"], workers=0)
    return dict(job, report=res.report)


def ingest_many(run_dirs, out_root, *, workers: int | None = None, scheduler=None, progress=None) -> list[dict]:
    """Ingest every run directory of ``run_dirs`` into ``out_root/<experiment name>``, one Dask task
    each (:mod:`bayeslat.cluster`: ``workers`` local processes, or an existing ``scheduler``;
    ``workers=0``: in this process). Returns one dict per run directory, in order: the job and
    its ingest ``report``. Each output directory is what ``bayeslat fit --data`` reads."""
    jobs = run_jobs(run_dirs, out_root)
    return cluster.map_tasks(ingest_run, jobs, workers=workers, scheduler=scheduler, progress=progress)
