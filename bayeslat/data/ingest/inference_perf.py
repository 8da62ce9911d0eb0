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
it for ``requests`` rows and :func:`bayeslat.data.datasets.build_bundle` for the bundled
``requests.parquet`` (which keeps compact numpy dtypes of the same values).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from bayeslat.errors import IngestError

from . import tables as T
from ._io import UNREADABLE, _loads, open_binary
from .report import IngestReport

REQUIRED = ("index", "arrival_time_us", "input_tokens", "output_tokens", "has_error")
I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1


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


def replay_frame(
    replay: dict,
    ground_truth: list | None,
    *,
    run: str,
    output_len: int | None = None,
    ignore_eos: bool | None = None,
    stages: list | None = None,
    strict: bool = False,
) -> pd.DataFrame:
    """Per-request rows (``requests`` schema) from a parsed replay file and its ground truth.
    ``strict``: raise ``ValueError`` when a request lacks its ground-truth row or the two files
    disagree on ``has_error`` (the bundle build checks this; ingest tolerates it)."""
    req = pd.DataFrame(replay["requests"])
    if ground_truth is not None:
        gt = pd.DataFrame(ground_truth)
        req = req.merge(gt, on="index", how="left", suffixes=("_client", ""))
        if strict and (req["has_error"].isna().any() or (req["has_error_client"] != req["has_error"]).any()):
            raise ValueError(
                f"{run}: has_error differs between the request and ground-truth files (or a request lacks ground truth)"
            )
        h = req["has_error"].to_numpy(object)  # null in the ground truth: the request file's flag
        req["has_error"] = np.where(pd.isna(h), req["has_error_client"].to_numpy(object), h).astype(bool)
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
    df = pd.DataFrame(
        {
            "source": "inference_perf",
            "run": run,
            "request_id": req["index"].astype(str),
            "index": req["index"],
            "clock": "relative",
            "arrival_ns": arr_us * 1000,
            "departed_ns": pd.array([None if np.isnan(x) else int(round(x)) for x in dep], dtype="Int64"),
            "arrival_us": arr_us - (arr_us.min() if n else 0),
            "input_tokens": inp,
            "input_imputed": imputed,
            "output_tokens": out,
            "output_tokens_client": client,
            "aborted": False,
            "has_error": err,
            "ttft_ms": req["ttft_s"].astype("float64").to_numpy() * 1e3,
            "e2e_ms": e2e_ms,
            "stage": stage_of(arr_us / 1e6, stages) if stages else None,
        }
    )
    return T.conform(df, "requests")


def lifecycle_aggregates(d: dict) -> dict:
    """``*_lifecycle_metrics.json`` -> ``{"n_success", "n_failure", "<metric>_ms": {stat: ms}}``.
    Caution (data README): ``time_per_output_token`` counts ~two stream events per token; the
    comparable ITL is (E2E - TTFT)/(output_tokens - 1) with the repaired count. Raises
    :class:`~bayeslat.errors.IngestError` (with the field) when the document does not have that
    layout or a statistic is a number that is not a finite time in seconds."""

    def obj(v, field):
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise IngestError(f"{field}={v!r:.60} is not an object", field=field)
        return v

    if not isinstance(d, dict):
        raise IngestError(f"not an object but {type(d).__name__}")
    s = obj(d.get("successes"), "successes")
    out = {"n_success": s.get("count"), "n_failure": obj(d.get("failures"), "failures").get("count")}
    for k, v in obj(s.get("latency"), "successes.latency").items():
        if isinstance(v, dict):
            stats = out[f"{k}_ms"] = {}
            for q, x in v.items():
                if isinstance(x, (int, float)) and not isinstance(x, bool):
                    try:
                        x = float(x) * 1e3
                    except OverflowError:
                        x = math.inf
                    if math.isinf(x):
                        raise IngestError(f"{x} ms is not a finite time", field=f"successes.latency.{k}.{q}")
                stats[q] = x
    return out


def _integral(v, lo: int = I64_MIN, hi: int = I64_MAX) -> bool:
    """``v`` is an integer (or an integral float) in [lo, hi] (bools are not)."""
    if isinstance(v, float) and v.is_integer():
        return lo <= v < hi + 1
    return type(v) is int and lo <= v <= hi


def _seconds(v) -> bool:
    """``v`` is null, NaN or a number of seconds (below 1e300 in magnitude)."""
    return v is None or isinstance(v, (int, float)) and not isinstance(v, bool) and (math.isnan(v) or abs(v) < 1e300)


def _bad_request(r) -> tuple[str, str, str] | None:
    """(reason, field, message) of a replay request that cannot be a row, None when it can."""
    if not isinstance(r, dict):
        return "bad_value", None, f"{r!r:.60} is not an object"
    miss = [k for k in REQUIRED if r.get(k) is None]
    if miss:
        return "missing_attribute", miss[0], f"lacks {miss}"
    for k in ("index", "input_tokens", "output_tokens"):
        if not _integral(r[k]):
            return "bad_value", k, f"{k}={r[k]!r:.40} is not an integer in the int64 range"
    a = r["arrival_time_us"]
    if isinstance(a, (int, float)) and not isinstance(a, bool) and a < 0:
        return "negative_timestamp", "arrival_time_us", f"arrival_time_us={a}"
    if not _integral(a, 0, I64_MAX // 1000):  # arrival_ns = 1000 x arrival_time_us is an int64
        return "bad_value", "arrival_time_us", f"arrival_time_us={a!r:.40} is not an integer number of us in the int64 ns range"
    if not isinstance(r["has_error"], bool):
        return "bad_value", "has_error", f"has_error={r['has_error']!r:.40} is not true/false"
    return None


def _bad_truth(g, arrival_us: dict) -> tuple[str, str, str] | None:
    """(reason, field, message) of a ground-truth entry that cannot be merged into the row of its
    request (``arrival_us``: index -> arrival of the kept requests), None when it can."""
    if not isinstance(g, dict):
        return "bad_value", None, f"{g!r:.60} is not an object"
    i = g.get("index")
    if i is None:
        return "missing_attribute", "index", "lacks 'index'"
    if not _integral(i):
        return "bad_value", "index", f"index={i!r:.40} is not an integer in the int64 range"
    if i not in arrival_us:
        return "unknown_record", "index", f"index={i}: no such request in the replay file (or it was skipped)"
    for k in ("ttft_s", "e2e_s"):
        if not _seconds(g.get(k)):
            return "bad_value", k, f"{k}={g.get(k)!r:.40} is not null or a finite number of seconds"
    e2e = g.get("e2e_s")
    if e2e is not None and not math.isnan(e2e) and not abs(arrival_us[i] * 1000 + e2e * 1e9) < 2**62:
        return "bad_value", "e2e_s", f"e2e_s={e2e}: the departure is outside the int64 ns range"
    if g.get("has_error") is not None and not isinstance(g["has_error"], bool):
        return "bad_value", "has_error", f"has_error={g['has_error']!r:.40} is not true/false"
    return None


def parse_replay(
    path: str | Path,
    report: IngestReport,
    *,
    ground_truth: str | Path | None = None,
    run: str | None = None,
    profile: dict | None = None,
    file: str | None = None,
) -> pd.DataFrame:
    """Validate and convert one replay file (+ ground truth). Every request is a row or skipped
    with a reason (missing or mistyped field, negative arrival, a repeated index); so is every
    ground-truth entry (it is merged into the row of its request, or skipped: mistyped, no such
    request, a repeated index). A ground-truth file that does not parse is skipped as a whole
    (the requests keep NaN latencies). Raises ``ValueError`` / ``OSError`` only when the replay
    file itself cannot be read as JSON (ingest then skips it, and its ground truth, as files)."""
    file = file or str(path)
    report.file_kind[file] = "replay"
    d = load_json(path)
    report.lines[file] = 1
    reqs = d.get("requests") if isinstance(d, dict) else None
    if not isinstance(reqs, list):
        report.skip(file, 1, "line", "missing_attribute", "no requests list", "requests")
        if ground_truth is not None:  # each entry: no such request
            _ground_truth(str(ground_truth), report, {})
        return T.empty("requests")
    exp = d.get("experiment")
    run = run or (exp if isinstance(exp, str) and exp else None) or Path(file).name.split(".")[0]
    good = [
        {k: r[k] if k == "has_error" else int(r[k]) for k in REQUIRED}  # integral floats -> int
        for r in _valid_entries(reqs, _bad_request, report, file, "requests[{}]")
    ]
    arrival = {r["index"]: r["arrival_time_us"] for r in good}
    report.keep(file, "request", len(good))
    gt = None
    if ground_truth is not None:
        gt = _ground_truth(str(ground_truth), report, arrival)
    if not good:
        return T.empty("requests")
    out_len, ign, stages = profile_info(profile)
    if out_len is None or not ign:
        report.note(f"{file}: output_tokens NOT repaired (profile output_len / ignore_eos unknown): client counts")
    df = replay_frame({"requests": good}, gt, run=run, output_len=out_len, ignore_eos=ign, stages=stages)
    return df


def _ground_truth(gfile: str, report: IngestReport, arrival_us: dict) -> list | None:
    """The usable entries of a ground-truth file (None when there are none), the others
    skipped with a reason; ``arrival_us``: index -> arrival of the kept requests."""
    report.file_kind[gfile] = "ground_truth"
    try:
        gt = load_json(gfile)
    except ValueError as e:
        report.skip(gfile, 1, "file", "invalid_json", str(e))
        return None
    except UNREADABLE as e:
        report.error(gfile, f"unreadable: {e}")
        return None
    report.lines[gfile] = 1
    if not isinstance(gt, list):
        report.skip(gfile, 1, "line", "unknown_record", f"not a list of per-request records but {type(gt).__name__}")
        return None
    keep = [
        {"index": int(g["index"]), "ttft_s": g.get("ttft_s"), "e2e_s": g.get("e2e_s"), "has_error": g.get("has_error")}
        for g in _valid_entries(gt, lambda g: _bad_truth(g, arrival_us), report, gfile, "[{}]")
    ]
    report.keep(gfile, "request", len(keep))
    return keep or None


def _valid_entries(entries: list, bad_of, report: IngestReport, file: str, where: str):
    """The per-request entries of a whole-document file that ``bad_of`` accepts (it returns None, or
    (reason, field, message)) and whose index is new; each other entry is skipped with its reason
    (``where``: its position, e.g. "requests[{}]")."""
    seen = set()
    for i, e in enumerate(entries):
        bad = bad_of(e)
        if bad is None and e["index"] in seen:
            bad = "duplicate", "index", f"index={e['index']} repeated"
        if bad is not None:
            reason, field, msg = bad
            report.skip(file, 1, "request", reason, f"{where.format(i)}: {msg}", field)
            continue
        seen.add(e["index"])
        yield e
