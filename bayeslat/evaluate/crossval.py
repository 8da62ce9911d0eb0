"""Cross-validation refits: the fit without held-out runs (their unused levels dropped), cached on
disk under a key of everything the fit depends on, so the suites and the benchmarks share them."""

from __future__ import annotations

import functools
import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bayeslat import features as F
from bayeslat import model
from bayeslat.data import design
from bayeslat.errors import SpecError
from bayeslat.simulate import discrepancy
from bayeslat.simulate.discrepancy import attach_sim_discrepancy


def drop_unused_levels(obs):
    """Remove hardware / model-class levels without rows (so a held-out model class is a new level)."""
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


def _source_files(module) -> list[Path]:
    """The source of a module and of its siblings that extend it (``design*.py``), or every
    module of a package."""
    f = Path(module.__file__)
    return sorted(f.parent.rglob("*.py")) if f.name == "__init__.py" else sorted(f.parent.glob(f"{f.stem}*.py"))


def cv_rows(seed: int = 0, *, n_per_run_kind: int | None = None, bins=design.BINS):
    """A cached callable returning the bundled rows the cross-validation refits are subsets of:
    every row in bin means with ``bins`` (as the default fit), else the raw rows that
    :func:`cv_fit` subsamples to ``n_per_run_kind`` per run and kind. Built on first call only
    (a cached fold never needs it)."""
    if bins is not None and not n_per_run_kind:
        b = tuple(int(x) for x in bins)
        return functools.cache(lambda: design.bundled_obs(seed=seed, bins=b, n_per_run_kind=None))
    return functools.cache(lambda: design.bundled_obs(seed=seed))


def _rows_key(n_per_run_kind, bins) -> str:
    if n_per_run_kind:
        return f"rows {int(n_per_run_kind)}"
    if bins is None:
        raise SpecError("a refit needs n_per_run_kind (raw rows) or bins", field="bins")
    return "bins {}x{}".format(*(int(x) for x in bins))


def cv_fit_path(
    fit_dir, exclude_runs, fit_kwargs: dict | None = None, *, n_per_run_kind: int | None = None, bins=design.BINS, seed: int = 0
) -> str:
    """Cache file of :func:`cv_fit`'s refit without ``exclude_runs``, keyed by every argument the fit
    depends on: the sampler settings ``fit_kwargs`` (as passed to ``model.fit``; unset ones are
    ``model.DEFAULT_SAMPLER``'s), the rows (bins, or raw rows per run and kind) and the seed. One per held-out set and
    settings, whichever suite asks (leave-one-TP-out of a TP used by one model is that model's
    leave-one-model-out). The name also hashes the feature spec, the default
    priors and the source of the modules a fit runs through (the model package, features, design),
    so a cache written by another version of the model is not reused. The sampler settings are in
    the key because they matter: fold fits with 1000 draws after 500 tuning steps and with the
    default sampler put the held-out 7B runs up to 9 points apart."""
    files = [f for m in (model, F, design) for f in _source_files(m)]
    src = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:16]
    sampler = dict(model.DEFAULT_SAMPLER) | {k: v for k, v in (fit_kwargs or {}).items() if v is not None}
    key = (
        "\n".join(sorted(exclude_runs))
        + "\n"
        + F.SPEC_VERSION
        + "\n"
        + json.dumps(model.DEFAULT_PRIORS, sort_keys=True)
        + "\n"
        + src
        + "\n"
        + json.dumps(sampler, sort_keys=True)
        + f"\n{_rows_key(n_per_run_kind, bins)} seed {int(seed)}"
    )
    h = hashlib.sha256(key.encode()).hexdigest()[:10]
    return f"{fit_dir}/heldout-{h}.nc"


def cv_fit(
    full,
    exclude_runs,
    *,
    seed: int = 0,
    n_per_run_kind: int | None = None,
    bins=design.BINS,
    fit_kwargs: dict | None = None,
    fit_dir=None,
    log=None,
):
    """Refit without ``exclude_runs`` (rows of ``full``, an ObsTable of the bundled runs, or a
    function returning it, called only when the fold is not cached; :func:`cv_rows`): the
    held-out levels are dropped (a held-out model class is then new). The rows are those of the
    default fit: every row in bin means (``full`` built with ``bins``), or, with
    ``n_per_run_kind``, that many raw rows per (run, kind). ``fit_dir``: the netCDF cache
    (:func:`cv_fit_path` of these arguments; read if present, else written), so that the
    cross-validation suites and the benchmarks share their refits."""
    path = None
    if fit_dir is not None:
        path = cv_fit_path(fit_dir, exclude_runs, fit_kwargs, n_per_run_kind=n_per_run_kind, bins=bins, seed=seed)
    if path is not None and Path(path).exists():
        idata = model.load(path)
        # a cache written before the run-spread stage, or under other RUN_SPREAD settings (not in
        # the cache key: the stage is a second or two, so it is redone instead of the refit)
        stored = (model.attr_json(idata, "run_spread", {}) or {}).get("config")
        if "run_spread" not in idata.groups() or stored != model.RUN_SPREAD:
            model.attach_run_spread(idata, seed=int(idata.attrs.get("seed", 0)))
        if discrepancy.SIM_DISCREPANCY:
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
    binned = bool(np.any(full.n_rows > 1))
    if not n_per_run_kind and not binned:
        raise SpecError("these rows are raw rows: build them with bins (cv_rows) or give n_per_run_kind", field="bins")
    obs = drop_unused_levels(full.subset(~np.isin(full.run, list(exclude_runs))))
    if n_per_run_kind:
        if binned:
            raise SpecError("n_per_run_kind subsamples raw rows; these rows are bins", field="n_per_run_kind")
        obs = design.subsample(obs, n_per_run_kind=n_per_run_kind, seed=seed)
    t0 = time.time()
    idata = model.fit(
        obs, seed=20261122 + seed, progressbar=False, **(fit_kwargs or {}), attrs={"held_out_runs": sorted(exclude_runs)}
    )
    (log or (lambda *a: None))(f"refit on {len(obs.y)} rows in {time.time() - t0:.0f} s")
    if discrepancy.SIM_DISCREPANCY:
        attach_sim_discrepancy(idata, seed=seed)
    if path is not None:
        model.save(idata, path)
    return idata
