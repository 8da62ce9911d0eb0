"""`bayeslat check` on any fit, bundled or not: a fit carries its training runs' specs
(attrs "training_deployments"), so a fit on ingested traces gets the configuration-distance,
tensor-parallel and deployment rules the shipped default gets; a new deployment is at least
extrapolating, and the continuous score agrees with the verdict.

One tiny real fit (module fixture) on the exact toy server's run (tests/synthrun.py), ingested
from OTLP traces as a new user's would be; the shipped default fit for comparison."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from synthrun import BUDGET, MAX_SEQS, _run, write_trace

from bayeslat import config as S
from bayeslat import model as M
from bayeslat import transfer as T
from bayeslat.cli import check as CC
from bayeslat.data import design as D
from bayeslat.data import workload as W
from bayeslat.data.ingest import ingest
from bayeslat.model import training as MT
from bayeslat.simulate import spec as SP

RUN = "synth-tp1"
SERVER = {"max_num_batched_tokens": BUDGET, "max_num_seqs": MAX_SEQS, "prefix_caching": False}
EXAMPLES = Path(__file__).resolve().parents[1] / "specs" / "examples"
# the log-distance at which a feature alone makes a configuration extrapolating
EXTRAP_LOG = math.log(1.10)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """A fit on one ingested TP1 run (llama-2-7b-hf on an H100, the toy server's traces)."""
    d = tmp_path_factory.mktemp("ingested_fit")
    req, steps = _run()
    write_trace(d / "trace.jsonl", req, steps)
    (d / "exp.yaml").write_text(
        f"name: {RUN}\nmodel: llama-2-7b-hf\nhardware: H100 SXM\nserver:\n  tensor_parallel: 1\n"
        f"  max_num_batched_tokens: {BUDGET}\n  max_num_seqs: {MAX_SEQS}\n  block_size: 16\n"
        "  prefix_caching: false\n"
    )
    ingest([d / "trace.jsonl"], experiment=d / "exp.yaml", out=d / "tables")
    obs = D.obs_from_tables(d / "tables")
    # 200 tuning steps: after 50 the one chain had not adapted (decode_kv 14x its prior median) and
    # its predictions ran the trained configuration past its own training range
    idata = M.fit(obs, draws=50, tune=200, chains=1, seed=0, progressbar=False)
    path = M.save(idata, d / "fit.nc")
    wl = W.from_requests(
        pd.DataFrame({"arrival_us": req["arrival"] / 1e3, "input_tokens": req["prompt"], "output_tokens": req["nout"]})
    )
    return {"idata": idata, "path": path, "obs": obs, "wl": wl}


@pytest.fixture(scope="module")
def default():
    return M.load_or_default(None)


def _spec(tp=1, hardware="h100-sxm", workload=None):
    return SP.make_spec("llama-2-7b-hf", hardware, SERVER | {"tensor_parallel": tp}, workload)


def _rules(rep) -> set:
    """The kinds of rule a report fired."""
    trig = rep["triggers"]["out-of-distribution"] + rep["triggers"]["extrapolating"]
    out = {t for t in ("deployment", "tensor_parallel") if t in trig}
    out |= {"config feature" for t in trig if t.startswith("feature ")}
    out |= {"workload feature" for t in trig if t.startswith("workload ")}
    if rep["feature_distance"]["config"].get("joint"):
        out.add("joint distance")
    return out


def _score_agrees(rep):
    w = rep["intervals"]["workload"].get("e2e_ms", {}).get("rel_width90") or 0.0
    floor = {"in-distribution": 0.0, "extrapolating": EXTRAP_LOG, "out-of-distribution": math.log(3.0)}[rep["verdict"]]
    assert rep["score"] - w >= floor - 1e-12, (rep["verdict"], rep["score"], w)


def test_fit_stores_each_training_runs_specs(synth):
    idata, obs = synth["idata"], synth["obs"]
    stored = json.loads(M.load(synth["path"]).attrs["training_deployments"])
    assert list(stored["runs"]) == [RUN]
    r = stored["runs"][RUN]
    assert r["model"] == "llama-2-7b-hf" and r["hardware"] == "H100 SXM" and r["server"]["tensor_parallel"] == 1
    assert r["deployment"] == str(idata.constant_data["deployment"].values[0])
    train = MT.training_deployments(idata)
    assert list(train) == [RUN]
    assert train[RUN].tensor_parallel == 1 and train[RUN].max_model_len == 4096
    assert (
        train[RUN].ctx
        == D.experiment_context(
            {"run": RUN, "model": "llama-2-7b-hf", "hardware": "H100 SXM", "server_json": json.dumps(SERVER)}
        )["ctx"]
    )
    # the ObsTable's own specs round-trip through its npz file
    assert set(D.ObsTable.load(obs.save(Path(synth["path"]).parent / "obs.npz")).meta["specs"]) == {RUN}


def test_ingested_fit_reports_the_default_fits_rule_set(synth, default):
    """A TP2 configuration against the TP1-only ingested fit: new deployment, new TP degree,
    configuration distances (tp_comm never trained), the nearest training deployment; features the
    training rows never had are said to be so, not "1000000.0x the largest trained value". A TP8
    configuration against the shipped default fit fires the same kinds of rule."""
    rep = T.check(_spec(2, workload=synth["wl"]), synth["idata"], draws=4)
    text = CC.format_check(CC._jsonable(rep))
    assert rep["verdict"] != "in-distribution"
    assert rep["level_flags"]["tensor_parallel"] and rep["level_flags"]["deployment"]
    assert any(r.startswith("tensor-parallel degree 2 was not in the fit (trained: 1)") for r in rep["reasons"])
    assert any(r.startswith("this deployment") for r in rep["reasons"])
    per = rep["feature_distance"]["config"]["per_feature"]
    assert per["tp_comm"]["never_trained"] and "feature tp_comm" in rep["triggers"]["out-of-distribution"]
    assert rep["feature_distance"]["config"]["joint"]["nearest"] == RUN
    wd = rep["feature_distance"]["workload"]["tp_comm"]
    assert wd["never_trained"] and wd["train_max"] == 0
    assert "tp_comm is active in 100% of the simulated steps but was never seen in training (0 in every training row)" in text
    assert "1000000" not in text and "lies inside the training range" not in text
    assert rep["training"] == {"deployments": 1, "unknown_runs": {}}
    _score_agrees(rep)

    ref = T.check(_spec(8, workload=synth["wl"]), default, draws=4)
    assert set(ref["feature_distance"]["config"]["per_feature"]) == set(per)
    core = {"deployment", "tensor_parallel", "config feature", "joint distance"}
    assert core <= _rules(ref) and core <= _rules(rep)
    # and the trained configuration is in-distribution against the ingested fit, as on the default
    own = T.check(_spec(1, workload=synth["wl"]), synth["idata"], draws=4)
    assert own["verdict"] == "in-distribution", own["reasons"]


def test_fit_without_specs_names_its_runs_and_attach_restores_them(synth):
    """A fit made before the specs were stored: the check names the runs it cannot compare with
    and does not call even the trained configuration in-distribution; attach_training_specs adds
    them without touching the posterior or the data hash."""
    old = synth["idata"].copy()
    del old.attrs["training_deployments"]
    rep = T.check(_spec(1), old, draws=2)
    assert rep["verdict"] == "extrapolating" and rep["training"]["unknown_runs"].keys() == {RUN}
    assert any(RUN in r and "not checked" in r for r in rep["reasons"])
    assert not rep["feature_distance"]["config"]["per_feature"]
    h = old.attrs["data_hash"]
    out = MT.attach_training_specs(old, synth["obs"])
    assert out == {"stored": [RUN], "unknown": {}}
    assert old.attrs["data_hash"] == h and old.attrs["training_deployments"] == synth["idata"].attrs["training_deployments"]
    assert T.check(_spec(1), old, draws=2)["verdict"] == "in-distribution"
    # a run id that is only the suffix of a bundled run's is not taken for that bundled run
    renamed = synth["idata"].copy()
    del renamed.attrs["training_deployments"]
    renamed.constant_data["run"] = ("obs_id", np.full(renamed.constant_data.sizes["obs_id"], "llama-2-7b-tp1-codegen"))
    specs, unknown = MT.training_specs(renamed)
    assert specs == {} and list(unknown) == ["llama-2-7b-tp1-codegen"]


def test_bundled_fit_without_specs_uses_the_bundled_data_and_attach_keeps_its_checks(default, tmp_path):
    specs, unknown = MT.training_specs(default)
    assert unknown == {} and len(specs) == len(set(default.constant_data["run"].values.astype(str).tolist()))
    fit = M.load_or_default(None)
    fit.attrs.pop("training_deployments", None)
    h = fit.attrs["data_hash"]
    assert MT.attach_training_specs(fit)["unknown"] == {}
    p = M.save(fit, tmp_path / "default_with_specs.nc")
    back = M.load(p)
    assert back.attrs["data_hash"] == h
    s = _spec(8)
    a, b = T.check(s, fit, draws=2), T.check(s, back, draws=2)
    assert a["reasons"] == b["reasons"] and a["score"] == b["score"]
    assert json.loads(back.attrs["training_deployments"])["runs"].keys() == specs.keys()


def test_new_deployment_on_trained_gpu_class_and_tp_is_extrapolating(synth, default):
    """A deployment the fit has not seen, on its GPU, class and TP degree and inside every other
    rule (here: the same model on a datasheet 2% faster in memory bandwidth, same GPU name), is
    extrapolating, and its score is not below the extrapolating threshold."""
    h100 = S.load_hardware("h100-sxm")
    other = replace(h100, hbm_bandwidth=1.02 * h100.hbm_bandwidth)
    for idata in (synth["idata"], default):
        base = T.check(_spec(1), idata, draws=2)
        new = T.check(_spec(1, hardware=other), idata, draws=2)
        assert base["verdict"] == "in-distribution", base["reasons"]
        assert new["verdict"] == "extrapolating", new["reasons"]
        assert new["triggers"] == {"out-of-distribution": [], "extrapolating": ["deployment"]}
        assert new["level_flags"]["deployment"] and not new["level_flags"]["hardware"]
        assert new["score"] >= EXTRAP_LOG > base["score"]
        _score_agrees(new)
        _score_agrees(base)


@pytest.mark.parametrize(
    "name, verdict",
    [
        ("llama-2-7b-h100-codegen", "in-distribution"),
        ("llama-2-7b-a100-codegen", "extrapolating"),
        ("llama-3.1-8b-random-l40s", "extrapolating"),
    ],
)
def test_shipped_examples_keep_their_verdicts(default, name, verdict):
    rep = T.check(EXAMPLES / f"{name}.yaml", default)
    assert rep["verdict"] == verdict, rep["reasons"]
    _score_agrees(rep)
