"""The real vLLM measurements bundled with bayeslat.

Provenance
----------
Every table here is a compact copy of ``shared/data`` of the bayeslat project, itself taken from
the public repositories of the BLIS project (inference-sim/training, inference-sim/inference-sim):
real runs of vLLM v0.15.1 (an instrumented build with journey and step tracing) on H100 SXM GPUs
under the inference-perf load generator. Nothing is simulated.

- :func:`runs`: the 16 runs with per-request data (4 models x 4 workloads: Llama-2-7B TP1,
  Llama-2-70B TP4, CodeLlama-34B TP2, Mixtral-8x7B TP2; codegen / general / roleplay /
  reasoning), their server config, workload profile and observed aggregates.
- :func:`requests`: per-request arrival, prompt and output tokens, TTFT and E2E of those runs
  (from ``replay/<exp>.json.gz`` and ``replay/<exp>_ground_truth.json.gz``).
- :func:`steps`: 20,112 sampled ``step.BATCH_SUMMARY`` records of 3 runs
  (``steps/enriched_steps.parquet``) with the derived ``cycle_time_us``.
- :func:`step_durations`: ``step.duration_us`` of 24,550 sampled steps of all 16 runs
  (scheduler bookkeeping only, not the step time; see the data README).
- :func:`aggregate_runs`: the 15 runs BLIS trained-physics was fit on (``trainval15.json``);
  eleven exist only as aggregates (new models, TP 1/2/4, budgets 1024/2048/8192, FP8 MoE,
  CPU KV offload configured).

Output-token repair
-------------------
``output_tokens`` in the replay files is the client's re-tokenisation of the streamed text, off
by more than 10% for up to a third of the requests. All runs used ``ignore_eos``, so the server
generated exactly the profile's ``output_len`` for every successful request. ``requests()``
returns the repaired server count in ``output_tokens`` and keeps the recorded one in
``output_tokens_client``. ITL here is always ``(E2E - TTFT) / (output_tokens - 1)`` with the
repaired count ("server ITL").

Failed requests
---------------
Requests with ``has_error`` timed out on the client after 300 s (all in the overloaded
``reasoning`` runs); their recorded prompt length is 0, so ``input_tokens`` is imputed with the
run's median successful prompt length (``input_imputed`` marks them), TTFT / E2E are NaN and
``output_tokens`` is the profile's ``output_len`` (what the server was asked to generate under
``ignore_eos``; the count produced before the client gave up is not recorded). The per-request
rows are built by :func:`bayeslat.data.ingest.inference_perf.replay_frame`, the same function
``bayeslat ingest`` uses, so the two agree on every column (this module only narrows dtypes).

The bundle is rebuilt from ``shared/data`` with :func:`build_bundle` (``python -m
bayeslat.data.datasets SHARED_DATA_DIR``).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from bayeslat.data.ingest.inference_perf import profile_info, replay_frame

DATA_DIR = Path(str(resources.files("bayeslat") / "data"))
CLIENT_TIMEOUT_S = 300.0
#: the vLLM release every bundled run was measured on (shared/data/README.md: "real GPUs running
#: vLLM v0.15.1"); kept out of runs.json, whose bytes are part of the data hash of every fit
VLLM_VERSION = "0.15.1"

# model short name in the run ids -> spec key (folder under specs/models)
MODEL_SPEC = {
    "llama-2-7b": "llama-2-7b-hf",
    "llama-2-70b": "llama-2-70b-hf",
    "llama-2-70b-hf": "llama-2-70b-hf",
    "codellama-34b": "codellama-34b-instruct-hf",
    "mixtral-8x7b-v0-1": "mixtral-8x7b-v0.1",
    "mixtral-8x7b": "mixtral-8x7b-v0.1",
}
HARDWARE_SPEC = {
    "H100 SXM": "h100-sxm",
    "A100 SXM": "a100-sxm-80gb",
    "L40S": "l40s",
    "H100 NVL": "h100-nvl",
    "H200 SXM": "h200-sxm",
}


def _path(name: str) -> Path:
    p = DATA_DIR / name
    if not p.exists():
        raise FileNotFoundError(
            f"bundled data file {p} is missing; rebuild with `python -m bayeslat.data.datasets SHARED_DATA_DIR`"
        )
    return p


@functools.cache
def _runs_json() -> list[dict]:
    return json.loads(_path("runs.json").read_text())


def runs() -> pd.DataFrame:
    """One row per per-request run: id, model, spec keys, server config, workload and observed
    aggregates (ms; ITL with the repaired output count). Nested dicts (``profile``, ``observed``)
    are kept as Python objects."""
    return pd.DataFrame(_runs_json()).set_index("run", drop=False)


def run_info(run: str) -> dict:
    for r in _runs_json():
        if r["run"] == run or r["run"].endswith(run):
            return r
    raise KeyError(f"unknown run {run!r}; known: {[r['run'] for r in _runs_json()]}")


@functools.cache
def _requests() -> pd.DataFrame:
    return pd.read_parquet(_path("requests.parquet"))


def requests(run: str | None = None) -> pd.DataFrame:
    """Per-request table (see module docstring). Columns: run, index, arrival_us (int64, relative
    to the run's first request), input_tokens, input_imputed, output_tokens (repaired),
    output_tokens_client, has_error, ttft_ms, e2e_ms, stage."""
    df = _requests()
    if run is not None:
        run = run_info(run)["run"]
        df = df[df["run"] == run].reset_index(drop=True)
    return df.copy()


def steps() -> pd.DataFrame:
    """Sampled real step records (3 runs): ``step.*``, ``queue.*``, ``batch.*``, ``kv.*`` columns
    and ``cycle_time_us`` (NaN where the next step id was not sampled)."""
    return pd.read_parquet(_path("steps.parquet"))


def step_durations() -> pd.DataFrame:
    """``step.duration_us`` (scheduler bookkeeping time) of sampled steps of all 16 runs."""
    return pd.read_parquet(_path("step_durations.parquet"))


def aggregate_runs() -> list[dict]:
    """The 15 trainval runs of BLIS trained-physics (server config, KV capacities, workload
    spec, observed ms aggregates). Those also in :func:`runs` carry ``in_per_request_data``."""
    return json.loads(_path("aggregate_runs.json").read_text())


def data_hash() -> str:
    """Hash of the bundled data files (recorded in fitted InferenceData)."""
    h = hashlib.sha256()
    for name in ("runs.json", "requests.parquet", "steps.parquet"):
        h.update(_path(name).read_bytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Building the bundle from shared/data
# ---------------------------------------------------------------------------------------------
def _aggregates(df: pd.DataFrame) -> dict:
    ok = df[~df.has_error]
    itl = (ok.e2e_ms - ok.ttft_ms) / (ok.output_tokens - 1)
    out = {"n": int(len(df)), "n_success": int(len(ok)), "n_error": int(df.has_error.sum())}
    for name, v in (("ttft", ok.ttft_ms), ("e2e", ok.e2e_ms), ("itl", itl)):
        out[f"{name}_mean"] = float(v.mean())
        out[f"{name}_p90"] = float(v.quantile(0.9))
        out[f"{name}_p99"] = float(v.quantile(0.99))
    return out


def build_bundle(shared: str | Path, out: str | Path = DATA_DIR) -> None:
    """Rebuild the bundled tables from a ``shared/data`` checkout."""
    shared, out = Path(shared), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tv = json.loads((shared / "trainval15.json").read_text())
    tv_ids = {r["id"] for r in tv["runs"]}
    frames, meta = [], []
    for f in sorted((shared / "replay").glob("*.json.gz")):
        if f.name.endswith("_ground_truth.json.gz"):
            continue
        d = json.load(gzip.open(f))
        gt = json.load(gzip.open(str(f).replace(".json.gz", "_ground_truth.json.gz")))
        exp = d["experiment"]
        expdir = shared / "experiments" / exp
        profile = json.loads((expdir / "profile.yaml").read_text())
        expcfg = yaml.safe_load((expdir / "exp-config.yaml").read_text())
        sp = profile["data"]["shared_prefix"]
        out_len, ignore_eos, stages = profile_info(profile)
        q = replay_frame(d, gt, run=exp, output_len=out_len, ignore_eos=ignore_eos, stages=stages, strict=True)
        df = pd.DataFrame(
            {  # compact dtypes of the ingest `requests` columns (no nulls here)
                "run": exp,
                "index": q["index"].to_numpy(np.int32),
                "arrival_us": q["arrival_us"].to_numpy(np.int64),
                "input_tokens": q["input_tokens"].to_numpy(np.int32),
                "input_imputed": q["input_imputed"].to_numpy(bool),
                "output_tokens": q["output_tokens"].to_numpy(np.int32),
                "output_tokens_client": q["output_tokens_client"].to_numpy(np.int32),
                "has_error": q["has_error"].to_numpy(bool),
                "ttft_ms": q["ttft_ms"].to_numpy(np.float64),
                "e2e_ms": q["e2e_ms"].to_numpy(np.float64),
                "stage": q["stage"].to_numpy(np.int8),
            }
        )
        frames.append(df)
        short = d["model_short"]
        ts = exp[:15]
        summary = json.loads((expdir / "results" / "summary_lifecycle_metrics.json").read_text())
        lat = summary["successes"]["latency"]
        meta.append(
            {
                "run": exp,
                "model": short,
                "model_id": d["model_id"],
                "model_spec": MODEL_SPEC[short],
                "hardware": "H100 SXM",
                "hardware_spec": "h100-sxm",
                "workload": d["profile"],
                "server": {
                    "tensor_parallel": int(expcfg["tensor_parallelism"]),
                    "data_parallel": 1,
                    "expert_parallel": False,
                    "max_num_batched_tokens": int(expcfg["max_num_batched_tokens"]),
                    "max_num_seqs": int(expcfg["max_num_seqs"]),
                    "max_model_len": int(expcfg["max_model_len"]),
                    "block_size": int(d["config"]["block_size"]),
                    "gpu_memory_utilization": 0.9,
                    "kv_blocks": int(d["config"]["kv_blocks_total_gpu"]),
                    "prefix_caching": True,
                    "chunked_prefill": True,
                },
                "profile": {"data": profile["data"], "load": profile["load"]},
                "output_len": int(sp["output_len"]),
                "client_timeout_s": CLIENT_TIMEOUT_S,
                "in_trainval15": ts in tv_ids,
                "observed": {
                    "all": _aggregates(df),
                    **{f"stage_{k}": _aggregates(g) for k, g in df.groupby("stage")},
                    "inference_perf_summary_s": {
                        k: {q: lat[k][q] for q in ("mean", "p90", "p99")}
                        for k in ("time_to_first_token", "request_latency")
                        if k in lat
                    },
                },
            }
        )
    reqs = pd.concat(frames, ignore_index=True)
    reqs["run"] = reqs["run"].astype("category")
    reqs.to_parquet(out / "requests.parquet", index=False, compression="zstd")
    (out / "runs.json").write_text(json.dumps(meta, indent=1))

    st = pd.read_parquet(shared / "steps" / "enriched_steps.parquet")
    for c in st.columns:
        if st[c].dtype == object and c not in ("experiment",):
            try:
                st[c] = pd.to_numeric(st[c])
            except (ValueError, TypeError):
                pass
    st.to_parquet(out / "steps.parquet", index=False, compression="zstd")
    sd = pd.read_csv(shared / "steps" / "step_durations.csv")
    sd.to_parquet(out / "step_durations.parquet", index=False, compression="zstd")

    agg = []
    for r in tv["runs"]:
        r = dict(r)
        r["model_spec"] = Path(r["model_config"]).parent.name
        r["hardware_spec"] = HARDWARE_SPEC.get(r["hardware"], r["hardware"])
        r["in_per_request_data"] = any(m["run"].startswith(r["id"]) for m in meta)
        agg.append(r)
    (out / "aggregate_runs.json").write_text(json.dumps(agg, indent=1))


if __name__ == "__main__":  # pragma: no cover
    build_bundle(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else DATA_DIR)
    print("bundle written to", sys.argv[2] if len(sys.argv) > 2 else DATA_DIR)
