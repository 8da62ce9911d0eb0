"""Validation cases: a run to predict (its deployment and workload) with its observed run-level
latencies: the bundled aggregate-only runs, and real runs that are not bundled (trainval-format
JSON, inference-perf experiment directories). The replay cases are :mod:`bayeslat.simulate.replay`'s."""

from __future__ import annotations

import json
from pathlib import Path

from bayeslat.config import load_hardware
from bayeslat.data import datasets, workload
from bayeslat.data.experiments import _resolve_model
from bayeslat.errors import SpecError, read_yaml
from bayeslat.simulate.replay import METRICS
from bayeslat.simulate.rundeployment import deployment


def _aggregate_cases(runs: list[str] | None, seed: int = 0, records: list[dict] | None = None):
    """Cases of aggregate-only runs: the bundled trainval runs, or ``records`` in the same format
    (:func:`external_cases`; ``model_spec`` / ``hardware_spec`` resolved)."""
    out = []
    for r in datasets.aggregate_runs() if records is None else records:
        if r.get("in_per_request_data") or not r.get("observed_ms"):
            continue
        if runs and not any(x in (r.get("name") or r["id"]) for x in runs):
            continue
        server = dict(
            tensor_parallel=r["tensor_parallel"],
            max_num_seqs=r["max_num_seqs"],
            max_num_batched_tokens=r["max_num_batched_tokens"],
            max_model_len=r.get("max_model_len") or 4096,
            block_size=16,
            kv_blocks=r.get("gpu_kv_blocks"),
            cpu_kv_blocks=r.get("cpu_kv_blocks") or 0,
            prefix_caching=True,
            chunked_prefill=True,
        )
        dep = deployment(r["model_spec"], r["hardware_spec"], server, r.get("name") or r["id"])
        w = r["workload"]
        profile = {
            "data": {"type": "shared_prefix", "shared_prefix": w["inference_perf"]["shared_prefix"]},
            "load": {"type": "constant", "stages": w["inference_perf"]["stages"]},
        }
        wl = workload.from_inference_perf(profile, seed=int(w.get("seed", seed)), num_requests=w.get("num_requests"))
        obs = r["observed_ms"]["all"]
        observed = {f"{m}_{q}": obs.get(f"{m}_{q}") for m in METRICS for q in ("mean", "p90", "p99")}
        name = r.get("name") or r["id"]
        out.append(
            dict(
                run=name,
                model=r["model_spec"],
                workload=name.split("-tp")[-1].split("-")[1] if "-tp" in name else "",
                kind="aggregate",
                itl_definition="client",
                deployment=dep,
                workload_obj=wl,
                observed=observed,
                stress="reasoning" in name,
            )
        )
    return out


def _experiment_case(d, hardware, seed: int):
    """One inference-perf experiment directory (``exp-config.yaml``, ``profile.yaml``,
    ``results/summary_lifecycle_metrics.json``, the layout of the shared ``experiments/``)."""
    d = Path(d)
    cfg_f, prof_f, sum_f = d / "exp-config.yaml", d / "profile.yaml", d / "results" / "summary_lifecycle_metrics.json"
    for f in (cfg_f, prof_f, sum_f):
        if not f.is_file():
            raise SpecError(
                "missing: an experiment directory needs exp-config.yaml, profile.yaml and results/summary_lifecycle_metrics.json",
                file=str(f),
            )

    def mapping(f):
        doc = read_yaml(f) or {}
        if not isinstance(doc, dict):
            raise SpecError("must be a mapping", file=str(f))
        return doc

    cfg, prof = mapping(cfg_f), mapping(prof_f)
    hw = cfg.get("hardware") or hardware
    if not hw:
        raise SpecError(
            "no hardware: add `hardware:` (e.g. H100, A100-80, L40S or a datasheet path) or pass --hardware",
            file=str(cfg_f),
            field="hardware",
        )
    if "model" not in cfg:
        raise SpecError("missing", file=str(cfg_f), field="model")
    # a config.json next to the experiment wins; else the model id / bundled key
    model = str(d / "config.json") if (d / "config.json").is_file() else _resolve_model(str(cfg["model"])).source
    tp = cfg.get("tensor_parallelism", cfg.get("tensor_parallel", 1))
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise SpecError(f"must be an integer >= 1, got {tp!r}", file=str(cfg_f), field="tensor_parallelism")
    server = {
        "tensor_parallel": tp,
        "max_model_len": cfg.get("max_model_len"),
        "max_num_batched_tokens": cfg.get("max_num_batched_tokens"),
        "max_num_seqs": cfg.get("max_num_seqs"),
        "block_size": cfg.get("block_size", 16),
        "prefix_caching": cfg.get("enable_prefix_caching", True),
        "chunked_prefill": True,
        "gpu_memory_utilization": cfg.get("gpu_memory_utilization", 0.9),
        "kv_blocks": cfg.get("kv_blocks"),
        "cpu_offload_gb": cfg.get("cpu_offload_gb"),
    }
    server = {k: v for k, v in server.items() if v is not None}
    try:
        hw_source = str(load_hardware(hw).source)
    except SpecError as e:
        if e.file != str(hw):  # an error inside the datasheet it names is that file's
            raise
        raise SpecError(
            f"{hw!r}: {e.reason}",
            file=str(cfg_f) if cfg.get("hardware") else None,
            field="hardware" if cfg.get("hardware") else "--hardware",
        ) from None
    try:
        dep = deployment(model, hw_source, server, d.name)
    except SpecError as e:
        if e.file not in (None, "<dict>"):
            raise
        raise SpecError(e.reason, file=str(cfg_f), field=e.field) from None
    try:
        wl = workload.from_inference_perf({"data": prof.get("data"), "load": prof.get("load")}, seed=seed)
    except SpecError as e:
        raise SpecError(e.reason, file=str(prof_f), field=e.field) from None
    try:
        lat = json.loads(sum_f.read_text())["successes"]["latency"]
        if not isinstance(lat, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):  # not JSON, or not inference-perf's layout
        raise SpecError(
            "not inference-perf's lifecycle summary (needs successes.latency)", file=str(sum_f), field="successes.latency"
        ) from None
    observed = {}
    for m, key in (("ttft", "time_to_first_token"), ("e2e", "request_latency")):
        for q in ("mean", "p90", "p99"):
            v = (lat.get(key) or {}).get(q)
            observed[f"{m}_{q}"] = None if v is None else 1e3 * float(v)
    # ITL: with ignore_eos every request generates output_len tokens, so the mean of the per-request
    # (E2E - TTFT) / (n - 1) is (mean E2E - mean TTFT) / (n - 1); the tails are not derivable
    sp = (prof.get("data") or {}).get("shared_prefix") or {}
    n_out = sp.get("output_len")
    ignore_eos = bool((prof.get("server") or {}).get("ignore_eos"))
    ok = ignore_eos and n_out and n_out > 1 and observed["e2e_mean"] is not None and observed["ttft_mean"] is not None
    observed.update(
        itl_mean=(observed["e2e_mean"] - observed["ttft_mean"]) / (n_out - 1) if ok else None, itl_p90=None, itl_p99=None
    )
    return dict(
        run=d.name,
        model=str(cfg["model"]),
        workload=str((prof.get("data") or {}).get("type", "")),
        kind="experiment",
        itl_definition="server" if ok else "none",
        deployment=dep,
        workload_obj=wl,
        observed=observed,
        stress=False,
    )


def external_cases(paths, *, hardware=None, seed: int = 0, runs=None) -> list[dict]:
    """Cases of real runs that are not bundled, from

    - a trainval-format JSON (``{"runs": [...]}``, the layout of the shared ``trainval15.json``):
      ``model_config`` is a path (relative to the JSON, its parents or the working directory), a
      bundled key or a HuggingFace id; ``hardware`` a GPU name or datasheet path;
    - an experiment directory (``exp-config.yaml``, ``profile.yaml``,
      ``results/summary_lifecycle_metrics.json``), or a directory of them. ``hardware`` (the
      ``--hardware`` option) names the GPU where ``exp-config.yaml`` does not; a ``config.json``
      in the directory is the model's. The mean ITL is derived from the means, ``(E2E - TTFT) /
      (output_len - 1)``, when the profile sets ``ignore_eos`` (else it is not scored).

    A run that cannot be built raises :class:`bayeslat.errors.SpecError` naming its file and field."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            dirs = [p] if (p / "exp-config.yaml").is_file() else sorted(x.parent for x in p.glob("*/exp-config.yaml"))
            if not dirs:
                raise SpecError("no exp-config.yaml here or in its subdirectories", file=str(p))
            for d in dirs:
                if runs and not any(r in d.name for r in runs):
                    continue
                out.append(_experiment_case(d, hardware, seed))
            continue
        try:
            doc = json.loads(p.read_text())
        except UnicodeDecodeError:
            raise SpecError("not a readable JSON: binary content", file=str(p)) from None
        except (OSError, json.JSONDecodeError) as e:
            raise SpecError(f"not a readable JSON: {e}", file=str(p)) from None
        recs = doc.get("runs") if isinstance(doc, dict) else doc
        if not isinstance(recs, list):
            raise SpecError('expected {"runs": [...]} (the trainval15.json layout)', file=str(p), field="runs")
        resolved = []
        for i, r in enumerate(recs):
            where = f"runs[{i}]"
            if not isinstance(r, dict):
                raise SpecError(f"must be an object, got {r!r}", file=str(p), field=where)
            for k in (
                "model_config",
                "hardware",
                "tensor_parallel",
                "max_num_seqs",
                "max_num_batched_tokens",
                "workload",
                "observed_ms",
            ):
                if k not in r:
                    raise SpecError("missing", file=str(p), field=f"{where}.{k}")
            mc = str(r["model_config"])
            cands = [p.parent / mc] + [q / mc for q in p.resolve().parents] + [Path(mc)]
            hit = next((c for c in cands if c.is_file()), None)
            try:
                model = (
                    str(hit)
                    if hit
                    else _resolve_model(mc if "/" not in mc or not mc.endswith(".json") else Path(mc).parent.name).source
                )
                hw = str(load_hardware(str(r["hardware"])).source)
            except SpecError as e:
                raise SpecError(f"{where}: {e}", file=str(p), field=f"{where}.model_config / hardware") from None
            resolved.append(
                {
                    **r,
                    "model_spec": model,
                    "hardware_spec": hw,
                    "in_per_request_data": False,
                    "name": r.get("name") or r.get("id") or f"run{i}",
                }
            )
        out += _aggregate_cases(runs, seed, records=resolved)
    return out
