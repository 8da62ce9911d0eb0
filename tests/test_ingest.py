"""Exact parsing of hand-built traces (tests/data/traces) and one real replay run."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from bayeslat.errors import IngestError
from bayeslat.ingest import check_schema, cli_ingest, detect_kind, ingest, read_table, tables

TR = Path(__file__).parent / "data" / "traces"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
S0 = 1_000_000_000_000


@pytest.fixture(scope="module")
def res():
    return ingest([TR / "journey.jsonl", TR / "steps.jsonl", TR / "kv_events.jsonl"], experiment=TR / "experiment.yaml")


def test_schemas_hold(res):
    for name in tables.TABLES:
        check_schema(res[name], name)
    with pytest.raises(IngestError, match="dtype"):
        check_schema(res["steps"].astype({"step.id": "float64"}), "steps")


def test_requests_exact(res):
    r = res["requests"].set_index("request_id")
    assert list(r.index) == ["reqA", "reqB", "reqC"]
    a = r.loc["reqA"]
    assert (a.arrival_ns, a.handoff_ns, a.queued_ns, a.first_scheduled_ns) == (S0, S0 + 1_000_000, S0 + 2_000_000, S0 + 3_000_000)
    assert (a.first_token_ns, a.first_response_ns, a.finished_ns, a.departed_ns) == (S0 + 150_000_000, S0 + 200_000_000, S0 + 990_000_000, S0 + 1_000_000_000)
    assert (a.input_tokens, a.max_tokens, a.output_tokens, a.n_preemptions) == (100, 20, 20, 1)
    assert a.finish_status == "FINISHED_LENGTH_CAPPED" and not a.aborted and a.clock == "monotonic"
    assert a.ttft_ms == pytest.approx(200.0) and a.e2e_ms == pytest.approx(1000.0)
    b = r.loc["reqB"]  # aborted; core span joined by request-id prefix (no parentSpanId)
    assert b.aborted and b.has_error and b.finish_status == "FINISHED_ABORTED" and b.output_tokens == 0
    assert b.queued_ns == S0 + 502_000_000 and pd.isna(b.first_scheduled_ns) and pd.isna(b.first_response_ns)
    c = r.loc["reqC"]  # bad events skipped, good ones around them kept
    assert (c.first_token_ns, c.finished_ns, c.output_tokens, c.n_preemptions) == (S0 + 650_000_000, S0 + 695_000_000, 5, 0)
    assert list(r.arrival_us) == [0, 500_000, 600_000]
    assert str(res["requests"]["arrival_ns"].dtype) == "Int64"


def test_request_events_preempt_resume_and_chunked(res):
    e = res["request_events"]
    assert list(zip(e.request_id, e.event, e.step)) == [("reqA", "scheduled", 5), ("reqA", "preempted", 8),
                                                         ("reqA", "resumed", 10), ("reqC", "scheduled", 20)]
    assert list(e.seq) == [0, 1, 2, 0]
    assert list(e.decode_done_tokens) == [0, 6, 6, 0] and list(e.num_preemptions) == [0, 1, 1, 0]
    assert list(e.prefill_total_tokens) == [100, 100, 106, 3000]
    sr = res["step_requests"]  # chunked prefill: 2048 then 952 of 3000
    assert list(sr["step.id"]) == [20, 21]
    assert list(sr["request.num_computed_tokens"]) == [0, 2048]
    assert list(sr["request.scheduled_tokens_this_step"]) == [2048, 952]
    assert list(sr["kv.blocks_allocated_gpu"]) == [128, 188]


def test_steps_cycle_time_and_gap(res):
    s = res["steps"]
    assert list(s["step.id"]) == [20, 21, 23, 24]
    np.testing.assert_array_equal(s["cycle_time_us"].to_numpy(), [20_000.0, np.nan, 8_000.0, np.nan])
    assert list(s["successor_sampled"]) == [True, False, True, False]
    assert list(s["step.duration_us"]) == [500, 400, 300, 250]  # bookkeeping, kept as recorded
    assert list(s["batch.prefill_tokens"]) == [2048, 952, 0, 0]
    assert s["kv.usage_gpu_ratio"].dtype == np.float64


def test_kv_steps_dedup(res):
    k = res["kv_steps"]
    assert list(k.step) == [5, 6, 7, 8]
    assert list(k.blocks_stored_gpu) == [3, 0, 0, 0]
    assert list(k.transfers_initiated) == [1, 0, 0, 0]       # the repeat of t1 is not counted
    assert list(k.blocks_offloaded) == [0, 3, 0, 0]          # ... nor the repeated completion
    assert list(k.blocks_loaded) == [0, 0, 0, 4]
    assert list(k.bytes_offloaded) == [0.0, 3000.0, 0.0, 0.0]  # kv_block_bytes 1000 from the experiment
    assert list(k.blocks_removed_gpu) == [0, 0, 1, 0] and list(k.blocks_evicted) == [0, 0, 2, 0]
    assert list(k.n_events) == [2, 1, 2, 2]


def test_report_counts_and_reasons(res):
    rep = res.report
    j, st, kv = (str(TR / n) for n in ("journey.jsonl", "steps.jsonl", "kv_events.jsonl"))
    ex = lambda reason: rep.skipped[reason]["examples"]
    assert {k: v["count"] for k, v in rep.skipped.items()} == {
        "invalid_json": 1, "truncated_line": 1, "missing_attribute": 2, "reversed_timestamp": 2, "unknown_event": 3, "duplicate": 2}
    assert ex("invalid_json") == [f"{j}:4: invalid_json: Expecting ',' delimiter: line 1 column 38 (char 37)"]
    assert ex("truncated_line")[0].startswith(f"{j}:6: truncated_line")
    assert ex("missing_attribute") == [
        f"{j}:5: ts.monotonic_ns: missing_attribute: attributes ts.monotonic_ns and ts.monotonic are missing",
        f"{st}:2: step.ts_start_ns: missing_attribute: attribute step.ts_start_ns is missing"]
    assert ex("reversed_timestamp")[0].startswith(f"{j}:5: ts: reversed_timestamp: journey.PREEMPTED")
    assert ex("reversed_timestamp")[1].startswith(f"{st}:2: step.ts_end_ns: reversed_timestamp: step 30")
    assert ex("unknown_event") == [f"{j}:5: unknown_event: event 'journey.TELEPORTED' in span llm_core",
                                   f"{st}:2: unknown_event: event 'step.MYSTERY' in span scheduler_steps_1",
                                   f"{kv}:3: unknown_event: KV event 'Bogus'"]
    assert ex("duplicate") == [f"{kv}:2: duplicate: TransferInitiated of transfer t1 repeated",
                               f"{kv}:3: duplicate: TransferCompleted of transfer t1 repeated"]
    f = rep.to_dict()["files"]
    assert f[j]["records"]["line"] == {"kept": 4, "skipped": 2}
    assert f[st]["records"]["step.BATCH_SUMMARY"] == {"kept": 4, "skipped": 2}
    assert f[kv]["records"]["TransferCompleted"] == {"kept": 2, "skipped": 1}
    # every record accounted for: kept + skipped events of the journey file = events in the file
    n_events = sum(line.count('"timeUnixNano"') for line in open(j).read().splitlines()[:5] if line.startswith('{"resourceSpans"') and line.endswith("}"))
    jr = f[j]["records"]
    assert sum(v["kept"] + v["skipped"] for k, v in jr.items() if "." in k) == n_events
    assert rep.ok


def test_experiment_row(res):
    e = res["experiments"].iloc[0]
    assert (e.run, e.model, e.hardware, e.tensor_parallel, e.kv_blocks, e.cpu_offload_gb) == ("toy-run", "llama-2-7b-hf", "H100 SXM", 1, 1000, 4.0)
    assert json.loads(e.server_json)["max_num_batched_tokens"] == 2048 and bool(e.prefix_caching)


def test_gzip_by_magic_and_kind_detection(tmp_path):
    p = tmp_path / "trace_without_gz_suffix.jsonl"
    p.write_bytes(gzip.compress((TR / "steps.jsonl").read_bytes()))
    assert detect_kind(p) == "otlp" and detect_kind(TR / "kv_events.jsonl") == "kv_events"
    r = ingest([p])
    assert list(r["steps"]["step.id"]) == [20, 21, 23, 24] and r["steps"]["run"].iloc[0] == "trace_without_gz_suffix"


def test_upstream_span_real_line():
    r = ingest([SHARED / "otel" / "upstream_vllm_llm_request_span_real.json"])
    q = r["requests"].iloc[0]
    assert (q.source, q.clock, q.input_tokens, q.output_tokens, q.max_tokens) == ("upstream", "unix", 1527, 500, 500)
    assert q.ttft_ms == pytest.approx(273.9403, abs=1e-3) and pd.isna(q.queued_ns)


def test_cli_writes_parquet_and_exit_codes(tmp_path, capsys):
    args = SimpleNamespace(paths=[str(TR / "journey.jsonl"), str(TR / "steps.jsonl"), str(TR / "kv_events.jsonl")],
                           experiment=str(TR / "experiment.yaml"), out=str(tmp_path / "o"), json=True)
    assert cli_ingest(args) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["ok"] and rep["tables"]["steps"] == 4
    st = read_table(tmp_path / "o" / "steps.parquet", "steps")
    check_schema(st, "steps")
    assert list(st["successor_sampled"]) == [True, False, True, False]
    assert (tmp_path / "o" / "report.json").exists()
    args.paths = [str(tmp_path / "missing.jsonl")]
    assert cli_ingest(args) == 2


REPLAY = SHARED / "replay" / "20260217-155451-llama-2-7b-tp1-codegen.json.gz"


@pytest.mark.skipif(not REPLAY.exists(), reason="shared data not present")
def test_real_replay_run(tmp_path):
    exp = SHARED / "experiments" / "20260217-155451-llama-2-7b-tp1-codegen"
    gt = SHARED / "replay" / "20260217-155451-llama-2-7b-tp1-codegen_ground_truth.json.gz"
    r = ingest([REPLAY, gt, exp / "results" / "summary_lifecycle_metrics.json"], experiment=exp / "exp-config.yaml")
    q = r["requests"]
    check_schema(q, "requests")
    raw = json.load(gzip.open(REPLAY))["requests"]
    assert len(q) == len(raw) == 9000
    ok = ~q.has_error.astype(bool)
    assert (q.output_tokens[ok] == 247).all()  # repaired: profile output_len (ignore_eos)
    client = np.array([x["output_tokens"] for x in raw])
    assert (q.output_tokens_client.to_numpy() == client).all()
    assert (np.abs(client - 247) > 0.1 * 247).mean() > 0.05  # the client counts really are off
    assert q.ttft_ms.notna().all() and list(q.stage.unique()) == [0, 1]
    agg = next(iter(r.report.aggregates.values()))
    assert agg["n_success"] == 9000 and agg["time_to_first_token_ms"]["mean"] > 0
    e = r["experiments"].iloc[0]
    assert e.run == exp.name and e.tensor_parallel == 1 and e.max_num_batched_tokens == 2048
    # consistent with the bundled dataset built by bayeslat.datasets
    from bayeslat import datasets
    b = datasets.requests(exp.name)
    np.testing.assert_allclose(q.ttft_ms.to_numpy(), b.ttft_ms.to_numpy())
    assert (q.input_tokens.to_numpy() == b.input_tokens.to_numpy()).all()


# -- streaming journey join, fast paths, optional orjson -------------------------------------------
def _split_journey(tmp_path, order):
    """The fixture's reqA as separate api / core lines in ``order`` (with a filler line between)."""
    lines = (TR / "journey.jsonl").read_text().splitlines()
    api, core = json.loads(lines[0]), json.loads(lines[1])
    filler = json.dumps({"resourceSpans": []})
    body = {"api": json.dumps(api), "core": json.dumps(core)}
    p = tmp_path / "split.jsonl"
    p.write_text("\n".join([body[order[0]], filler, filler, body[order[1]]]) + "\n")
    return p


@pytest.mark.parametrize("order", [("api", "core"), ("core", "api")])
def test_journey_join_either_order(tmp_path, order):
    r = ingest([_split_journey(tmp_path, order)])
    q = r["requests"]
    assert list(q.request_id) == ["reqA"] and q.arrival_ns.iloc[0] == S0 and q.queued_ns.iloc[0] == S0 + 2_000_000
    assert q.output_tokens.iloc[0] == 20 and q.ttft_ms.iloc[0] == pytest.approx(200.0)
    assert list(r["request_events"].request_id) == ["reqA"] * 3
    assert "1 joined (0 by request-id prefix), 0 core-only, 0 api-only" in r.report.notes[-1]


def test_journey_idle_policy(tmp_path):
    # a partner further away than journey_idle_lines (+ the sweep granularity) is not joined
    p = _split_journey(tmp_path, ("core", "api"))
    lines = p.read_text().splitlines()
    p.write_text("\n".join([lines[0]] + [lines[1]] * 3000 + [lines[-1]]) + "\n")
    r = ingest([p], journey_idle_lines=10)
    q = r["requests"]
    assert list(q.request_id) == ["reqA-0-abc", "reqA"] and q.arrival_ns.isna().tolist() == [True, False]  # core-only, api-only
    assert "0 joined (0 by request-id prefix), 1 core-only, 1 api-only" in r.report.notes[-1]
    r = ingest([p], journey_idle_lines=None)  # hold until the end: joined
    assert list(r["requests"].request_id) == ["reqA"] and r["requests"].arrival_ns.iloc[0] == S0


def test_step_fast_path_matches_general_path(tmp_path):
    # reversed / extra / doubled attributes take other paths; the rows must not change
    out = []
    for line in (TR / "steps.jsonl").read_text().splitlines(keepends=True):
        try:
            d = json.loads(line)
        except ValueError:
            out.append(line)
            continue
        for r in d["resourceSpans"]:
            for ss in r["scopeSpans"]:
                for sp in ss["spans"]:
                    for ev in sp.get("events", []):
                        ev["attributes"] = ev.get("attributes", [])[::-1]
        out.append(json.dumps(d) + ("\n" if line.endswith("\n") else ""))
    p = tmp_path / "steps.jsonl"
    p.write_text("".join(out))
    a, b = ingest([TR / "steps.jsonl"]), ingest([p])
    pd.testing.assert_frame_equal(a["steps"].drop(columns="run"), b["steps"].drop(columns="run"))
    pd.testing.assert_frame_equal(a["step_requests"].drop(columns="run"), b["step_requests"].drop(columns="run"))
    assert a.report.skipped.keys() == b.report.skipped.keys()


def test_stdlib_json_fallback_same_result(monkeypatch, res):
    from bayeslat.ingest import _io, otlp
    monkeypatch.setattr(_io, "_fast_loads", None)
    monkeypatch.setattr(otlp, "_fast_loads", None)
    r = ingest([TR / "journey.jsonl", TR / "steps.jsonl", TR / "kv_events.jsonl"], experiment=TR / "experiment.yaml")
    for name in tables.TABLES:
        pd.testing.assert_frame_equal(r[name], res[name])
    assert r.report.to_dict() == res.report.to_dict()


REASONING = SHARED / "replay" / "20260217-170634-llama-2-7b-tp1-reasoning.json.gz"


@pytest.mark.skipif(not REASONING.exists(), reason="shared data not present")
def test_failed_replay_requests_agree_with_bundle():
    exp = SHARED / "experiments" / REASONING.name.replace(".json.gz", "")
    r = ingest([REASONING, Path(str(REASONING).replace(".json.gz", "_ground_truth.json.gz"))], experiment=exp / "exp-config.yaml")
    q = r["requests"]
    from bayeslat import datasets
    b = datasets.requests(exp.name)
    err = q.has_error.to_numpy(bool)
    assert err.sum() > 1000 and (err == b.has_error.to_numpy()).all()
    assert (q.output_tokens.to_numpy() == b.output_tokens.to_numpy()).all()  # failed: output_len in both
    assert (q.output_tokens[err] == datasets.run_info(exp.name)["output_len"]).all()
    for c in ("index", "arrival_us", "input_tokens", "input_imputed", "output_tokens_client", "stage"):
        assert (q[c].to_numpy() == b[c].to_numpy()).all(), c
    np.testing.assert_array_equal(q.ttft_ms.to_numpy(), b.ttft_ms.to_numpy())
    np.testing.assert_array_equal(q.e2e_ms.to_numpy(), b.e2e_ms.to_numpy())


def test_worker_processes_same_tables_and_report(tmp_path, monkeypatch):
    """Step lines parsed by worker processes (small blocks, so many are in flight) give exactly
    the tables and report of the in-process parse, also around bad lines and journey spans."""
    from bayeslat.ingest import otlp
    from tests.test_obs_from_tables import _run, write_trace

    if otlp.n_workers(TR / "steps.jsonl", 2) != 2:
        pytest.skip("workers need orjson and fork")
    req, steps = _run(n=60)
    write_trace(tmp_path / "gen.jsonl", req, steps)
    mixed = tmp_path / "mixed.jsonl"
    gen = (tmp_path / "gen.jsonl").read_text().splitlines(keepends=True)
    fx = [(TR / n).read_text() for n in ("steps.jsonl", "journey.jsonl")]
    mixed.write_text("".join(gen[:40]) + fx[0] + "".join(gen[40:]) + fx[1].rstrip("\n") + "\n" + "".join(gen[:5]))
    monkeypatch.setattr(otlp, "BLOCK_BYTES", 4096)
    seen = []
    orig = otlp.OtlpState._bulk_commit
    monkeypatch.setattr(otlp.OtlpState, "_bulk_commit", lambda self, *a: (seen.append(1), orig(self, *a))[1])
    by_worker = []
    par = otlp._parallel_lines

    def counted(*args, **kw):
        for lineno, raw, res in par(*args, **kw):
            by_worker.append(res is not None)
            yield lineno, raw, res
    monkeypatch.setattr(otlp, "_parallel_lines", counted)
    a = ingest([mixed], workers=0)
    n_seq = len(seen)
    b = ingest([mixed], workers=2)
    assert n_seq and len(seen) == 2 * n_seq  # the same spans took the bulk path ...
    assert sum(by_worker) > 20 and not all(by_worker)  # ... mostly in the workers; the rest in-process
    for name in tables.TABLES:
        pd.testing.assert_frame_equal(a[name], b[name])
    assert a.report.to_dict() == b.report.to_dict()
    assert a.report.skipped.keys() >= {"invalid_json", "missing_attribute", "unknown_event"}
