"""ObsTable construction, validation, persistence, subsampling and splits."""

from __future__ import annotations

import numpy as np
import pytest

from bayeslat import features as F
from bayeslat.data import design as D
from bayeslat.data import reconstruct as R
from bayeslat.data import windows as RW
from bayeslat.errors import SpecError
from tests.test_reconstruct import simulate

CTX = F.FeatureContext(
    peak_flops_per_us=989.5e6,
    hbm_bytes_per_us=3.35e6,
    link_bytes_per_us=0.9e6,
    pcie_bytes_per_us=0.128e6,
    linear_flops_per_token=2 * 6.48e9,
    attn_flops_per_pair=4 * 32 * 4096,
    lm_head_flops_per_seq=2 * 4096 * 32000,
    dense_weight_bytes=13.5e9,
    expert_weight_bytes=0.0,
    num_experts=0.0,
    experts_per_token=0.0,
    kv_bytes_per_token=524288.0,
    allreduce_bytes_per_token=0.0,
    dispatch_bytes_per_token=0.0,
    num_layers=32.0,
    num_moe_layers=0.0,
)


@pytest.fixture(scope="module")
def rec():
    req, _ = simulate(n=300, seed=5)
    return R.reconstruct_lifecycle(req, run="synthA", budget=512, max_num_seqs=64, prefix_cache="none")


@pytest.fixture(scope="module")
def obs(rec):
    return D.build_obs(rec, CTX, "H100 SXM", "dense")


def test_build_obs_shapes_and_sums(rec, obs):
    n = len(obs)
    assert obs.X.shape == (n, len(F.REGIMES), F.N_BETA) and obs.A.shape == (n, F.N_ALPHA)
    assert set(np.unique(obs.kind)) == {1, 2}
    assert np.all(obs.A[obs.kind == 1] == 0) and np.all(obs.A[obs.kind == 2, 0] == 1.0)
    # X summed over regimes == the window sum of the step features; step_overhead column counts steps
    feat, _ = F.step_features(rec.steps[list(F.STATS)].to_numpy(), CTX)
    w = RW.observation_windows(rec)
    np.testing.assert_allclose(obs.X.sum(axis=1), RW.window_sums(feat, w.k0, w.k1, w.w0, w.w1), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(obs.X[:, :, F.B["step_overhead"]].sum(axis=1), obs.n_steps, rtol=1e-9)
    assert obs.X.sum(axis=(0, 2))[F.REGIMES.index("mixed")] > 0
    # multiproc: 0 for one in-process worker (CTX: TP 1), 1 on every TTFT row of a TP > 1 deployment
    from dataclasses import replace

    mp = F.ALPHA_NAMES.index("multiproc")
    assert np.all(obs.A[:, mp] == 0)
    tp2 = D.build_obs(rec, replace(CTX, workers=2.0), "H100 SXM", "dense")
    assert np.all(tp2.A[tp2.kind == 2, mp] == 1.0) and np.all(tp2.A[tp2.kind == 1, mp] == 0.0)
    np.testing.assert_array_equal(np.delete(tp2.A, mp, axis=1), np.delete(obs.A, mp, axis=1))


def test_validation_errors(obs):
    with pytest.raises(SpecError, match="X"):
        D.ObsTable(**{**_fields(obs), "X": obs.X[:, :2]})
    bad = obs.y.copy()
    bad[0] = np.nan
    with pytest.raises(SpecError, match="non-finite"):
        D.ObsTable(**{**_fields(obs), "y": bad})
    with pytest.raises(SpecError, match="hw"):
        D.ObsTable(**{**_fields(obs), "hw": obs.hw + 1})


def _fields(o):
    return {k: getattr(o, k) for k in D._ARRAYS + ("hardware_levels", "class_levels")}


def test_save_load_roundtrip(obs, tmp_path):
    p = obs.save(tmp_path / "obs.npz")
    back = D.ObsTable.load(p)
    for k in D._ARRAYS:
        np.testing.assert_array_equal(getattr(back, k), getattr(obs, k))
    assert back.hardware_levels == obs.hardware_levels and back.class_levels == obs.class_levels


def test_concat_subsample_split(rec, obs):
    other = D.build_obs(rec, CTX, "A100 SXM", "moe")
    other = other.subset(np.arange(len(other)))
    both = D.concat([obs, other])
    assert len(both) == 2 * len(obs)
    assert both.hardware_levels == ("H100 SXM", "A100 SXM") and both.class_levels == ("dense", "moe")
    assert set(both.hw[len(obs) :]) == {1}
    sub = D.subsample(both, 40, seed=1)
    assert len(sub) == 2 * 40  # one run id, 2 kinds -> (run, kind) groups pooled across tables
    # stratified over the timeline: every time decile represented
    assert len(np.unique((sub.t_frac * 10).astype(int))) >= 8
    assert np.array_equal(D.subsample(both, 40, seed=1).y, sub.y)
    tr, te = D.time_split(obs, 0.7)
    assert len(tr) + len(te) == len(obs) and tr.t_frac.max() < 0.7 <= te.t_frac.min()
