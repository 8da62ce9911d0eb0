"""Ingest throughput and memory on a synthetic OTLP JSON-lines trace (journey + step events).

    python benchmarks/ingest_throughput.py [--size-mb 1024 200 100] [--workers auto 0] [--out benchmarks/out/ingest_throughput.json]

Each size runs in a fresh subprocess (so ``ru_maxrss`` is that run's peak RSS): generate the trace
in a temp dir (exact instrumented-vLLM format, integers as strings), ingest it to Parquet with
``bayeslat.data.ingest.ingest(..., out=...)``, report events/s, MB/s and peak RSS. Peak RSS that does
not grow with the file size shows the streaming bound (every table streams to Parquet in chunks;
journey requests are written as soon as both spans are read, see ``bayeslat.data.ingest.otlp``).
``events_per_cpu_s`` uses the CPU time of the process and its worker processes: on shared cores
the wall-clock rate also measures the neighbours. ``--workers``: ``auto`` (ingest's default:
worker processes for the step lines when >= 3 CPUs are usable, see
``bayeslat.data.ingest.otlp.n_workers``) and/or fixed counts (0 = all in one process); one run per
(size, workers). ``peak_rss_mb`` is the main process's, ``peak_rss_worker_mb`` the largest
worker's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS_PER_LINE = 20  # BATCH_SUMMARY events per step span (+ as many REQUEST_SNAPSHOTs)


def _I(k, v):
    return '{"key":"%s","value":{"intValue":"%d"}}' % (k, v)


def generate(path: Path, size_mb: float) -> int:
    """Write ~size_mb of trace; return the number of span events written."""
    target = size_mb * (1 << 20)
    n_ev = written = 0
    step = 0
    t = 10**12
    req = 0
    with open(path, "w") as f:
        while written < target:
            # one step span of STEPS_PER_LINE summaries + snapshots (one step sampled in 3 skipped)
            evs = []
            for _ in range(STEPS_PER_LINE):
                step += 1 if step % 3 else 2
                t += 15_000_000
                a = ",".join(
                    [
                        _I("step.id", step),
                        _I("step.ts_start_ns", t),
                        _I("step.ts_end_ns", t + 500_000),
                        _I("step.duration_us", 500),
                        _I("queue.running_depth", 30),
                        _I("queue.waiting_depth", 2),
                        _I("batch.num_prefill_reqs", 1),
                        _I("batch.num_decode_reqs", 29),
                        _I("batch.scheduled_tokens", 541),
                        _I("batch.prefill_tokens", 512),
                        _I("batch.decode_tokens", 29),
                        _I("batch.num_finished", 1),
                        _I("batch.num_preempted", 0),
                        '{"key":"kv.usage_gpu_ratio","value":{"doubleValue":0.4321}}',
                        _I("kv.blocks_total_gpu", 7462),
                        _I("kv.blocks_free_gpu", 4000),
                    ]
                )
                evs.append('{"timeUnixNano":"%d","name":"step.BATCH_SUMMARY","attributes":[%s]}' % (t, a))
                a = ",".join(
                    [
                        _I("step.id", step),
                        '{"key":"request.id","value":{"stringValue":"cmpl-%d-0-ab12"}}' % req,
                        '{"key":"request.phase","value":{"stringValue":"DECODE"}}',
                        _I("request.num_prompt_tokens", 600),
                        _I("request.num_computed_tokens", 700),
                        _I("request.num_output_tokens", 100),
                        _I("request.num_preemptions", 0),
                        _I("request.scheduled_tokens_this_step", 1),
                        _I("kv.blocks_allocated_gpu", 44),
                        _I("kv.blocks_cached_gpu", 6),
                        _I("request.effective_prompt_len", 500),
                    ]
                )
                evs.append('{"timeUnixNano":"%d","name":"step.REQUEST_SNAPSHOT","attributes":[%s]}' % (t, a))
            n_ev += len(evs)
            line = (
                '{"resourceSpans":[{"resource":{"attributes":[]},"scopeSpans":[{"scope":{"name":"vllm.scheduler.step"},'
                '"spans":[{"name":"scheduler_steps_N","kind":1,"attributes":[],"events":[%s]}]}]}]}\n' % ",".join(evs)
            )
            # one request: api span + core span
            req += 1
            s = t / 1e9
            api = ",".join(
                '{"timeUnixNano":"0","name":"%s","attributes":[{"key":"event.ts.monotonic","value":{"doubleValue":%.9f}}]}'
                % (n, s + d)
                for n, d in (
                    ("api.ARRIVED", 0),
                    ("api.HANDOFF_TO_CORE", 0.001),
                    ("api.FIRST_RESPONSE", 0.1),
                    ("api.DEPARTED", 2.0),
                )
            )
            core = []
            for n, d, extra in (
                ("journey.QUEUED", 2, ""),
                ("journey.SCHEDULED", 3, ',{"key":"schedule.kind","value":{"stringValue":"FIRST"}}'),
                ("journey.FIRST_TOKEN", 90, ""),
                ("journey.FINISHED", 1990, ',{"key":"finish.status","value":{"stringValue":"FINISHED_LENGTH_CAPPED"}}'),
            ):
                tn = t + d * 1_000_000
                core.append(
                    '{"timeUnixNano":"0","name":"%s","attributes":[%s%s]}'
                    % (
                        n,
                        ",".join(
                            [
                                '{"key":"ts.monotonic","value":{"doubleValue":%.9f}}' % (tn / 1e9),
                                _I("ts.monotonic_ns", tn),
                                _I("scheduler.step", step),
                                '{"key":"phase","value":{"stringValue":"DECODE"}}',
                                _I("prefill.done_tokens", 600),
                                _I("prefill.total_tokens", 600),
                                _I("decode.done_tokens", 200),
                                _I("decode.max_tokens", 200),
                                _I("num_preemptions", 0),
                            ]
                        ),
                        extra,
                    )
                )
            n_ev += 8
            line += (
                '{"resourceSpans":[{"resource":{"attributes":[]},"scopeSpans":[{"scope":{"name":"vllm.api"},"spans":[{"spanId":"a%d","name":"llm_request",'
                '"attributes":[{"key":"gen_ai.request.id","value":{"stringValue":"cmpl-%d"}},%s,%s],"events":[%s]}]},'
                '{"scope":{"name":"vllm.scheduler"},"spans":[{"spanId":"c%d","parentSpanId":"a%d","name":"llm_core",'
                '"attributes":[{"key":"gen_ai.request.id","value":{"stringValue":"cmpl-%d-0-ab12"}}],"events":[%s]}]}]}]}\n'
                % (
                    req,
                    req,
                    _I("gen_ai.usage.prompt_tokens", 600),
                    _I("gen_ai.request.max_tokens", 200),
                    api,
                    req,
                    req,
                    req,
                    ",".join(core),
                )
            )
            f.write(line)
            written += len(line)
    return n_ev


def _parser() -> str:
    from bayeslat.data.ingest import _io

    return "orjson" if getattr(_io, "_fast_loads", None) is not None else "json"


def child(size_mb: float, workers: str = "auto", trace: str | None = None) -> dict:
    from bayeslat.data.ingest import ingest
    from bayeslat.data.ingest.otlp import n_workers

    with tempfile.TemporaryDirectory(prefix="bayeslat-bench-") as d:
        p = Path(trace) if trace else Path(d) / "trace.jsonl"
        t0 = time.perf_counter()
        n_ev = generate(p, size_mb) if not trace else int(Path(str(p) + ".events").read_text())
        tgen = time.perf_counter() - t0
        nbytes = p.stat().st_size
        w = None if workers == "auto" else int(workers)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        ch0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0, c0 = time.perf_counter(), time.process_time()
        r = ingest([p], out=Path(d) / "out", workers=w)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        ch = resource.getrusage(resource.RUSAGE_CHILDREN)
        dch = (ch.ru_utime + ch.ru_stime) - (ch0.ru_utime + ch0.ru_stime)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kept_events = sum(c["kept"] for k, c in r.report.files[str(p)].items() if "." in k)
        return {
            "size_mb": nbytes / 2**20,
            "events": n_ev,
            "events_kept": kept_events,
            "skipped": r.report.count(what="skipped"),
            "workers": n_workers(p, w),
            "gen_s": tgen,
            "ingest_s": dt,
            "events_per_s": n_ev / dt,
            "mb_per_s": nbytes / 2**20 / dt,
            "ingest_cpu_s": dc,
            "worker_cpu_s": dch,
            "events_per_cpu_s": n_ev / (dc + dch),
            "json_parser": _parser(),
            "cpus": len(os.sched_getaffinity(0)),
            "peak_rss_mb": rss / 1024,
            "peak_rss_worker_mb": ch.ru_maxrss / 1024,
            "rss_before_ingest_mb": rss0 / 1024,
            "tables": r.report.tables,
        }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=float, nargs="+", default=[1024, 200, 100])
    ap.add_argument("--workers", nargs="+", default=["auto"], help="'auto' and/or worker counts (0 = one process)")
    ap.add_argument("--trace-dir", default=None, help="keep the generated traces here (reused across worker settings)")
    ap.add_argument("--out", default="benchmarks/out/ingest_throughput.json")
    ap.add_argument("--_child", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_w", default="auto", help=argparse.SUPPRESS)
    ap.add_argument("--_trace", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._child is not None:
        print(json.dumps(child(a._child, a._w, a._trace)))
        return 0
    rows = []
    for s in a.size_mb:
        trace = None
        if a.trace_dir:
            Path(a.trace_dir).mkdir(parents=True, exist_ok=True)
            trace = Path(a.trace_dir) / f"trace_{s:g}mb.jsonl"
            if not trace.exists():
                Path(str(trace) + ".events").write_text(str(generate(trace, s)))
        for w in a.workers:
            cmd = [sys.executable, __file__, "--_child", str(s), "--_w", str(w)] + (["--_trace", str(trace)] if trace else [])
            out = subprocess.run(
                cmd,
                check=True,
                capture_output=True,
                text=True,
                env={
                    **os.environ,
                    "PYTHONPATH": os.pathsep.join(
                        [str(Path(__file__).resolve().parents[1])]
                        + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
                    ),
                },
            ).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]) | {"workers_arg": w})
    print(
        f"{'size MB':>9} {'workers':>7} {'events':>10} {'ingest s':>9} {'events/s':>10} {'ev/cpu-s':>10} {'MB/s':>7} "
        f"{'peak RSS MB':>12} {'worker RSS':>10}"
    )
    for r in rows:
        print(
            f"{r['size_mb']:>9.0f} {r['workers']:>7} {r['events']:>10} {r['ingest_s']:>9.1f} {r['events_per_s']:>10.0f} "
            f"{r.get('events_per_cpu_s', float('nan')):>10.0f} {r['mb_per_s']:>7.1f} {r['peak_rss_mb']:>12.0f} "
            f"{r.get('peak_rss_worker_mb', 0):>10.0f}"
        )
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"python": sys.version.split()[0], "cpu_count": os.cpu_count(), "runs": rows}, indent=1))
    print("written", a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
