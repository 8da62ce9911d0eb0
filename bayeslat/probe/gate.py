"""Update a fit with a probe (``update``): condition the probe's deployment on it
(``bayeslat.probe.condition.update_deployment``) or refit, where the probe's check says so
(``update_gate``), and report the probe rows and requests before / after.

``bayeslat update`` (``update(when="auto")``) conditions a deployment the fit was trained on only
where the probe's decision (``bayeslat.probe.score.decide``) is not ``transfer-ok``
(``UPDATE_WHEN``).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from bayeslat import features as F
from bayeslat import model as M
from bayeslat import simulate
from bayeslat.data import design
from bayeslat.data import workload as W
from bayeslat.errors import SpecError
from bayeslat.model.training import obs_from_idata
from bayeslat.probe.condition import _one_deployment, auto_calibration, update_deployment
from bayeslat.probe.read import PROBE_DESIGNS
from bayeslat.probe.score import decide, score_rows
from bayeslat.probe.slices import oos_attr
from bayeslat.simulate.extrapolation import WORKLOAD_DISCREPANCY_ATTR
from bayeslat.simulate.spec import resolve_spec, spec_sim_server


def _workload_of(infos):
    frames = [i["frame"] for i in infos if i.get("frame") is not None]
    if not frames:
        return None, None
    df = pd.concat(frames, ignore_index=True)
    return W.from_requests(df), df


def update(
    idata,
    probe_obs_table,
    spec=None,
    *,
    draws: int | None = None,
    tune: int | None = None,
    chains: int | None = None,
    seed: int | None = None,
    backend: str | None = None,
    probe_infos=None,
    pred_draws: int = 20,
    mode: str = "deployment",
    when: str = "auto",
):
    """Bayesian update of the hierarchy with a probe.

    Parameters
    ----------
    idata : arviz.InferenceData
        The fit to update.
    probe_obs_table : ObsTable
        The probe's rows (``bayeslat.probe.probe_obs``).
    spec : str, Path or dict, optional
        The probe's deployment (a SPEC), for the before / after prediction of its requests.
    draws, tune, chains, seed, backend
        Sampler settings of ``mode="refit"`` (default: the fit's).
    probe_infos : list, optional
        What ``bayeslat.probe.probe_obs`` returned with the rows (the probe's requests).
    pred_draws : int
        Posterior draws of the before / after prediction.
    mode : {"deployment", "refit"}
        What is updated (below).
    when : {"auto", "always", "needed"}
        Whether to update (below).

    Returns
    -------
    arviz.InferenceData
        The updated fit (a copy); ``attrs["transfer_update"]`` (JSON) is the report.

    Notes
    -----
    ``when``: "always" updates; "needed" only where the probe's check (``score_rows``,
    ``decide``, as ``bayeslat check --probe``) is not transfer-ok; "auto" (default) always for
    a deployment the fit has not seen, as "needed" for one it was trained on (see
    ``UPDATE_WHEN``). Not updated: the fit is returned as is (a copy) with the report,
    ``applied`` false and why.

    The gate applies to both modes (``bayeslat update --refit`` on an agreeing probe of a trained
    deployment also returns the fit unchanged unless ``when="always"``); a probe of several
    deployments is refused in deployment mode before it is scored.

    ``mode="deployment"`` (default): condition the probe's deployment level on the probe rows,
    the rest of the hierarchy held at its posterior (``update_deployment``; seconds).
    ``mode="refit"``: refit on the training rows (``obs_from_idata``) plus the probe rows,
    with the fit's sampler settings and seed unless overridden (nutpie has no warm start from a
    previous posterior, so this is a refit with the same seeds); the deployment spread of the
    original fit is carried over. Measured on held-out models (benchmarks/transfer_eval.py), the
    refit pulls the shared coefficients towards the probe's model and can make that model's
    workload prediction worse (7B codegen: E2E -1.7% -> +17.8%), which the deployment update
    avoids.

    The report gives the probe rows' median relative 90% width and absolute % error before / after and,
    when ``spec`` and ``probe_infos`` are given, the predicted mean TTFT / E2E of the probe's
    requests before / after vs observed.

    Examples
    --------
    >>> import bayeslat
    >>> from bayeslat.probe import probe_obs
    >>> spec = "specs/examples/llama-2-7b-a100-codegen.yaml"
    >>> rows, infos = probe_obs(spec, ["probe.csv"])  # doctest: +SKIP
    >>> new = bayeslat.update(bayeslat.load("models/default.nc"), rows, spec, probe_infos=infos)  # doctest: +SKIP
    """
    if mode not in ("deployment", "refit"):
        raise SpecError(f"update mode must be 'deployment' or 'refit', got {mode!r}", field="mode")
    sd = int(seed if seed is not None else idata.attrs.get("seed", 0))
    if mode == "deployment":  # refused before the gate, whatever ``when`` says
        _one_deployment(M.check_obs(probe_obs_table))
    train = obs_from_idata(idata)
    # scored with the seed ``bayeslat check --probe`` uses (score_probe's default), so the gate's
    # decision is the one the check prints, whatever the fit's seed
    gate = update_gate(idata, probe_obs_table, when, seed=0)
    if not gate["apply"]:
        return _update_report(idata, idata.copy(), train, probe_obs_table, spec, probe_infos, pred_draws, sd, None, gate)
    if mode == "deployment":
        n_req = sum(int(i.get("requests", 0)) for i in probe_infos or [])
        cal = (
            auto_calibration(idata, n_req, seed=sd, design=probe_obs_table.meta.get("probe_design", "first")) if n_req else "auto"
        )
        new, dinfo = update_deployment(idata, probe_obs_table, seed=sd, calibration=cal)
        new.attrs["updated_from"] = idata.attrs.get("data_hash", "")
        return _update_report(idata, new, train, probe_obs_table, spec, probe_infos, pred_draws, sd, dinfo, gate)
    both = design.concat([train, probe_obs_table])
    samp = M.attr_json(idata, "sampler", {}) or {}
    cfg = {"draws": draws or samp.get("draws"), "tune": tune or samp.get("tune"), "chains": chains or samp.get("chains")}
    bk = backend or (idata.attrs.get("backend") if idata.attrs.get("backend") in M.BACKENDS else None)
    spread = "deployment_spread" in idata.groups()
    # the between-deployment spread of the original fit is carried over (a probe adds one
    # deployment to those it was estimated from; the shipped default's comes from held-out models,
    # which a refit's residuals could not reproduce); the original fit's priors (a user's own
    # included), with the deployment level off when the spread is carried over
    priors = M.attr_json(idata, "priors", None) or {}
    if spread:
        priors = dict(priors) | {"deployment_level": "off"}
    new = M.fit(
        both,
        backend=bk,
        seed=sd,
        progressbar=False,
        **cfg,
        priors=priors or None,
        attrs={
            "updated_from": idata.attrs.get("data_hash", ""),
            "probe_runs": sorted(set(np.asarray(probe_obs_table.run).tolist())),
        },
    )
    if spread:
        M.attach_deployment_spread(new, idata, {"carried_over_from": idata.attrs.get("data_hash", "")})
    # as the deployment spread: the simulator and workload discrepancies and the probe slice errors carry over
    for key in ("sim_discrepancy", WORKLOAD_DISCREPANCY_ATTR) + tuple(oos_attr(d) for d in PROBE_DESIGNS):
        if key in idata.attrs:
            new.attrs[key] = idata.attrs[key]
    return _update_report(idata, new, train, probe_obs_table, spec, probe_infos, pred_draws, sd, {"mode": "refit"}, gate)


#: ``update(when=)``. Measured (benchmarks/probe_gate.py, 16 runs each): for a trained
#: deployment under a held-out workload, updating on every probe made the mean E2E worse (median
#: |error| 1.8% -> 2.9%, 12 of 16 runs worse; interval score 0.13 -> 0.16), updating only where the
#: check is not transfer-ok left it at 1.8% / 0.13 (12 of 16 probes transfer-ok); for held-out
#: models (new deployments) updating always was better than gated (E2E 4.6% -> 2.2% vs 4.3%).
#: "auto" combines the two; it was chosen after seeing both suites.
UPDATE_WHEN = ("auto", "always", "needed")


def update_gate(idata, probe_obs_table, when: str = "auto", *, seed: int = 0) -> dict:
    """Whether ``update`` conditions the fit on the probe: {"apply", "when", "decision",
    "reasons", "trained_deployment", "deployments", "summary", "scores"}. The decision is
    ``decide`` of ``score_rows`` (``"scores"``; what ``bayeslat check --probe`` says);
    where ``when`` does not need it ("always", or "auto" for a new deployment) it is still
    reported."""
    if when not in UPDATE_WHEN:
        raise SpecError(f"when must be one of {', '.join(UPDATE_WHEN)}, got {when!r}", field="when")
    keys = sorted(set(M.check_obs(probe_obs_table)["deployment"].tolist()))
    trained = bool(keys) and all(M.trained_deployment(idata, k) for k in keys)
    sc = score_rows(idata, probe_obs_table, seed=seed)
    decision, why = decide(sc)
    apply = when == "always" or decision != "transfer-ok" or (when == "auto" and not trained)
    if apply:
        reason = (
            "updated (--when always)"
            if when == "always"
            else f"updated: the check says {decision}"
            if decision != "transfer-ok"
            else "updated: a deployment the fit has not seen"
        )
    elif trained:
        reason = (
            "not updated: the probe agrees with the fit (transfer-ok) on a deployment it was trained on; updates "
            "on agreeing probes of trained deployments made held-out workloads' predictions worse "
            "(benchmarks/probe_gate.py); --when always updates anyway"
        )
    else:
        reason = (
            "not updated (--when needed): the probe agrees with the fit (transfer-ok); this deployment is new to "
            "the fit, which --when auto would have updated (on held-out models, updating every probe was better: "
            "benchmarks/probe_gate.py)"
        )
    return {
        "apply": bool(apply),
        "when": when,
        "decision": decision,
        "reasons": why,
        "trained_deployment": trained,
        "deployments": keys,
        "summary": reason,
        "scores": sc,
    }


def _update_report(idata, new, train, probe_obs_table, spec, probe_infos, pred_draws, sd, info, gate):
    # the probe rows are scored as the gate scored them (the check's seed): one set of numbers
    gate = dict(gate)
    before = gate.pop("scores")
    applied = bool(gate["apply"])
    # a deployment update keeps the probe's slice error apart from the deployment's factors, so its
    # rows are still a slice of a new run after it; a refit has the probe rows among its own
    after = score_rows(new, probe_obs_table, seed=0, new_run=(info or {}).get("mode") != "refit") if applied else before
    rep = {
        "mode": (info or {}).get("mode") if applied else None,
        "applied": applied,
        "gate": gate,
        "deployment_update": info if applied else None,
        "rows_train": int(len(train)),
        "rows_probe": int(len(probe_obs_table)),
        "probe_rows": {
            "before": {k: before[k] for k in ("coverage90", "rel_width90_median", "abs_err_pct_median", "ratio_median")},
            "after": {k: after[k] for k in ("coverage90", "rel_width90_median", "abs_err_pct_median", "ratio_median")},
        },
    }
    rep["probe_rows"]["width_shrink"] = 1.0 - after["rel_width90_median"] / max(before["rel_width90_median"], 1e-12)
    if spec is not None and probe_infos:
        pw = predict_before_after(spec, idata, new if applied else None, probe_infos, draws=pred_draws, seed=sd)
        if pw is not None:
            rep["probe_workload"] = pw
    new.attrs["transfer_update"] = json.dumps(rep)
    return new


def _coef_draws(idata, s, n, seed):
    return M.coefficient_draws(
        idata,
        s["hardware"].name,
        s["model"].model_class,
        n=n,
        seed=seed,
        deployment=F.deployment_key(s["ctx"], s["hardware"].name),
        tensor_parallel=s["server"].tensor_parallel,
    )


def predict_before_after(spec, old, new, probe_infos, *, draws: int = 20, seed: int = 0) -> dict:
    """Predicted mean TTFT / E2E (and 90% intervals) of the probe's own requests under the old and
    the updated posterior, vs the observed means; None for a probe without requests (steps alone).
    ``new`` None (the fit was not updated): "after" is "before", not simulated again."""
    s = resolve_spec(spec)
    wl, df = _workload_of(probe_infos)
    if wl is None:  # a probe of steps alone: no requests to replay
        return None
    ok = ~df["has_error"].astype(bool)
    obs = {"ttft_ms": float(df.loc[ok, "ttft_ms"].mean()), "e2e_ms": float(df.loc[ok, "e2e_ms"].mean())}
    out = {}
    for tag, idt in (("before", old), ("after", new)):
        if idt is None:
            out[tag] = out["before"]
            continue
        pp = simulate.posterior_predictive(wl, s["ctx"], spec_sim_server(s), _coef_draws(idt, s, draws, seed), seed=seed)
        out[tag] = {
            m: {"mean": pp[m]["mean"], "interval90": pp[m]["mean_interval90"], "err_pct": 100 * (pp[m]["mean"] - obs[m]) / obs[m]}
            for m in ("ttft_ms", "e2e_ms")
        }
    out["observed"] = obs
    return out
