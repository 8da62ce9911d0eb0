"""A tiny exact vLLM-like server (decode first, FCFS, chunked prefill, known step and alpha times)
and a writer of its run in the instrumented vLLM's OTLP trace format (journey api + core spans,
sampled BATCH_SUMMARY steps with REQUEST_SNAPSHOTs): test data of known truth for the ingest ->
tables -> rows path (test_obs_from_tables) and for trace probes (test_transfer)."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import numpy as np

from bayeslat import features as F

T0_NS = 5_000_000_000_000  # monotonic clock of the "server"
STREAM_NS = 1_000_000  # FIRST_TOKEN -> FIRST_RESPONSE (API streaming)
DEPART_NS = 500_000  # FINISHED -> DEPARTED
BUDGET, MAX_SEQS = 512, 64


def _run(n=160, rate=20.0, seed=3, step_scale=1.0, alpha_scale=1.0):
    """Exact step-level run. Returns (requests dict of arrays, steps list of dicts). Step time
    ``step_scale * (8 ms + 4 us per scheduled token + 30 us per decode)``, alpha delay ``alpha_scale *
    (2 ms + 3 us per prompt token)``."""
    rng = np.random.default_rng(seed)
    arr = np.cumsum(rng.exponential(1e9 / rate, n)).astype(np.int64)
    arr -= arr[0]
    prompt = rng.integers(40, 700, n)
    nout = rng.integers(4, 60, n)
    alpha_ns = (alpha_scale * (2_000_000 + 3_000 * prompt)).astype(np.int64)  # 2 ms + 3 us per prompt token
    queued = arr + alpha_ns
    done, gen = np.zeros(n, int), np.zeros(n, int)
    first_sched = np.full(n, -1, np.int64)
    ft = np.full(n, -1, np.int64)
    fin = np.full(n, -1, np.int64)
    waiting, running, steps = deque(), [], []
    t, nxt, k = 0, 0, 0
    order = np.argsort(queued, kind="stable")
    while nxt < n or waiting or running:
        while nxt < n and queued[order[nxt]] <= t:
            waiting.append(order[nxt])
            nxt += 1
        if not waiting and not running:
            t = int(queued[order[nxt]])
            continue
        left, snaps = BUDGET, []
        for r in running:
            if done[r] >= prompt[r]:
                snaps.append((r, "DECODE", prompt[r] + gen[r] - 1, 1))
                left -= 1
        for r in running:
            if done[r] < prompt[r] and left > 0:
                c = min(prompt[r] - done[r], left)
                snaps.append((r, "PREFILL", done[r], c))
                left -= c
        while waiting and left > 0 and len(running) < MAX_SEQS:
            r = waiting.popleft()
            running.append(r)
            first_sched[r] = t
            c = min(prompt[r], left)
            snaps.append((r, "PREFILL", 0, c))
            left -= c
        ndec = sum(1 for s in snaps if s[1] == "DECODE")
        dt = int(step_scale * (8_000_000 + 4_000 * (BUDGET - left) + 30_000 * ndec))
        # vLLM's batch.num_finished of a step counts the requests the previous step finished
        steps.append(
            {
                "id": k,
                "t": t,
                "dt": dt,
                "snaps": snaps,
                "running": len(running),
                "waiting": len(waiting),
                "finished_before": steps[-1]["finished"] if steps else 0,
                "stats": F.batch_stats([s[3] for s in snaps], [s[2] for s in snaps], [s[1] == "PREFILL" for s in snaps]),
            }
        )
        t += dt
        for r, ph, _, c in snaps:
            if ph == "PREFILL":
                done[r] += c
                if done[r] == prompt[r]:
                    gen[r] = 1
                    ft[r] = t
            else:
                gen[r] += 1
        for r in list(running):
            if done[r] == prompt[r] and gen[r] >= nout[r]:
                fin[r] = t
                running.remove(r)
        steps[-1]["finished"] = steps[-1]["running"] - len(running)
        k += 1
    req = {
        "arrival": arr,
        "queued": queued,
        "prompt": prompt,
        "nout": nout,
        "first_sched": first_sched,
        "first_token": ft,
        "finished": fin,
        "first_response": ft + STREAM_NS,
        "departed": fin + DEPART_NS,
    }
    return req, steps


def _I(k, v):
    return {"key": k, "value": {"intValue": str(int(v))}}


def _S(k, v):
    return {"key": k, "value": {"stringValue": v}}


def _D(k, v):
    return {"key": k, "value": {"doubleValue": float(v)}}


def _line(scope, spans):
    return json.dumps(
        {"resourceSpans": [{"resource": {"attributes": []}, "scopeSpans": [{"scope": {"name": scope}, "spans": spans}]}]}
    )


def write_trace(path: Path, req, steps, sample=0.6, seed=0):
    """OTLP JSON lines: one api + one core span per request (api line first), sampled steps in
    spans of 8 events (each sampled step: BATCH_SUMMARY + one REQUEST_SNAPSHOT per request)."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(len(req["arrival"])):
        a = T0_NS + int(req["arrival"][i])
        ev = [
            (n, a + d)
            for n, d in (
                ("api.ARRIVED", 0),
                ("api.HANDOFF_TO_CORE", 500_000),
                ("api.FIRST_RESPONSE", int(req["first_response"][i] - req["arrival"][i])),
                ("api.DEPARTED", int(req["departed"][i] - req["arrival"][i])),
            )
        ]
        lines.append(
            _line(
                "vllm.api",
                [
                    {
                        "spanId": f"a{i}",
                        "name": "llm_request",
                        "attributes": [
                            _S("gen_ai.request.id", f"cmpl-{i}"),
                            _I("gen_ai.usage.prompt_tokens", req["prompt"][i]),
                            _I("gen_ai.request.max_tokens", req["nout"][i]),
                        ],
                        "events": [
                            {"timeUnixNano": "0", "name": n, "attributes": [_D("event.ts.monotonic", t / 1e9)]} for n, t in ev
                        ],
                    }
                ],
            )
        )
        cev = []
        for n, key, extra in (
            ("journey.QUEUED", "queued", []),
            ("journey.SCHEDULED", "first_sched", [_S("schedule.kind", "FIRST")]),
            ("journey.FIRST_TOKEN", "first_token", []),
            ("journey.FINISHED", "finished", [_S("finish.status", "FINISHED_LENGTH_CAPPED")]),
        ):
            tn = T0_NS + int(req[key][i])
            dd = {"journey.FINISHED": req["nout"][i], "journey.FIRST_TOKEN": 1}.get(n, 0)
            cev.append(
                {
                    "timeUnixNano": "0",
                    "name": n,
                    "attributes": [
                        _I("ts.monotonic_ns", tn),
                        _I("scheduler.step", 0),
                        _S("phase", "DECODE"),
                        _I("prefill.done_tokens", 0),
                        _I("prefill.total_tokens", req["prompt"][i]),
                        _I("decode.done_tokens", dd),
                        _I("decode.max_tokens", req["nout"][i]),
                        _I("num_preemptions", 0),
                    ]
                    + extra,
                }
            )
        lines.append(
            _line(
                "vllm.scheduler",
                [
                    {
                        "spanId": f"c{i}",
                        "parentSpanId": f"a{i}",
                        "name": "llm_core",
                        "attributes": [_S("gen_ai.request.id", f"cmpl-{i}-0-x")],
                        "events": cev,
                    }
                ],
            )
        )
    sampled = [s for s in steps if rng.random() < sample]
    for j in range(0, len(sampled), 8):
        evs = []
        for s in sampled[j : j + 8]:
            npf = sum(1 for x in s["snaps"] if x[1] == "PREFILL")
            pft = sum(x[3] for x in s["snaps"] if x[1] == "PREFILL")
            ndc = len(s["snaps"]) - npf
            t = T0_NS + s["t"]
            evs.append(
                {
                    "timeUnixNano": str(t),
                    "name": "step.BATCH_SUMMARY",
                    "attributes": [
                        _I("step.id", s["id"]),
                        _I("step.ts_start_ns", t),
                        _I("step.ts_end_ns", t + 300_000),
                        _I("step.duration_us", 300),
                        _I("queue.running_depth", s["running"]),
                        _I("queue.waiting_depth", s["waiting"]),
                        _I("batch.num_prefill_reqs", npf),
                        _I("batch.num_decode_reqs", ndc),
                        _I("batch.scheduled_tokens", pft + ndc),
                        _I("batch.prefill_tokens", pft),
                        _I("batch.decode_tokens", ndc),
                        _I("batch.num_finished", s["finished_before"]),
                        _I("batch.num_preempted", 0),
                        _D("kv.usage_gpu_ratio", 0.1),
                        _I("kv.blocks_total_gpu", 10000),
                        _I("kv.blocks_free_gpu", 9000),
                    ],
                }
            )
            for r, ph, c, tok in s["snaps"]:
                evs.append(
                    {
                        "timeUnixNano": str(t),
                        "name": "step.REQUEST_SNAPSHOT",
                        "attributes": [
                            _I("step.id", s["id"]),
                            _S("request.id", f"cmpl-{r}-0-x"),
                            _S("request.phase", ph),
                            _I("request.num_prompt_tokens", req["prompt"][r]),
                            _I("request.num_computed_tokens", c),
                            _I("request.num_output_tokens", 0),
                            _I("request.num_preemptions", 0),
                            _I("request.scheduled_tokens_this_step", tok),
                            _I("kv.blocks_allocated_gpu", 1),
                            _I("kv.blocks_cached_gpu", 0),
                            _I("request.effective_prompt_len", req["prompt"][r]),
                        ],
                    }
                )
        lines.append(_line("vllm.scheduler.step", [{"name": f"scheduler_steps_{j}", "events": evs}]))
    path.write_text("\n".join(lines) + "\n")
    return sampled
