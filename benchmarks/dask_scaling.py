"""Dask paths against worker count: ingest of many run directories and a predict sweep over
deployments, on a local cluster of 1 and 2 worker processes, with the per-worker peak memory and an
extrapolation to a 64-worker cluster.

    python benchmarks/dask_scaling.py [--runs 10] [--size-mb 1024] [--workers 1 2] [--draws 10]
                                      [--out benchmarks/out/dask_scaling.json]

Ingest: ``--runs`` run directories, each an experiment YAML and a synthetic OTLP trace of
``--size-mb`` (``ingest_throughput.generate``: the exact instrumented-vLLM format), generated in a
temp dir (not committed) and ingested by ``bayeslat.data.ingest.many.ingest_many`` (one task per
run). Sweep: ``bayeslat.pipeline.predict_many`` over the example SPECs (one deployment each) x
``--seeds`` seeds. Each worker count gets a fresh local cluster; its start-up is timed apart. Peak
RSS is each worker process's own (VmHWM, reset on the workers before the ingest and read after it). The results
of 1 and 2 workers are compared (the same tables; the same predictions).

Extrapolation (on paper, ``_extrapolate``): per task a cost that does not parallelise (scheduling,
collecting the result) and work that does, solved from the 1- and 2-worker walls; a 64-worker
cluster is given 64x the tasks (each worker does what one worker does here). It assumes the
workers' files come from storage that serves 64 readers at the measured per-worker MB/s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest_throughput import generate  # noqa: E402

SPECS = sorted(str(p) for p in Path("specs/examples").glob("*.yaml"))
EXPERIMENT = (
    "name: {name}\nmodel: llama-2-7b-hf\nhardware: H100 SXM\nserver:\n  tensor_parallel: 1\n"
    "  max_num_batched_tokens: 2048\n  max_num_seqs: 256\n  block_size: 16\n  prefix_caching: false\n"
)


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux: ``clear_refs`` 5 resets VmHWM). A worker process can
    start with its parent's peak (``ru_maxrss`` is inherited across fork), so each worker count
    measures from here."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _tables(d: Path) -> dict:
    import pandas as pd

    return {str(p.relative_to(d)): pd.read_parquet(p) for p in sorted(d.rglob("*.parquet"))}


def _extrapolate(t1: float, t2: float, n_tasks: int, units: float) -> dict:
    """Per task, a cost ``c`` that does not parallelise (scheduling, collecting the result in this
    process) and work ``w`` that does: ``T(N) = n (c + w / N)`` for n tasks on N workers, solved
    from the walls of 1 and 2 workers. A 64-worker cluster given 64x the tasks: ``64 n c + n w``."""
    w = max(2 * (t1 - t2) / n_tasks, 0.0)
    c = max(t1 / n_tasks - w, 0.0)
    wall = 64 * n_tasks * c + n_tasks * w
    return {
        "per_task_serial_s": c,
        "per_task_parallel_s": w,
        "speedup_2": t1 / t2,
        "wall_64_workers_64x_tasks_s": wall,
        "rate_64_workers": 64 * units / wall if wall > 0 else float("nan"),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--size-mb", type=float, default=1024)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/out/dask_scaling.json")
    a = ap.parse_args(argv)

    from distributed import Client, LocalCluster

    from bayeslat import pipeline
    from bayeslat.data.ingest.many import ingest_many

    res: dict = {"cpus": len(os.sched_getaffinity(0)), "runs": a.runs, "size_mb": a.size_mb, "ingest": {}, "sweep": {}}
    with tempfile.TemporaryDirectory(prefix="bayeslat-dask-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        dirs, events = [], 0
        for i in range(a.runs):
            d = tmp / "runs" / f"run{i:03d}"
            d.mkdir(parents=True)
            events += generate(d / "trace.jsonl", a.size_mb)
            (d / "exp.yaml").write_text(EXPERIMENT.format(name=f"synth-{i:03d}"))
            dirs.append(d)
        nbytes = sum((d / "trace.jsonl").stat().st_size for d in dirs)
        res |= {"generate_s": time.perf_counter() - t0, "events": events, "trace_gb": nbytes / 2**30}
        items = [s for s in SPECS for _ in range(a.seeds)]
        first_tables = first_preds = None
        for w in a.workers:
            t0 = time.perf_counter()
            with LocalCluster(n_workers=w, threads_per_worker=1, dashboard_address=":0") as cl, Client(cl) as client:
                start = time.perf_counter() - t0
                out = tmp / f"out{w}"
                reset = all(client.run(_reset_peak_rss).values())
                t0 = time.perf_counter()
                done = ingest_many(dirs, out, scheduler=client)
                wall = time.perf_counter() - t0
                rss = client.run(_peak_rss_mb)
                kept = sum(c["kept"] for j in done for f in j["report"].files.values() for k, c in f.items() if "." in k)
                res["ingest"][w] = {
                    "cluster_start_s": start,
                    "wall_s": wall,
                    "events_per_s": events / wall,
                    "mb_per_s": nbytes / 2**20 / wall,
                    "events_kept": kept,
                    "peak_rss_worker_mb": max(rss.values()),
                    "peak_rss_reset_before": reset,
                }
                tabs = _tables(out)
                if first_tables is None:
                    first_tables = tabs
                else:
                    same = set(tabs) == set(first_tables) and all(tabs[k].equals(first_tables[k]) for k in tabs)
                    res["ingest"][w]["same_tables_as_first"] = bool(same)
                t0 = time.perf_counter()
                preds = []
                for seed in range(a.seeds):
                    preds += pipeline.predict_many(SPECS, draws=a.draws, seed=seed, scheduler=client)
                wall = time.perf_counter() - t0
                res["sweep"][w] = {"wall_s": wall, "deployments": len(items), "deployments_per_s": len(items) / wall}
                key = [(p["spec"], p["e2e_ms"]["mean"], p["ttft_ms"]["mean"]) for p in preds]
                if first_preds is None:
                    first_preds = key
                else:
                    res["sweep"][w]["same_predictions_as_first"] = key == first_preds
    ws = a.workers
    if 1 in ws and 2 in ws:
        res["ingest_64"] = _extrapolate(res["ingest"][1]["wall_s"], res["ingest"][2]["wall_s"], a.runs, events)
        res["sweep_64"] = _extrapolate(res["sweep"][1]["wall_s"], res["sweep"][2]["wall_s"], len(items), len(items))
    print(f"ingest: {a.runs} runs x {a.size_mb:g} MB ({res['trace_gb']:.2f} GB, {events:,} events); {res['cpus']} CPUs")
    print(f"{'workers':>7} {'start s':>8} {'wall s':>8} {'events/s':>10} {'MB/s':>7} {'peak RSS/worker MB':>19} {'same':>5}")
    for w, r in res["ingest"].items():
        print(
            f"{w:>7} {r['cluster_start_s']:>8.1f} {r['wall_s']:>8.1f} {r['events_per_s']:>10.0f} {r['mb_per_s']:>7.1f} "
            f"{r['peak_rss_worker_mb']:>19.0f} {str(r.get('same_tables_as_first', '-')):>5}"
        )
    print(f"predict sweep: {len(items)} deployments x {a.draws} draws")
    print(f"{'workers':>7} {'wall s':>8} {'deployments/s':>14} {'same':>5}")
    for w, r in res["sweep"].items():
        print(f"{w:>7} {r['wall_s']:>8.1f} {r['deployments_per_s']:>14.2f} {str(r.get('same_predictions_as_first', '-')):>5}")
    for k, unit in (("ingest_64", "events/s"), ("sweep_64", "deployments/s")):
        if k in res:
            e = res[k]
            print(
                f"{k}: per task {e['per_task_serial_s']:.2f} s serial + {e['per_task_parallel_s']:.2f} s parallel "
                f"(speed-up at 2: x{e['speedup_2']:.2f}) -> 64 workers, 64x the tasks: {e['rate_64_workers']:,.0f} {unit}"
            )
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1, default=str))
    print("written", a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
