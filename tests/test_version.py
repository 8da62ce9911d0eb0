"""The vLLM release a configuration runs: parsing, its distance from the training runs', the
step-time discrepancy the kernels measured under two releases give it, and what check and predict
do with it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bayeslat import config as S
from bayeslat import model as M
from bayeslat import pipeline
from bayeslat import transfer as T
from bayeslat.data import datasets
from bayeslat.data import workload as W
from bayeslat.errors import SpecError
from bayeslat.model import hardware as HW
from bayeslat.model import hardware_steps as HS
from bayeslat.model.training import trained_vllm_versions
from bayeslat.simulate import extrapolation as X
from bayeslat.simulate import spec as SP

RUN = "llama-2-7b-tp1-codegen"


@pytest.mark.parametrize(
    ("text", "release"),
    [
        ("0.15.1", "0.15.1"),
        ("v0.23", "0.23.0"),
        ("0.14.1.dev1+gd68209402", "0.14.1"),
        ("0.19.0rc1", "0.19.0"),
        ("1.2.3-beta", "1.2.3"),
    ],
)
def test_vllm_release_normalises(text, release):
    assert S.vllm_release(text) == release


@pytest.mark.parametrize("text", ["latest", "0", "0.1x", "", "v.15"])
def test_vllm_release_refuses_what_is_not_a_version(text):
    with pytest.raises(SpecError) as e:
        S.vllm_release(text)
    assert e.value.field == "vllm_version"


def test_server_config_takes_a_vllm_version(tmp_path):
    assert S.load_server({"vllm-version": "v0.23"}).vllm_version == "0.23.0"
    assert S.load_server(None).vllm_version is None
    bad = tmp_path / "srv.yaml"
    bad.write_text("tensor_parallel: 1\nvllm_version: nightly\n")
    with pytest.raises(SpecError) as e:
        S.load_server(bad)
    assert e.value.field == "vllm_version" and e.value.file == str(bad) and "nightly" in str(e.value)


def test_release_distance_counts_minor_releases():
    assert S.release_distance("0.15.1", "0.23.0") == 8
    assert S.release_distance("0.23", "0.15.1") == 8
    assert S.release_distance("0.15.1", "0.15.9") == 0
    assert S.release_distance("0.15.0", "1.0.0") == 85


def _with_uniform_version_change(ds, c):
    """A copy of a hardware level whose second release multiplies every kernel term by exp(c)."""
    out = ds.copy(deep=True)
    ver = out["ver"].values
    ver[...] = 0.0
    ver[:, :, 1] = c
    out["ver"].values[...] = ver
    return out


def test_version_shift_recovers_a_uniform_change():
    hw = HW.load_hardware_fit()
    post = hw.posterior
    assert [str(v) for v in post.coords["version"].values] == ["0.14", "0.19"]
    sheet = HW.K.datasheet("h100_sxm")
    # every flop, byte and launch term 10% slower: every step 10% slower, over 5 releases
    c = math.log(1.1)
    got = HS.version_shift(_with_uniform_version_change(post, c), "h100_sxm", sheet, draws=20)
    assert got["releases"] == [5]
    assert got["rms_log_change"][0] == pytest.approx(c, rel=1e-9)
    assert got["per_release_sd"] == pytest.approx(c / math.sqrt(5), rel=1e-9)
    none = HS.version_shift(_with_uniform_version_change(post, 0.0), "h100_sxm", sheet, draws=20)
    assert none["per_release_sd"] == pytest.approx(0.0, abs=1e-12)
    # the fitted version term: some kernels faster, some slower, a step changes by a few percent
    real = HS.version_shift(post, "h100_sxm", sheet)
    assert 0.005 < real["per_release_sd"] < 0.2


@pytest.fixture(scope="module")
def default_fit():
    return M.load_default()


def test_the_default_fit_was_trained_on_the_bundled_release(default_fit):
    versions, unknown = trained_vllm_versions(default_fit)
    assert versions == [datasets.VLLM_VERSION] and unknown == []


def test_version_discrepancy_grows_with_the_releases(default_fit):
    assert X.version_discrepancy(default_fit, None) is None
    same = X.version_discrepancy(default_fit, "0.15.4")
    assert same["distance"] == 0 and same["sd"] == 0.0
    one = X.version_discrepancy(default_fit, "0.16")
    eight = X.version_discrepancy(default_fit, "0.23.0")
    assert one["distance"] == 1 and eight["distance"] == 8
    assert one["sd"] > 0 and eight["sd"] == pytest.approx(one["sd"] * math.sqrt(8), rel=1e-9)
    ref = M.attr_json(default_fit, HS.HW_GROUP, {})["reference"]
    shift = HS.version_shift(default_fit[HS.HW_GROUP], ref, S.load_hardware(S.hardware_key(ref)))
    assert one["per_release_sd"] == pytest.approx(shift["per_release_sd"])


def test_version_discrepancy_without_a_known_training_release(default_fit):
    fit = default_fit.copy()
    # a fit whose training runs are unknown: no distance, no widening, and the note says why
    fit.attrs = {k: v for k, v in fit.attrs.items() if k != "training_deployments"}
    del fit.constant_data["run"]
    info = X.version_discrepancy(fit, "0.23")
    assert info["distance"] is None and info["sd"] is None
    assert "no training run's vLLM release is known" in X.version_note(info)
    # check says so once, and does not call the release extrapolation it cannot measure
    rep = T.check(
        SP.spec_for_run(RUN, workload=W.from_run(RUN).head(60), server_overrides={"vllm_version": "0.23"}), fit, draws=4
    )
    assert not rep["level_flags"]["vllm_version"] and "vllm_version" not in rep["triggers"]["extrapolating"]
    assert sum("no training run's vLLM release is known" in r for r in rep["reasons"]) == 1


def test_check_and_predict_widen_for_another_release(default_fit):
    wl = W.from_run(RUN).head(120)
    base = SP.spec_for_run(RUN, workload=wl)
    later = SP.spec_for_run(RUN, workload=wl, server_overrides={"vllm_version": "0.23"})
    same = SP.spec_for_run(RUN, workload=wl, server_overrides={"vllm_version": "0.15.2"})
    r0 = T.check(base, default_fit, draws=8)
    r1 = T.check(later, default_fit, draws=8)
    r2 = T.check(same, default_fit, draws=8)
    assert "vllm_version" in r1["triggers"]["extrapolating"] and r1["verdict"] != "in-distribution"
    assert r1["level_flags"]["vllm_version"] and any("vLLM 0.23.0 is 8 minor releases" in r for r in r1["reasons"])
    assert "vllm_version" not in r2["triggers"]["extrapolating"] and r2["verdict"] == r0["verdict"]
    for m in ("ttft_ms", "itl_ms", "e2e_ms"):
        w0, w1 = r0["intervals"]["workload"][m], r1["intervals"]["workload"][m]
        assert w1["mean"] == pytest.approx(w0["mean"])  # the point is the coefficients' own
        assert w1["hi90"] - w1["lo90"] > w0["hi90"] - w0["lo90"]
    s0, s1 = r0["intervals"]["step"], r1["intervals"]["step"]
    for k in s0:
        assert s1[k]["hi90"] - s1[k]["lo90"] > s0[k]["hi90"] - s0[k]["lo90"]
    p0 = pipeline.predict(base, default_fit, draws=8)
    p1 = pipeline.predict(later, default_fit, draws=8)
    assert p0["version_discrepancy"]["distance"] == 0 and p1["version_discrepancy"]["distance"] == 8
    lo0, hi0 = p0["e2e_ms"]["mean_interval90"]
    lo1, hi1 = p1["e2e_ms"]["mean_interval90"]
    assert p1["e2e_ms"]["mean"] == pytest.approx(p0["e2e_ms"]["mean"]) and hi1 - lo1 > hi0 - lo0
    assert np.isfinite([lo1, hi1]).all()
