"""Run-level validation against real runs: predicted mean / p90 / p99 TTFT, ITL and E2E vs observed.

Suites
------
``replay``     the 16 per-request runs, replaying their real arrivals and prompt lengths.
``aggregate``  the 12 aggregate-only runs of ``trainval15`` (new models, TP 1/2/4, budgets
               1024/2048/8192, FP8 MoE, CPU offload configured), generated from their
               inference-perf profiles (their arrivals are not public).
``all``        both.
``external``   real runs that are not bundled (``--external PATH...``): a trainval-format JSON or
               inference-perf experiment directories (:func:`external_cases`).
``loro`` / ``lomo`` / ``lowo``  cross-validation on the replay runs: leave one run / model /
               workload out, refit the model on the rest, predict the held-out runs.

Metric definitions (say which): TTFT and E2E are means over successful requests; ITL is the
per-request ``(E2E - TTFT) / (output_tokens - 1)`` with the server's output count (repaired,
see :mod:`bayeslat.data.datasets`), averaged over requests. For aggregate-only runs the observed
``itl_mean`` was computed by the source with the client's re-tokenised counts, which inflates it
(e.g. 10.58 ms recorded vs 8.35 ms true on Llama-2-7B codegen); it is reported but flagged
``itl_definition = "client"`` and left out of the ITL medians.
"""
from __future__ import annotations

import functools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bayeslat.deployment import resolve
from bayeslat.errors import SpecError, read_yaml

METRICS = ("ttft", "itl", "e2e")


@dataclass(frozen=True)
class Deployment:
    """What the simulator needs for one configuration."""

    name: str
    model_spec: str
    hardware_spec: str
    hardware: str
    model_class: str
    server: dict
    ctx: object
    kv_blocks: int


def deployment(model_spec: str, hardware_spec: str, server: dict, name: str = "") -> Deployment:
    """Build a :class:`Deployment` from spec keys (or paths) and a server dict; ``server['kv_blocks']``
    and ``server['cpu_kv_blocks']`` are the capacities vLLM reported for the run."""
    dep = resolve(model_spec, hardware_spec, server, name=name, kv_blocks=server.get("kv_blocks"),
                  cpu_kv_blocks=int(server.get("cpu_kv_blocks") or 0), file=name or None)
    return Deployment(name or model_spec, model_spec, hardware_spec, dep.hardware.name, dep.model_class,
                      dep.sim_server(max_model_len=False), dep.ctx, int(dep.kv_blocks))


def _replay_cases(runs: list[str] | None):
    from bayeslat.data import datasets, workload
    out = []
    for info in datasets.runs().to_dict("records"):
        if runs and not any(r in info["run"] for r in runs):
            continue
        dep = deployment(info["model_spec"], info["hardware_spec"], info["server"], info["run"])
        wl = workload.from_run(info["run"])
        obs = info["observed"]["all"]
        observed = {f"{m}_{q}": obs[f"{m}_{q}"] for m in METRICS for q in ("mean", "p90", "p99")}
        out.append(dict(run=info["run"], model=info["model"], workload=info["workload"], kind="replay",
                        itl_definition="server", deployment=dep, workload_obj=wl, observed=observed,
                        stress=info["workload"] == "reasoning"))
    return out


def _aggregate_cases(runs: list[str] | None, seed: int = 0, records: list[dict] | None = None):
    """Cases of aggregate-only runs: the bundled trainval runs, or ``records`` in the same format
    (:func:`external_cases`; ``model_spec`` / ``hardware_spec`` resolved)."""
    from bayeslat.data import datasets, workload
    out = []
    for r in datasets.aggregate_runs() if records is None else records:
        if r.get("in_per_request_data") or not r.get("observed_ms"):
            continue
        if runs and not any(x in (r.get("name") or r["id"]) for x in runs):
            continue
        server = dict(tensor_parallel=r["tensor_parallel"], max_num_seqs=r["max_num_seqs"],
                      max_num_batched_tokens=r["max_num_batched_tokens"], max_model_len=r.get("max_model_len") or 4096,
                      block_size=16, kv_blocks=r.get("gpu_kv_blocks"), cpu_kv_blocks=r.get("cpu_kv_blocks") or 0,
                      prefix_caching=True, chunked_prefill=True)
        dep = deployment(r["model_spec"], r["hardware_spec"], server, r.get("name") or r["id"])
        w = r["workload"]
        profile = {"data": {"type": "shared_prefix", "shared_prefix": w["inference_perf"]["shared_prefix"]},
                   "load": {"type": "constant", "stages": w["inference_perf"]["stages"]}}
        wl = workload.from_inference_perf(profile, seed=int(w.get("seed", seed)), num_requests=w.get("num_requests"))
        obs = r["observed_ms"]["all"]
        observed = {f"{m}_{q}": obs.get(f"{m}_{q}") for m in METRICS for q in ("mean", "p90", "p99")}
        name = r.get("name") or r["id"]
        out.append(dict(run=name, model=r["model_spec"], workload=name.split("-tp")[-1].split("-")[1] if "-tp" in name else "",
                        kind="aggregate", itl_definition="client", deployment=dep, workload_obj=wl,
                        observed=observed, stress="reasoning" in name))
    return out


def predict_case(case: dict, idata, draws: int, seed: int, *, discrepancy: bool = True) -> dict:
    """Posterior predictive of one case; returns the prediction dict of ``simulate.posterior_predictive``.
    ``discrepancy=False``: without the fit's simulator discrepancy (what :func:`sim_discrepancy` measures)."""
    from bayeslat import model, simulate

    dep = case["deployment"]
    from bayeslat.features import deployment_key

    cd = model.coefficient_draws(idata, dep.hardware, dep.model_class, n=draws, seed=seed,
                                 deployment=deployment_key(dep.ctx, dep.hardware))
    if not discrepancy:
        cd.sim_sd = None
    return simulate.posterior_predictive(case["workload_obj"], dep.ctx, dep.server, cd, n_draws=draws, seed=seed)


#: cv_fit measures the simulator discrepancy of each refit on its training runs (attach_sim_discrepancy)
SIM_DISCREPANCY = True
#: draws per training run of the simulator-discrepancy stage (attach_sim_discrepancy)
SIM_DISCREPANCY_DRAWS = 16


def sim_discrepancy(idata, *, draws: int = SIM_DISCREPANCY_DRAWS, seed: int = 0, runs=None) -> dict:
    """The simulator's run-level error on the fit's own training runs, beyond the predictive spread.

    Replays every training run that has per-request data (the bundled runs; ``runs`` to choose)
    under the fit, in-sample, with the run spread (a new run of a trained deployment), without any
    discrepancy. Per metric (TTFT, ITL, E2E) and run: ``e = log(observed / point)`` and the
    predictive log-SD ``w = log(hi90 / lo90) / 3.29``. The discrepancy is the method-of-moments
    SD ``sqrt(max(0, mean(e^2) - mean(w^2)))``: what the simulator (its scheduler, KV and queue
    model) misses even where the step-time model has seen the run. In-sample, so in that respect
    it understates the out-of-sample error; the held-out runs of :mod:`validate`'s
    cross-validation never enter it.
    The same for the p90 and p99 (keys "<metric>_p90", "<metric>_p99": the tails' own error, larger
    than the mean's). ``w`` comes from the 5% / 95% quantiles of ``draws`` draws, which understate
    a normal's width by ~13% at 16 draws, so sigma errs on the wide side; one badly simulated run
    dominates it (default fit, TTFT: Mixtral general's -0.43 is most of the 0.11). ``runs``: full
    run ids. Returns ``{"sigma": {key: sd}, "runs": [{run, e_<key>, w_<key>}], "draws": n,
    "run_spread_config": ...}`` ({"sigma": {}} when fewer than 3 training runs have per-request data)."""
    from bayeslat import model, simulate
    from bayeslat.data import datasets
    from bayeslat.transfer import obs_from_idata

    train = set(np.asarray(obs_from_idata(idata).run).astype(str).tolist())
    have = set(datasets.runs()["run"].astype(str))
    sel = sorted(train & have if runs is None else set(runs) & have)
    per = []
    for c in _replay_cases(sel) if sel else []:
        if c["run"] not in sel:
            continue
        pred = predict_case(c, idata, draws, seed, discrepancy=False)
        r = {"run": c["run"]}
        for m in METRICS:
            for stat in ("mean", "p90", "p99"):
                p, o = pred[f"{m}_ms"], c["observed"].get(f"{m}_{stat}")
                lo, hi = p[f"{stat}_interval90"]
                ok = bool(o) and p[stat] > 0 and lo > 0 and hi > 0
                k = simulate.discrepancy_key(m, stat)
                r[f"e_{k}"] = float(np.log(o / p[stat])) if ok else None
                r[f"w_{k}"] = float(np.log(hi / lo) / (2 * 1.6449)) if ok else None
        per.append(r)
    sigma = {}
    for m in METRICS:
        for stat in ("mean", "p90", "p99"):
            k = simulate.discrepancy_key(m, stat)
            ok = [r for r in per if r[f"e_{k}"] is not None]
            if len(ok) >= 3:
                sigma[k] = discrepancy_sd([r[f"e_{k}"] for r in ok], [r[f"w_{k}"] for r in ok])
    return {"sigma": sigma, "runs": per, "draws": int(draws), "seed": int(seed), "run_spread_config": model.RUN_SPREAD}


def discrepancy_sd(e, w) -> float:
    """Method-of-moments SD of an extra error term: log errors ``e`` whose predictive log-SDs ``w``
    explain part of their spread; ``sqrt(max(0, mean(e^2) - mean(w^2)))``."""
    e, w = np.asarray(e, dtype=float), np.asarray(w, dtype=float)
    return float(np.sqrt(max(0.0, np.mean(e ** 2) - np.mean(w ** 2))))


def attach_sim_discrepancy(idata, *, draws: int = SIM_DISCREPANCY_DRAWS, seed: int = 0):
    """Measure :func:`sim_discrepancy` and store it in ``idata.attrs["sim_discrepancy"]`` (JSON);
    :func:`bayeslat.model.coefficient_draws` passes it to the simulator's intervals. Returns idata."""
    res = sim_discrepancy(idata, draws=draws, seed=seed)
    idata.attrs["sim_discrepancy"] = json.dumps(res)
    return idata


def interval_score(lo: float, hi: float, y: float, alpha: float = 0.1) -> float:
    """The interval score of a central ``1 - alpha`` interval [lo, hi] for the observed ``y``,
    relative to ``y`` (Gneiting & Raftery 2007, eq. 43, divided by y): the interval's width plus
    ``2 / alpha`` times how far ``y`` lies outside it. A proper scoring rule (lower is better): a
    narrower interval scores better only while it still holds the truth, so it says whether a
    prediction improved when its point error and its width both changed (a probe update)."""
    if not (y > 0 and hi >= lo):
        raise SpecError(f"interval_score needs y > 0 and hi >= lo, got lo={lo}, hi={hi}, y={y}", field="interval")
    return ((hi - lo) + 2.0 / alpha * (max(lo - y, 0.0) + max(y - hi, 0.0))) / y


def compare(case: dict, pred: dict) -> dict:
    """Signed % errors and interval containment (of the mean, and of the p90 / p99 where the
    prediction has their intervals) of one case."""
    row = {k: case[k] for k in ("run", "model", "workload", "kind", "itl_definition", "stress")}
    row["new_levels"] = ",".join(pred.get("new_levels", []))
    for m in METRICS:
        p = pred[f"{m}_ms"]
        for q in ("mean", "p90", "p99"):
            o = case["observed"].get(f"{m}_{q}")
            row[f"{m}_{q}_obs"] = o
            # the point (median across draws), and the mean across draws (the point until session 9)
            for sfx in ("", "_draw_mean"):
                if sfx and f"{q}{sfx}" not in p:
                    continue
                v = p[f"{q}{sfx}"]
                row[f"{m}_{q}_pred{sfx}"] = v
                row[f"{m}_{q}_err_pct{sfx}"] = 100.0 * (v - o) / o if o else np.nan
        for q in ("mean", "p90", "p99"):
            if f"{q}_interval90" not in p:
                continue
            lo, hi = p[f"{q}_interval90"]
            row[f"{m}_{q}_lo90"], row[f"{m}_{q}_hi90"] = lo, hi
            o = case["observed"].get(f"{m}_{q}")
            row[f"{m}_{q}_in90"] = bool(lo <= o <= hi) if o is not None else None  # None: not observed
            row[f"{m}_{q}_iscore90"] = interval_score(lo, hi, o) if o else None
    return row


def summarize(df: pd.DataFrame) -> dict:
    """Median absolute % errors and 90%-interval coverage, overall and excluding stress runs."""
    out = {}
    for label, sub in (("all", df), ("typical", df[~df.stress])):
        s = {"runs": int(len(sub))}
        for m in METRICS:
            use = sub if m != "itl" else sub[sub.itl_definition == "server"]
            for q in ("mean", "p90", "p99"):
                for sfx in ("", "_draw_mean"):
                    if sfx and f"{m}_{q}_err_pct{sfx}" not in use:
                        continue
                    e = use[f"{m}_{q}_err_pct{sfx}"].abs()
                    s[f"{m}_{q}_median_abs_err_pct{sfx}"] = float(e.median()) if len(e.dropna()) else None
            for q in ("mean", "p90", "p99"):
                if f"{m}_{q}_in90" in use:
                    v = use[f"{m}_{q}_in90"].dropna()
                    s[f"{m}_{q}_coverage90"] = float(v.astype(bool).mean()) if len(v) else None
                if f"{m}_{q}_iscore90" in use:
                    v = use[f"{m}_{q}_iscore90"].dropna()
                    s[f"{m}_{q}_median_iscore90"] = float(v.median()) if len(v) else None
        out[label] = s
    return out


def drop_unused_levels(obs):
    """Remove hardware / model-class levels without rows (so a held-out model class is a new level)."""
    from dataclasses import replace

    out = obs
    for idx_name, lev_name in (("hw", "hardware_levels"), ("cls", "class_levels")):
        idx = getattr(out, idx_name)
        used = np.unique(idx)
        levels = getattr(out, lev_name)
        remap = np.full(len(levels), -1)
        remap[used] = np.arange(len(used))
        out = replace(out, **{idx_name: remap[idx].astype(idx.dtype), lev_name: tuple(levels[i] for i in used)})
    return out


def _cv_groups(cases, mode):
    key = {"loro": "run", "lomo": "model", "lowo": "workload"}[mode]
    groups: dict[str, list] = {}
    for c in cases:
        groups.setdefault(c[key], []).append(c)
    return groups


def cv_fit_path(fit_dir, exclude_runs, fit_kwargs: dict | None = None, *, n_per_run_kind: int = 40,
                seed: int = 0) -> str:
    """Cache file of :func:`cv_fit`'s refit without ``exclude_runs``, keyed by every argument the fit
    depends on: the sampler settings ``fit_kwargs`` (as passed to ``model.fit``; unset ones are
    ``model.DEFAULT_SAMPLER``'s), the rows per run and kind and the seed. One per held-out set and
    settings, whichever suite asks (leave-one-TP-out of a TP used by one model is that model's
    leave-one-model-out). The name also hashes the feature spec, the default
    priors and the source of the modules a fit runs through (model, features, design), so a cache
    written by another version of the model is not reused. (Session 16: the sampler settings were
    not in the key, so the probe benchmark (default sampler, 4000 draws after 1000 tuning steps)
    had been reading fold fits the accuracy commands wrote with 1000 after 500; refit with its own
    settings, the held-out 7B runs moved by up to 9 points.)"""
    import hashlib
    import json
    from pathlib import Path

    from bayeslat import model

    from bayeslat.data import design
    from bayeslat import features as F

    src = hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in (model, F, design))).hexdigest()[:16]
    sampler = dict(model.DEFAULT_SAMPLER) | {k: v for k, v in (fit_kwargs or {}).items() if v is not None}
    key = ("\n".join(sorted(exclude_runs)) + "\n" + F.SPEC_VERSION + "\n" + json.dumps(model.DEFAULT_PRIORS, sort_keys=True)
           + "\n" + src + "\n" + json.dumps(sampler, sort_keys=True) + f"\nrows {int(n_per_run_kind)} seed {int(seed)}")
    h = hashlib.sha256(key.encode()).hexdigest()[:10]
    return f"{fit_dir}/heldout-{h}.nc"


def cv_fit(full, exclude_runs, *, seed: int = 0, n_per_run_kind: int = 40, fit_kwargs: dict | None = None,
           fit_dir=None, log=None):
    """Refit without ``exclude_runs`` (rows of ``full``, an ObsTable of the bundled runs, or a
    function returning it, called only when the fold is not cached): the held-out levels are
    dropped (a held-out model class is then new), ``n_per_run_kind`` rows per (run, kind) as the
    default fit. ``fit_dir``: the netCDF cache (:func:`cv_fit_path` of these arguments; read if
    present, else written), so that the cross-validation suites and the benchmarks share their refits."""
    from pathlib import Path

    from bayeslat import model

    from bayeslat.data import design
    path = None if fit_dir is None else cv_fit_path(fit_dir, exclude_runs, fit_kwargs, n_per_run_kind=n_per_run_kind, seed=seed)
    if path is not None and Path(path).exists():
        idata = model.load(path)
        # a cache written before the run-spread stage, or under other RUN_SPREAD settings (not in
        # the cache key: the stage is a second or two, so it is redone instead of the refit)
        stored = (model.attr_json(idata, "run_spread", {}) or {}).get("config")
        if "run_spread" not in idata.groups() or stored != model.RUN_SPREAD:
            model.attach_run_spread(idata, seed=int(idata.attrs.get("seed", 0)))
        if SIM_DISCREPANCY:
            # a cache written before the stage, or under another run spread (the discrepancy is
            # what the predictive spread, run spread included, leaves): measure it, rewrite the cache
            rec = model.attr_json(idata, "sim_discrepancy", None) or {}
            if rec.get("run_spread_config") != model.RUN_SPREAD:
                attach_sim_discrepancy(idata, seed=seed)
                model.save(idata, path)
        else:
            idata.attrs.pop("sim_discrepancy", None)
        return idata
    full = full() if callable(full) else full
    obs = drop_unused_levels(full.subset(~np.isin(full.run, list(exclude_runs))))
    obs = design.subsample(obs, n_per_run_kind=n_per_run_kind, seed=seed)
    t0 = time.time()
    idata = model.fit(obs, seed=20261122 + seed, progressbar=False, **(fit_kwargs or {}),
                      attrs={"held_out_runs": sorted(exclude_runs)})
    (log or (lambda *a: None))(f"refit on {len(obs.y)} rows in {time.time() - t0:.0f} s")
    if SIM_DISCREPANCY:
        attach_sim_discrepancy(idata, seed=seed)
    if path is not None:
        model.save(idata, path)
    return idata


def _experiment_case(d, hardware, seed: int):
    """One inference-perf experiment directory (``exp-config.yaml``, ``profile.yaml``,
    ``results/summary_lifecycle_metrics.json``, the layout of the shared ``experiments/``)."""
    from pathlib import Path

    from bayeslat.config import specs

    from bayeslat.data import workload
    from bayeslat.data.design import _resolve_model

    d = Path(d)
    cfg_f, prof_f, sum_f = d / "exp-config.yaml", d / "profile.yaml", d / "results" / "summary_lifecycle_metrics.json"
    for f in (cfg_f, prof_f, sum_f):
        if not f.is_file():
            raise SpecError("missing: an experiment directory needs exp-config.yaml, profile.yaml and "
                            "results/summary_lifecycle_metrics.json", file=str(f))
    def mapping(f):
        doc = read_yaml(f) or {}
        if not isinstance(doc, dict):
            raise SpecError("must be a mapping", file=str(f))
        return doc

    cfg, prof = mapping(cfg_f), mapping(prof_f)
    hw = cfg.get("hardware") or hardware
    if not hw:
        raise SpecError("no hardware: add `hardware:` (e.g. H100, A100-80, L40S or a datasheet path) or pass "
                        "--hardware", file=str(cfg_f), field="hardware")
    if "model" not in cfg:
        raise SpecError("missing", file=str(cfg_f), field="model")
    # a config.json next to the experiment wins; else the model id / bundled key
    model = str(d / "config.json") if (d / "config.json").is_file() else _resolve_model(str(cfg["model"])).source
    tp = cfg.get("tensor_parallelism", cfg.get("tensor_parallel", 1))
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise SpecError(f"must be an integer >= 1, got {tp!r}", file=str(cfg_f), field="tensor_parallelism")
    server = {"tensor_parallel": tp, "max_model_len": cfg.get("max_model_len"),
              "max_num_batched_tokens": cfg.get("max_num_batched_tokens"), "max_num_seqs": cfg.get("max_num_seqs"),
              "block_size": cfg.get("block_size", 16), "prefix_caching": cfg.get("enable_prefix_caching", True),
              "chunked_prefill": True, "gpu_memory_utilization": cfg.get("gpu_memory_utilization", 0.9),
              "kv_blocks": cfg.get("kv_blocks"), "cpu_offload_gb": cfg.get("cpu_offload_gb")}
    server = {k: v for k, v in server.items() if v is not None}
    try:
        hw_source = str(specs.load_hardware(hw).source)
    except SpecError as e:
        if e.file != str(hw):  # an error inside the datasheet it names is that file's
            raise
        raise SpecError(f"{hw!r}: {e.reason}", file=str(cfg_f) if cfg.get("hardware") else None,
                        field="hardware" if cfg.get("hardware") else "--hardware") from None
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
        raise SpecError("not inference-perf's lifecycle summary (needs successes.latency)", file=str(sum_f),
                        field="successes.latency") from None
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
    observed.update(itl_mean=(observed["e2e_mean"] - observed["ttft_mean"]) / (n_out - 1) if ok else None,
                    itl_p90=None, itl_p99=None)
    return dict(run=d.name, model=str(cfg["model"]), workload=str((prof.get("data") or {}).get("type", "")),
                kind="experiment", itl_definition="server" if ok else "none", deployment=dep, workload_obj=wl,
                observed=observed, stress=False)


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
    from pathlib import Path

    from bayeslat.config import specs
    from bayeslat.data.design import _resolve_model

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
            raise SpecError("expected {\"runs\": [...]} (the trainval15.json layout)", file=str(p), field="runs")
        resolved = []
        for i, r in enumerate(recs):
            where = f"runs[{i}]"
            if not isinstance(r, dict):
                raise SpecError(f"must be an object, got {r!r}", file=str(p), field=where)
            for k in ("model_config", "hardware", "tensor_parallel", "max_num_seqs", "max_num_batched_tokens",
                      "workload", "observed_ms"):
                if k not in r:
                    raise SpecError("missing", file=str(p), field=f"{where}.{k}")
            mc = str(r["model_config"])
            cands = [p.parent / mc] + [q / mc for q in p.resolve().parents] + [Path(mc)]
            hit = next((c for c in cands if c.is_file()), None)
            try:
                model = str(hit) if hit else _resolve_model(mc if "/" not in mc or not mc.endswith(".json")
                                                            else Path(mc).parent.name).source
                hw = str(specs.load_hardware(str(r["hardware"])).source)
            except SpecError as e:
                raise SpecError(f"{where}: {e}", file=str(p), field=f"{where}.model_config / hardware") from None
            resolved.append({**r, "model_spec": model, "hardware_spec": hw, "in_per_request_data": False,
                             "name": r.get("name") or r.get("id") or f"run{i}"})
        out += _aggregate_cases(runs, seed, records=resolved)
    return out


#: the suites of :func:`validate` (``bayeslat validate --suite``)
SUITES = ("replay", "aggregate", "all", "loro", "lomo", "lowo", "external")


def validate(suite: str = "replay", idata=None, draws: int = 8, runs=None, seed: int = 0,
             fit_kwargs: dict | None = None, n_per_run_kind: int = 40, log=None,
             fit_dir=None, external=None, hardware=None) -> tuple[pd.DataFrame, dict]:
    """Predict every run of ``suite`` and compare. Returns (per-run table, summary).

    ``fit_dir``: where the cross-validation refits are cached (:func:`cv_fit_path`).
    ``suite="external"``: the runs of ``external`` (paths, :func:`external_cases`; ``hardware`` for
    experiment directories that name none)."""
    from bayeslat import model

    if suite not in SUITES:
        raise SpecError(f"unknown suite {suite!r} (one of {', '.join(SUITES)})", field="suite")
    if int(draws) < 1:
        raise SpecError(f"must be >= 1, got {draws}", field="draws")
    log = log or (lambda *a: None)
    rows = []
    if suite in ("loro", "lomo", "lowo"):
        from bayeslat.data import design
        cases = _replay_cases(runs)
        if not cases:
            raise SpecError(f"no bundled run matches {runs}", field="runs")
        # reconstructed once, and only if a fold is not cached; each fold is a subset
        full = functools.cache(lambda: design.bundled_obs(seed=seed))
        for held, group in _cv_groups(cases, suite).items():
            exclude = {c["run"] for c in group}
            fit_idata = cv_fit(full, exclude, seed=seed, n_per_run_kind=n_per_run_kind, fit_kwargs=fit_kwargs,
                               fit_dir=fit_dir, log=lambda m: log(f"[{suite}] held out {held}: {m}"))
            for c in group:
                rows.append(compare(c, predict_case(c, fit_idata, draws, seed)) | {"held_out": held})
    else:
        idata = idata if idata is not None else model.load_default()
        cases = []
        if suite in ("replay", "all"):
            cases += _replay_cases(runs)
        if suite in ("aggregate", "all"):
            cases += _aggregate_cases(runs, seed)
        if suite == "external" or external:
            cases += external_cases(external or [], hardware=hardware, seed=seed, runs=runs)
        if not cases:
            if suite == "external" and not external:
                raise SpecError("suite 'external' needs the runs to validate (--external PATH ...)", field="external")
            raise SpecError(f"no run of suite {suite!r} matches {runs}" if runs else f"suite {suite!r} has no runs",
                            field="runs")
        for c in cases:
            t0 = time.time()
            rows.append(compare(c, predict_case(c, idata, draws, seed)))
            log(f"[{suite}] {c['run']}: {time.time() - t0:.1f} s")
    df = pd.DataFrame(rows)
    return df, summarize(df)


def format_table(df: pd.DataFrame) -> str:
    cols = ["run", "ttft_mean_obs", "ttft_mean_pred", "ttft_mean_err_pct", "itl_mean_obs", "itl_mean_pred",
            "itl_mean_err_pct", "e2e_mean_obs", "e2e_mean_pred", "e2e_mean_err_pct", "e2e_mean_in90"]
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.float_format", "{:.1f}".format):
        return df[[c for c in cols if c in df]].to_string(index=False)


def cli_validate(args) -> int:
    idata = None
    if args.model:
        from bayeslat import model

        idata = model.load(args.model)
    suite = "external" if getattr(args, "external", None) and args.suite == "replay" else args.suite
    df, summary = validate(suite, idata=idata, draws=args.draws, runs=args.runs,
                           log=lambda *a: print(*a, file=sys.stderr), external=getattr(args, "external", None),
                           hardware=getattr(args, "hardware", None))
    report = {"suite": suite, "summary": summary, "runs": json.loads(df.to_json(orient="records"))}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(format_table(df))
        print(json.dumps(summary, indent=1))
    return 0
