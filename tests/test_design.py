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


# ------------------------------------------------------------------ bins of every row
def test_effective_rows_of_overlapping_spans():
    one = [0, 9, 1.0, 1.0]
    # disjoint rows are worth their count, copies of one row one row
    assert D.effective_rows(np.array([[10 * i, 10 * i + 9, 1.0, 1.0] for i in range(5)])) == pytest.approx(5.0)
    assert D.effective_rows(np.array([one] * 7)) == pytest.approx(1.0)
    # two rows of 10 steps sharing 5: sum c^2 = 5 + 4 * 5 + 5 = 30, n_eff = 4 * 10 / 30
    assert D.effective_rows(np.array([one, [5, 14, 1.0, 1.0]])) == pytest.approx(4 / 3)
    # fractional end weights: a one-step row of weight 0.5 twice -> worth one row
    assert D.effective_rows(np.array([[3, 3, 0.5, 1.0]] * 2)) == pytest.approx(1.0)


def test_effective_rows_matches_the_variance_of_the_mean():
    """With independent step errors, var(mean of the rows) = var(one row) / n_eff (Monte Carlo)."""
    rng = np.random.default_rng(0)
    k0 = rng.integers(0, 300, 40)
    k1 = k0 + 49
    spans = np.stack([k0, k1, np.full(40, 0.5), np.ones(40)], axis=1).astype(float)
    n_eff = D.effective_rows(spans)
    assert 1.0 < n_eff < 40.0
    e = rng.standard_normal((20000, 400))
    W = np.zeros((40, 400))
    for i, (a, b) in enumerate(zip(k0, k1)):
        W[i, a : b + 1] = 1.0
        W[i, a] = 0.5
    rows = e @ W.T
    ratio = rows.var(axis=0).mean() / rows.mean(axis=1).var()
    assert ratio == pytest.approx(n_eff, rel=0.05)


def test_collapse_is_exact_in_the_mean_and_ignores_y(rec, obs):
    w = RW.observation_windows(rec)[["k0", "k1", "w0", "w1"]].to_numpy(float)
    b = D.collapse(obs, w, 4, 3)
    assert b.n_rows.sum() == len(obs) and len(b) <= 2 * 4 * 3
    assert np.all((1.0 <= b.n_eff) & (b.n_eff <= b.n_rows))
    # decode windows of concurrent requests share steps: worth fewer rows than they count
    assert b.n_eff[b.kind == 1].sum() < 0.8 * b.n_rows[b.kind == 1].sum()
    # a bin row is the mean of its rows, so sums over rows are kept exactly (linearity of mu)
    for k in (1, 2):
        np.testing.assert_allclose((b.n_rows[:, None, None] * b.X)[b.kind == k].sum(0), obs.X[obs.kind == k].sum(0), rtol=1e-9)
        assert (b.n_rows * b.y)[b.kind == k].sum() == pytest.approx(obs.y[obs.kind == k].sum(), rel=1e-12)
    # the bins depend on the design only: shuffled y gives the same bins
    rng = np.random.default_rng(1)
    shuffled = D.collapse(D.ObsTable(**{**_fields(obs), "y": rng.permutation(obs.y)}), w, 4, 3)
    np.testing.assert_array_equal(shuffled.X, b.X)
    np.testing.assert_array_equal(shuffled.n_rows, b.n_rows)
    # build_obs(bins=) is the same thing; a bin of bins is refused; bad spans named
    np.testing.assert_array_equal(D.build_obs(rec, CTX, "H100 SXM", "dense", bins=(4, 3)).y, b.y)
    with pytest.raises(SpecError, match="bins already"):
        D.collapse(b)
    with pytest.raises(SpecError, match="spans"):
        D.collapse(obs, w[:3])
    # round trip keeps the weights
    with pytest.raises(SpecError, match="n_eff"):
        D.ObsTable(**{**_fields(b), "n_eff": b.n_rows + 1.0})


def test_bins_roundtrip_and_old_files(obs, tmp_path):
    b = D.collapse(obs, None, 2, 2)
    np.testing.assert_array_equal(b.n_eff, b.n_rows)  # no spans: independent rows
    back = D.ObsTable.load(b.save(tmp_path / "b.npz"))
    np.testing.assert_array_equal(back.n_eff, b.n_eff)
    np.testing.assert_array_equal(back.n_rows, b.n_rows)
    # a file without the weights (written before bins) loads as raw rows
    old = {k: getattr(obs, k) for k in D._ARRAYS if k not in ("n_rows", "n_eff")}
    np.savez(tmp_path / "old.npz", **old, hardware_levels=np.array(obs.hardware_levels), class_levels=np.array(obs.class_levels))
    assert np.all(D.ObsTable.load(tmp_path / "old.npz").n_rows == 1)
