"""inference-perf data: per-request replay JSON (+ ground truth) and lifecycle aggregates.

- ``<exp>.json.gz``: ``{"experiment", "config", "model_config", "requests": [{"index",
  "arrival_time_us", "input_tokens", "output_tokens", "has_error", ...}]}``
- ``<exp>_ground_truth.json.gz``: ``[{"index", "ttft_s", "e2e_s", "has_error"}]``
- ``*_lifecycle_metrics.json``: ``successes.latency.<metric>.{mean, p90, ...}`` in seconds.

Output-token repair (see the data README): the recorded ``output_tokens`` is the client's
re-tokenisation. When the workload used ``ignore_eos`` the server generated exactly the
profile's ``output_len``: ``output_tokens`` = ``output_len``, the recorded count is kept in
``output_tokens_client``. Without a known profile no repair is made (``output_tokens`` = client
count) and the report says so.

Failed requests (``has_error``: the client gave up after its timeout) get ``output_tokens`` =
``output_len`` as well: under ``ignore_eos`` that is what the server was asked to generate (and
what it was generating for them); the count actually produced before the client gave up is not
recorded. TTFT / E2E stay NaN, so no latency is attributed to them. They record
``input_tokens`` 0: imputed with the median prompt length of the run's successful requests with
a positive prompt length (``input_imputed``).

:func:`replay_frame` is THE per-request builder (a pure function of the parsed JSON): ingest uses
it for ``requests`` rows and :func:`bayeslat.datasets.build_bundle` for the bundled
``requests.parquet`` (which keeps compact numpy dtypes of the same values).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import tables as T
from ._io import _loads, open_binary
from .report import IngestReport

REQUIRED = ("index", "arrival_time_us", "input_tokens", "output_tokens", "has_error")


def load_json(path: str | Path):
    with open_binary(path) as f:
        return _loads(f.read())


def profile_info(profile: dict | None) -> tuple[int | None, bool | None, list | None]:
    """(output_len, ignore_eos, load stages) from an inference-perf profile / workload dict
    (``data.shared_prefix.output_len`` or ``output_len``; ``server.ignore_eos`` or ``ignore_eos``)."""
    if not profile:
        return None, None, None
    sp = (profile.get("data") or {}).get("shared_prefix") or {}
    out_len = sp.get("output_len", profile.get("output_len"))
    ign = (profile.get("server") or {}).get("ignore_eos", profile.get("ignore_eos"))
    stages = (profile.get("load") or {}).get("stages")
    return (int(out_len) if out_len is not None else None), (bool(ign) if ign is not None else None), stages


def stage_of(arrival_s: np.ndarray, stages: list[dict]) -> np.ndarray:
    ends = np.cumsum([s["duration"] for s in stages])
    return np.minimum(np.searchsorted(ends, arrival_s, side="right"), len(stages) - 1)


def replay_frame(replay: dict, ground_truth: list | None, *, run: str, output_len: int | None = None,
                 ignore_eos: bool | None = None, stages: list | None = None, strict: bool = False) -> pd.DataFrame:
    """Per-request rows (``requests`` schema) from a parsed replay file and its ground truth.
    ``strict``: raise ``ValueError`` when a request lacks its ground-truth row or the two files
    disagree on ``has_error`` (the bundle build checks this; ingest tolerates it)."""
    req = pd.DataFrame(replay["requests"])
    if ground_truth is not None:
        gt = pd.DataFrame(ground_truth)
        req = req.merge(gt, on="index", how="left", suffixes=("_client", ""))
        if strict and (req["has_error"].isna().any() or (req["has_error_client"] != req["has_error"]).any()):
            raise ValueError(f"{run}: has_error differs between the request and ground-truth files (or a request lacks ground truth)")
        req["has_error"] = req["has_error"].fillna(req["has_error_client"]).astype(bool)
    else:
        req["ttft_s"] = np.nan
        req["e2e_s"] = np.nan
    err = req["has_error"].astype(bool).to_numpy()
    ok = ~err
    inp = req["input_tokens"].astype("int64").to_numpy()
    imputed = inp <= 0
    med = int(np.median(inp[ok & ~imputed])) if (ok & ~imputed).any() else None
    if med is not None:
        inp = np.where(imputed, med, inp)
    client = req["output_tokens"].astype("int64").to_numpy()
    if output_len is not None and ignore_eos:
        out = pd.array(np.full(len(req), output_len), dtype="Int64")  # failed requests too (module doc)
    else:
        out = pd.array(client, dtype="Int64")
    arr_us = req["arrival_time_us"].astype("int64").to_numpy()
    e2e_ms = req["e2e_s"].astype("float64").to_numpy() * 1e3
    dep = np.where(np.isfinite(e2e_ms), arr_us * 1000 + np.nan_to_num(e2e_ms) * 1e6, np.nan)
    n = len(req)
    df = pd.DataFrame({
        "source": "inference_perf", "run": run, "request_id": req["index"].astype(str), "index": req["index"],
        "clock": "relative", "arrival_ns": arr_us * 1000,
        "departed_ns": pd.array([None if np.isnan(x) else int(round(x)) for x in dep], dtype="Int64"),
        "arrival_us": arr_us - (arr_us.min() if n else 0),
        "input_tokens": inp, "input_imputed": imputed, "output_tokens": out, "output_tokens_client": client,
        "aborted": False, "has_error": err,
        "ttft_ms": req["ttft_s"].astype("float64").to_numpy() * 1e3, "e2e_ms": e2e_ms,
        "stage": stage_of(arr_us / 1e6, stages) if stages else None,
    })
    return T.conform(df, "requests")


def lifecycle_aggregates(d: dict) -> dict:
    """``*_lifecycle_metrics.json`` -> ``{"n_success", "n_failure", "<metric>_ms": {stat: ms}}``.
    Caution (data README): ``time_per_output_token`` counts ~two stream events per token; the
    comparable ITL is (E2E - TTFT)/(output_tokens - 1) with the repaired count."""
    s = d.get("successes") or {}
    out = {"n_success": s.get("count"), "n_failure": (d.get("failures") or {}).get("count")}
    for k, v in (s.get("latency") or {}).items():
        if isinstance(v, dict):
            out[f"{k}_ms"] = {q: (x * 1e3 if isinstance(x, (int, float)) else x) for q, x in v.items()}
    return out


def parse_replay(path: str | Path, report: IngestReport, *, ground_truth: str | Path | None = None,
                 run: str | None = None, profile: dict | None = None, file: str | None = None) -> pd.DataFrame:
    """Validate and convert one replay file (+ ground truth). Requests missing a required field
    or with a negative arrival are skipped with a reason; the rest are kept."""
    file = file or str(path)
    report.file_kind[file] = "replay"
    d = load_json(path)
    report.lines[file] = 1
    run = run or d.get("experiment") or Path(file).name.split(".")[0]
    reqs = d.get("requests")
    if not isinstance(reqs, list):
        report.skip(file, 1, "line", "missing_attribute", "no requests list", "requests")
        return T.empty("requests")
    good = []
    for i, r in enumerate(reqs):
        miss = [k for k in REQUIRED if not isinstance(r, dict) or r.get(k) is None]
        if miss:
            report.skip(file, 1, "request", "missing_attribute", f"requests[{i}] lacks {miss}", miss[0])
        elif r["arrival_time_us"] < 0:
            report.skip(file, 1, "request", "negative_timestamp", f"requests[{i}].arrival_time_us={r['arrival_time_us']}")
        else:
            good.append(r)
    report.keep(file, "request", len(good))
    gt = None
    if ground_truth is not None:
        gfile = str(ground_truth)
        report.file_kind[gfile] = "ground_truth"
        gt = load_json(ground_truth)
        report.lines[gfile] = 1
        report.keep(gfile, "request", len(gt))
    out_len, ign, stages = profile_info(profile)
    if out_len is None or not ign:
        report.note(f"{file}: output_tokens NOT repaired (profile output_len / ignore_eos unknown): client counts")
    df = replay_frame({"requests": good}, gt, run=run, output_len=out_len, ignore_eos=ign, stages=stages)
    return df
