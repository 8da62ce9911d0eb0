"""The training runs of a fit, read back from its InferenceData: its observation rows
(:func:`obs_from_idata`) and the specs of its training deployments (:func:`training_specs`,
:func:`training_deployments`; stored by ``model.fit``, added to an older fit by
:func:`attach_training_specs`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from bayeslat.data import datasets, design
from bayeslat.deployment import resolve
from bayeslat.errors import SpecError


def _levels(idata):
    post = idata.posterior
    return ([str(v) for v in post.coords["hardware"].values], [str(v) for v in post.coords["model_class"].values])


def obs_from_idata(idata):
    """The training rows of a fit as a :class:`bayeslat.data.design.ObsTable` (``t_frac`` is not stored:
    0)."""
    cd = idata.constant_data
    n = cd.sizes["obs_id"]
    hl, cl = _levels(idata)
    run = cd["run"].values.astype(str) if "run" in cd else np.full(n, "train")
    req = cd["request"].values.astype(np.int64) if "request" in cd else np.full(n, -1, dtype=np.int64)
    deps = dict(zip(run.tolist(), cd["deployment"].values.astype(str).tolist())) if "deployment" in cd else {}
    # the training runs' specs go with their rows: a refit on them (update(mode="refit")) keeps them
    specs = training_specs(idata)[0] if "run" in cd else {}
    return design.ObsTable(
        kind=cd["kind"].values.astype(np.int64),
        y=idata.observed_data["y"].values.astype(np.float64),
        X=cd["X"].values.astype(np.float64),
        A=cd["A"].values.astype(np.float64),
        n_steps=cd["n_steps"].values.astype(np.float64),
        hw=cd["hw"].values.astype(np.int64),
        cls=cd["cls"].values.astype(np.int64),
        run=run,
        request=req,
        t_frac=np.zeros(n),
        hardware_levels=tuple(hl),
        class_levels=tuple(cl),
        meta={"runs": sorted(set(run.tolist())), "deployments": deps, "specs": specs},
        n_rows=cd["n_rows"].values.astype(np.int64) if "n_rows" in cd else None,
        n_eff=cd["n_eff"].values.astype(np.float64) if "n_eff" in cd else None,
    )


#: ``idata.attrs`` key of the training runs' specs (:func:`bayeslat.data.design.training_specs_json`;
#: written by ``model.fit`` from ``ObsTable.meta["specs"]``, added to a fit by :func:`attach_training_specs`)
TRAINING_SPECS_ATTR = "training_deployments"
_NO_SPEC = "no spec stored with the fit (attrs 'training_deployments') and not a bundled run"


def _training_runs(idata) -> list | None:
    """The run ids of a fit's training rows (None: the fit stores none)."""
    cd = idata.constant_data if "constant_data" in idata.groups() else None
    if cd is None or "run" not in cd:
        return None
    return sorted(set(cd["run"].values.astype(str).tolist()))


def _is_bundled(run: str) -> bool:
    """Whether ``run`` is the full id of a bundled run (``datasets.run_info`` also matches a
    suffix, which would take an ingested run named e.g. "codegen" for a bundled one)."""
    try:
        return datasets.run_info(run)["run"] == run
    except KeyError:
        return False


@functools.lru_cache(maxsize=64)
def _bundled_spec(run: str) -> dict:
    return design.bundled_spec(run)


def training_specs(idata) -> tuple[dict, dict]:
    """The specs of a fit's training runs: ``({run: design.spec_record}, {run: why it is
    unknown})``. From the fit's attrs ``training_deployments`` (``model.fit`` stores them from the
    ObsTable's ``meta["specs"]``, which :func:`bayeslat.data.design.bundled_obs` and
    :func:`bayeslat.data.design.obs_from_tables` fill; :func:`attach_training_specs` adds them to an
    older fit), else, for a bundled run, from the bundled data."""
    runs = _training_runs(idata)
    if runs is None:
        return {}, {"(every row)": "the fit stores no run ids"}
    stored, bad = design.training_specs_from_json(idata.attrs.get(TRAINING_SPECS_ATTR))
    out, missing = {}, {}
    for run in runs:
        if run in stored:
            out[run] = stored[run]
            continue
        if _is_bundled(run):
            try:
                out[run] = _bundled_spec(run)
                continue
            except SpecError as e:
                missing[run] = f"its bundled spec does not load ({e})"
                continue
        missing[run] = bad.get(run) or bad.get("*") or _NO_SPEC
    return out, missing


class TrainedDeployment(NamedTuple):
    """One training run's deployment, as the check compares with it."""

    ctx: object
    max_model_len: int
    tensor_parallel: int


def _training(idata) -> tuple[dict, dict]:
    """(:func:`training_deployments`, {run: why its spec is unknown})."""
    specs, missing = training_specs(idata)
    out = {}
    for run, rec in specs.items():
        try:
            ctx = resolve(rec["model"], rec["hardware"], rec["server"], kv="optional").ctx
        except SpecError as e:
            missing[run] = f"its spec gives no feature context ({e})"
            continue
        out[run] = TrainedDeployment(ctx, int(rec["max_model_len"]), int(rec["server"].tensor_parallel))
    return out, missing


def training_deployments(idata) -> dict:
    """{run: :class:`TrainedDeployment` (FeatureContext, max_model_len, tensor_parallel)} of every
    training run whose spec is known (:func:`training_specs`: the fit's stored specs, else the
    bundled data); :func:`check` names the others."""
    return _training(idata)[0]


def attach_training_specs(idata, source=None) -> dict:
    """Store the specs of a fit's training runs in ``idata.attrs["training_deployments"]`` (what
    ``model.fit`` does for a fit of an ObsTable with ``meta["specs"]``), for a fit made before it
    did; the posterior and the data hash are unchanged. ``source``: an ObsTable (its
    ``meta["specs"]``, e.g. ``design.obs_from_tables(DIR)`` of the data the fit was made from), a
    dict ``{run: design.spec_record(...)}`` or None; runs it lacks keep the specs the fit already
    stores, else a bundled run's. Returns {"stored": [runs], "unknown": {run: why}}; modifies and
    keeps ``idata``."""
    given = (getattr(source, "meta", None) or {}).get("specs") if source is not None and not isinstance(source, dict) else source
    have, _ = training_specs(idata)
    runs = _training_runs(idata) or []
    specs = {r: (given or {}).get(r) or have.get(r) for r in runs}
    specs = {r: v for r, v in specs.items() if v is not None}
    txt = design.training_specs_json(specs)
    if txt:
        idata.attrs[TRAINING_SPECS_ATTR] = txt
    return {"stored": sorted(specs), "unknown": {r: _NO_SPEC for r in runs if r not in specs}}


def _trained_tp(train: dict) -> set:
    """Tensor-parallel degrees of the training deployments (:func:`training_deployments`)."""
    return {int(v.tensor_parallel) for v in train.values()}


def trained_vllm_versions(idata) -> tuple[list[str], list[str]]:
    """The vLLM releases of a fit's training runs (:func:`training_specs`; a bundled run whose stored
    server config names none was measured on :data:`bayeslat.data.datasets.VLLM_VERSION`), sorted,
    and the runs whose release is unknown."""
    specs, missing = training_specs(idata)
    versions, unknown = set(), sorted(missing)
    for run, rec in specs.items():
        v = rec["server"].vllm_version
        if v is None and _is_bundled(run):
            v = _bundled_spec(run)["server"].vllm_version
        if v is None:
            unknown.append(run)
        else:
            versions.add(v)
    return sorted(versions, key=lambda v: tuple(int(x) for x in v.split("."))), sorted(unknown)
