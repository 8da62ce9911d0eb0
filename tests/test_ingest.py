"""Exact parsing of hand-built traces (tests/data/traces) and one real replay run."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from bayeslat.cli.ingest import run as cli_ingest
from bayeslat.data.ingest import check_schema, detect_kind, ingest, read_table, tables
from bayeslat.errors import IngestError

TR = Path(__file__).parent / "data" / "traces"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# a real upstream vLLM request span line (copied from shared/data/otel: the tests need no checkout beside this one)
UPSTREAM = Path(__file__).parent / "data" / "otel" / "upstream_vllm_llm_request_span_real.json"
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
    assert (a.first_token_ns, a.first_response_ns, a.finished_ns, a.departed_ns) == (
        S0 + 150_000_000,
        S0 + 200_000_000,
        S0 + 990_000_000,
        S0 + 1_000_000_000,
    )
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
    assert list(zip(e.request_id, e.event, e.step)) == [
        ("reqA", "scheduled", 5),
        ("reqA", "preempted", 8),
        ("reqA", "resumed", 10),
        ("reqC", "scheduled", 20),
    ]
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
    assert list(k.transfers_initiated) == [1, 0, 0, 0]  # the repeat of t1 is not counted
    assert list(k.blocks_offloaded) == [0, 3, 0, 0]  # ... nor the repeated completion
    assert list(k.blocks_loaded) == [0, 0, 0, 4]
    assert list(k.bytes_offloaded) == [0.0, 3000.0, 0.0, 0.0]  # kv_block_bytes 1000 from the experiment
    assert list(k.blocks_removed_gpu) == [0, 0, 1, 0] and list(k.blocks_evicted) == [0, 0, 2, 0]
    assert list(k.n_events) == [2, 1, 2, 2]


def test_report_counts_and_reasons(res):
    rep = res.report
    j, st, kv = (str(TR / n) for n in ("journey.jsonl", "steps.jsonl", "kv_events.jsonl"))
    ex = lambda reason: rep.skipped[reason]["examples"]
    assert {k: v["count"] for k, v in rep.skipped.items()} == {
        "invalid_json": 1,
        "truncated_line": 1,
        "missing_attribute": 2,
        "reversed_timestamp": 2,
        "unknown_event": 3,
        "duplicate": 2,
    }
    assert ex("invalid_json") == [f"{j}:4: invalid_json: Expecting ',' delimiter: line 1 column 38 (char 37)"]
    assert ex("truncated_line")[0].startswith(f"{j}:6: truncated_line")
    assert ex("missing_attribute") == [
        f"{j}:5: ts.monotonic_ns: missing_attribute: attributes ts.monotonic_ns and ts.monotonic are missing",
        f"{st}:2: step.ts_start_ns: missing_attribute: attribute step.ts_start_ns is missing",
    ]
    assert ex("reversed_timestamp")[0].startswith(f"{j}:5: ts: reversed_timestamp: journey.PREEMPTED")
    assert ex("reversed_timestamp")[1].startswith(f"{st}:2: step.ts_end_ns: reversed_timestamp: step 30")
    assert ex("unknown_event") == [
        f"{j}:5: unknown_event: event 'journey.TELEPORTED' in span llm_core",
        f"{st}:2: unknown_event: event 'step.MYSTERY' in span scheduler_steps_1",
        f"{kv}:3: unknown_event: KV event 'Bogus'",
    ]
    assert ex("duplicate") == [
        f"{kv}:2: duplicate: TransferInitiated of transfer t1 repeated",
        f"{kv}:3: duplicate: TransferCompleted of transfer t1 repeated",
    ]
    f = rep.to_dict()["files"]
    assert f[j]["records"]["line"] == {"kept": 4, "skipped": 2}
    assert f[st]["records"]["step.BATCH_SUMMARY"] == {"kept": 4, "skipped": 2}
    assert f[kv]["records"]["TransferCompleted"] == {"kept": 2, "skipped": 1}
    # every record accounted for: kept + skipped events of the journey file = events in the file
    n_events = sum(
        line.count('"timeUnixNano"')
        for line in open(j).read().splitlines()[:5]
        if line.startswith('{"resourceSpans"') and line.endswith("}")
    )
    jr = f[j]["records"]
    assert sum(v["kept"] + v["skipped"] for k, v in jr.items() if "." in k) == n_events
    assert rep.ok


def test_experiment_row(res):
    e = res["experiments"].iloc[0]
    assert (e.run, e.model, e.hardware, e.tensor_parallel, e.kv_blocks, e.cpu_offload_gb) == (
        "toy-run",
        "llama-2-7b-hf",
        "H100 SXM",
        1,
        1000,
        4.0,
    )
    assert json.loads(e.server_json)["max_num_batched_tokens"] == 2048 and bool(e.prefix_caching)


def test_gzip_by_magic_and_kind_detection(tmp_path):
    p = tmp_path / "trace_without_gz_suffix.jsonl"
    p.write_bytes(gzip.compress((TR / "steps.jsonl").read_bytes()))
    assert detect_kind(p) == "otlp" and detect_kind(TR / "kv_events.jsonl") == "kv_events"
    r = ingest([p])
    assert list(r["steps"]["step.id"]) == [20, 21, 23, 24] and r["steps"]["run"].iloc[0] == "trace_without_gz_suffix"


def test_upstream_span_real_line():
    r = ingest([UPSTREAM])
    q = r["requests"].iloc[0]
    assert (q.source, q.clock, q.input_tokens, q.output_tokens, q.max_tokens) == ("upstream", "unix", 1527, 500, 500)
    assert q.ttft_ms == pytest.approx(273.9403, abs=1e-3) and pd.isna(q.queued_ns)


def test_cli_writes_parquet_and_exit_codes(tmp_path, capsys):
    args = SimpleNamespace(
        paths=[str(TR / "journey.jsonl"), str(TR / "steps.jsonl"), str(TR / "kv_events.jsonl")],
        experiment=str(TR / "experiment.yaml"),
        out=str(tmp_path / "o"),
        json=True,
    )
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
    summ = json.loads((exp / "results" / "summary_lifecycle_metrics.json").read_text())["successes"]
    assert agg["n_success"] == summ["count"] == 9000
    # seconds in the file, ms in the report
    assert agg["time_to_first_token_ms"]["mean"] == pytest.approx(1000 * summ["latency"]["time_to_first_token"]["mean"])
    e = r["experiments"].iloc[0]
    assert e.run == exp.name and e.tensor_parallel == 1 and e.max_num_batched_tokens == 2048
    # consistent with the bundled dataset built by bayeslat.data.datasets
    from bayeslat.data import datasets

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


@pytest.mark.parametrize(
    "value",
    [
        "1e3",
        "true",
        "false",
        "-5",
        " 7",
        "1_000",
        "007",
        "+5",
        "-0",
        "null",
        "[1]",
        "1,2",
        "",
        "abc",
        "1.5",
        "9223372036854775807",
        7,
        None,
        True,
        1.5,
        "9223372036854775808",
        "-9223372036854775809",
        "18446744073709551615",
        "99999999999999999999",
        10**20,
    ],
)
def test_step_fast_paths_exact_for_odd_integers(tmp_path, monkeypatch, value):
    # one odd intValue in a summary and in a snapshot: the fast paths (whole span, event by
    # event) give the general path's rows and report, whatever the value
    from bayeslat.data.ingest import otlp_steps

    d = json.loads((TR / "steps.jsonl").read_text().splitlines()[0])
    events = d["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["events"]
    lines = [json.dumps(d)]
    for ev, key in ((events[0], "batch.prefill_tokens"), (events[1], "request.num_output_tokens"), (events[2], "step.ts_end_ns")):
        for a in ev["attributes"]:
            if a["key"] == key:
                old, a["value"] = a["value"], {"intValue": value}
                lines.append(json.dumps(d))
                a["value"] = old
    p = tmp_path / "steps.jsonl"
    p.write_text("\n".join(lines) + "\n")
    fast = ingest([p])
    monkeypatch.setattr(otlp_steps, "_plan", lambda en, keys: False)  # no fast path: every event the general way
    general = ingest([p])
    for name in ("steps", "step_requests"):
        pd.testing.assert_frame_equal(fast[name], general[name])
    assert fast.report.to_dict() == general.report.to_dict()


def test_stdlib_json_fallback_same_result(monkeypatch, res):
    from bayeslat.data.ingest import _io, otlp_columns, otlp_parallel

    monkeypatch.setattr(_io, "_fast_loads", None)
    monkeypatch.setattr(otlp_columns, "_fast_loads", None)
    monkeypatch.setattr(otlp_parallel, "_fast_loads", None)
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
    from bayeslat.data import datasets

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
    from bayeslat.data.ingest import otlp, otlp_parallel
    from tests.test_obs_from_tables import _run, write_trace

    if otlp.n_workers(TR / "steps.jsonl", 2) != 2:
        pytest.skip("workers need orjson and fork")
    req, steps = _run(n=60)
    write_trace(tmp_path / "gen.jsonl", req, steps)
    mixed = tmp_path / "mixed.jsonl"
    gen = (tmp_path / "gen.jsonl").read_text().splitlines(keepends=True)
    fx = [(TR / n).read_text() for n in ("steps.jsonl", "journey.jsonl")]
    mixed.write_text("".join(gen[:40]) + fx[0] + "".join(gen[40:]) + fx[1].rstrip("\n") + "\n" + "".join(gen[:5]))
    monkeypatch.setattr(otlp_parallel, "BLOCK_BYTES", 4096)
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


# -- values out of the int64 range / of the wrong type: reported, never a crash -------------------
BIG = "99999999999999999999"  # > int64 and > uint64 (orjson rejects it)


def _with_value(line: str, event: int | None, key: str, value: dict) -> str:
    """``line`` (an OTLP JSON line of the fixtures) with the value of attribute ``key`` of event
    number ``event`` of its first span (``None``: of the span itself) replaced by ``value``."""
    d = json.loads(line)
    sp = d["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    lst = sp["attributes"] if event is None else sp["events"][event]["attributes"]
    [a] = [a for a in lst if a["key"] == key]
    a["value"] = value
    return json.dumps(d)


def _bad_values_trace(tmp_path):
    steps = (TR / "steps.jsonl").read_text().splitlines()[0]  # events: sum 20, snap 20, sum 21, snap 21, sum 23
    api, core = (TR / "journey.jsonl").read_text().splitlines()[:2]
    lines = [
        steps,
        _with_value(steps, 0, "batch.prefill_tokens", {"intValue": BIG}),
        _with_value(steps, 2, "batch.decode_tokens", {"doubleValue": 1e20}),  # in an integer column
        _with_value(steps, 1, "request.phase", {"intValue": "3"}),
        _with_value(steps, 3, "request.phase", {"boolValue": True}),
        _with_value(steps, 4, "step.ts_end_ns", {"intValue": "9223372036854775808"}),  # int64 max + 1
        _with_value(steps, 1, "request.num_output_tokens", {"intValue": "-9223372036854775809"}),
        _with_value(steps, 2, "kv.usage_gpu_ratio", {"stringValue": "0.5"}),  # not a number
        _with_value(api, 0, "event.ts.monotonic", {"doubleValue": 1e20}),  # s -> ns beyond int64
        _with_value(core, 0, "ts.monotonic_ns", {"intValue": BIG}),
        steps,
    ]
    p = tmp_path / "bad_values.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_out_of_range_and_mistyped_values_reported_not_fatal(tmp_path, monkeypatch):
    """An integer outside int64 (intValue, or an integral doubleValue in an integer column) and a
    non-string request.phase (or a non-numeric ratio) skip their event as a bad value of that field (file, line, field);
    the records around them are kept. The fast paths (bulk span, event by event), the general
    path and worker processes give the same tables and report."""
    from bayeslat.data.ingest import otlp, otlp_parallel, otlp_steps

    p = _bad_values_trace(tmp_path)
    fast = ingest([p])
    rep = fast.report
    assert rep.skipped.keys() == {"bad_value"} and rep.skipped["bad_value"]["count"] == 9
    assert rep.skipped["bad_value"]["examples"] == [
        f"{p}:2: batch.prefill_tokens: bad_value: attribute batch.prefill_tokens='{BIG}' is outside the int64 range",
        f"{p}:3: batch.decode_tokens: bad_value: attribute batch.decode_tokens=1e+20 is outside the int64 range",
        f"{p}:4: request.phase: bad_value: attribute request.phase=3 is not a string",
        f"{p}:5: request.phase: bad_value: attribute request.phase=True is not a string",
        f"{p}:6: step.ts_end_ns: bad_value: attribute step.ts_end_ns='9223372036854775808' is outside the int64 range",
    ]
    recs = rep.to_dict()["files"][str(p)]["records"]
    assert recs["step.BATCH_SUMMARY"] == {"kept": 9 * 3 - 4, "skipped": 4}
    assert recs["step.REQUEST_SNAPSHOT"] == {"kept": 9 * 2 - 3, "skipped": 3}
    assert recs["api.ARRIVED"] == {"kept": 0, "skipped": 1} and recs["journey.QUEUED"] == {"kept": 0, "skipped": 1}
    assert len(fast["steps"]) == 23 and len(fast["step_requests"]) == 15
    assert list(fast["steps"]["step.id"][:3]) == [20, 21, 23] and list(fast["steps"]["step.id"][-3:]) == [20, 21, 23]
    q = fast["requests"]  # the journey request is kept, joined, without the two bad times
    assert list(q.request_id) == ["reqA"] and pd.isna(q.arrival_ns.iloc[0]) and pd.isna(q.queued_ns.iloc[0])
    assert q.departed_ns.iloc[0] == S0 + 1_000_000_000 and q.first_scheduled_ns.iloc[0] == S0 + 3_000_000
    runs = {"fast": fast}
    if otlp.n_workers(p, 2) == 2:
        monkeypatch.setattr(otlp_parallel, "BLOCK_BYTES", 4096)  # a block per line
        runs["workers"] = ingest([p], workers=2)
    monkeypatch.setattr(otlp_steps, "_plan", lambda en, keys: False)  # no fast path: every event the general way
    runs["general"] = ingest([p], workers=0)
    for k, r in runs.items():
        for name in tables.TABLES:
            pd.testing.assert_frame_equal(r[name], fast[name], obj=f"{k} {name}")
        assert r.report.to_dict() == rep.to_dict(), k


@pytest.mark.parametrize("source, field", [("api", "gen_ai.usage.prompt_tokens"), ("upstream", "startTimeUnixNano")])
def test_out_of_range_span_values_reported(tmp_path, source, field):
    # a span-level integer beyond int64: the span is skipped as a bad value of that field
    if source == "api":
        text = _with_value((TR / "journey.jsonl").read_text().splitlines()[0], None, field, {"intValue": BIG})
    else:
        if not UPSTREAM.exists():
            pytest.skip("shared data not present")
        d = json.loads(UPSTREAM.read_text())
        d["resourceSpans"][0]["scopeSpans"][0]["spans"][0][field] = BIG
        text = json.dumps(d)
    p = tmp_path / "t.jsonl"
    p.write_text(text + "\n")
    r = ingest([p])
    assert r.report.skipped.keys() == {"bad_value"}
    assert r.report.skipped["bad_value"]["examples"] == [
        f"{p}:1: {field}: bad_value: {'attribute ' if source == 'api' else ''}{field}='{BIG}' is outside the int64 range"
    ]
    assert len(r["requests"]) == 0


_WORKER_SCRIPT = r"""
import json, multiprocessing, os, sys
from pathlib import Path
from bayeslat.data.ingest import ingest, otlp, otlp_parallel, tables

p = Path(sys.argv[1])
otlp_parallel.BLOCK_BYTES = 4096  # a block per line: many blocks in flight
ref = ingest([p], workers=0)

# a worker that raises on a block, one that dies: their blocks are parsed in-process, same result
real = otlp_parallel._work_block
def flaky(raws):
    if any(b"scheduler_steps_boom" in r for r in raws):
        raise RuntimeError("boom in a worker")
    if any(b"scheduler_steps_die" in r for r in raws):
        os._exit(3)
    return real(raws)
otlp_parallel._work_block = flaky
r = ingest([p], workers=2)
for name in tables.TABLES:
    assert r[name].equals(ref[name]), name
d, e = r.report.to_dict(), ref.report.to_dict()
assert d["files"] == e["files"] and d["skipped"] == e["skipped"]
notes = "\n".join(r.report.notes)
assert "boom in a worker" in notes and "exit code 3" in notes, notes
assert not multiprocessing.active_children()
print("OK worker failures", flush=True)

# an exception escaping parse_file while the workers run: it surfaces at once, workers reaped
otlp_parallel._work_block = real
orig, calls = otlp.OtlpState._bulk_commit, [0]
def failing(self, *a):
    calls[0] += 1
    if calls[0] == 3:
        raise RuntimeError("commit failed")
    return orig(self, *a)
otlp.OtlpState._bulk_commit = failing
try:
    ingest([p], workers=2)
    raise AssertionError("no exception")
except RuntimeError as e:
    assert "commit failed" in str(e)
assert not multiprocessing.active_children()
print("OK escaping exception", flush=True)
calls[0] = 0
ingest([p], workers=2)  # uncaught: the interpreter exits with it (and must not hang)
"""


def test_worker_failures_surface_without_hanging(tmp_path):
    """With 2 worker processes forced on: a worker raising on a block or dying leaves the result
    unchanged (the block is parsed in-process, noted in the report); an exception escaping the
    parse surfaces at once, the workers are ended, and the interpreter exits. Run in a subprocess
    with a timeout so that a hang fails the test."""
    import subprocess
    import sys

    from bayeslat.data.ingest import otlp

    if otlp.n_workers(TR / "steps.jsonl", 2) != 2:
        pytest.skip("workers need orjson and fork")
    steps = (TR / "steps.jsonl").read_text().splitlines()[0]
    boom, die = (steps.replace('"scheduler_steps_0"', f'"scheduler_steps_{s}"') for s in ("boom", "die"))
    bad = _with_value(steps, 0, "batch.prefill_tokens", {"intValue": BIG})
    journey = (TR / "journey.jsonl").read_text().splitlines()[:2]
    p = tmp_path / "w.jsonl"
    p.write_text("\n".join([steps] * 10 + [boom] + [steps] * 5 + journey + [bad, die] + [steps] * 10) + "\n")
    try:
        out = subprocess.run(
            [sys.executable, "-c", _WORKER_SCRIPT, str(p)],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=Path(__file__).resolve().parents[1],
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"ingest with workers hung: {e.stdout!r} {e.stderr!r}")
    assert out.stdout.split("\n")[:2] == ["OK worker failures", "OK escaping exception"], out.stderr
    assert out.returncode == 1 and out.stderr.rstrip().endswith("RuntimeError: commit failed"), out.stderr


def test_malformed_otlp_structure_is_reported_not_raised(tmp_path):
    """resourceSpans / scopeSpans / spans entries of the wrong type are skipped with their line
    (they used to raise AttributeError); the good span on the same line is still read."""
    lines = (TR / "journey.jsonl").read_text().splitlines()
    good = json.loads(lines[0])
    good["resourceSpans"] += [
        "oops",
        {"scopeSpans": 5},
        {"scopeSpans": [7, {"scope": "x", "spans": []}, {"scope": {"name": "vllm.api"}, "spans": [3]}]},
    ]
    p = tmp_path / "bad_structure.jsonl"
    p.write_text(json.dumps(good) + "\n" + lines[1] + "\n")
    r = ingest([p])
    assert list(r["requests"].request_id) == ["reqA"]
    bad = r.report.skipped["bad_value"]
    assert bad["count"] == 5, bad
    assert all(e.startswith(f"{p}:1: ") for e in bad["examples"]), bad["examples"]
