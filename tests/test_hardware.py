"""The hardware level: the kernel-efficiency model (recovery of known efficiencies), its draws for
fitted and unseen GPUs, and what it does to a step fit's coefficients on another GPU."""

from __future__ import annotations

import json

import arviz as az
import numpy as np
import pytest

from bayeslat import features as F
from bayeslat import model as M
from bayeslat.data import kernels as K
from bayeslat.errors import SpecError
from bayeslat.model import hardware as HW
from bayeslat.model import hardware_steps as HS
from bayeslat.model.diagnose import diagnose_hardware

GPUS = ("a100_sxm", "h100_sxm", "l40s")


def _truth(seed=0):
    rng = np.random.default_rng(seed)
    a = np.where(HW.ACTIVE_MASK[None], 0.2 + 0.15 * rng.standard_normal((len(GPUS), len(K.FAMILIES), len(HW.TERMS))), 0.0)
    return a


def fake_hardware(draws=40, seed=0, health=None, tp_slope=None):
    """A hardware fit at known values (no sampling), in the saved format; ``tp_slope``: each GPU's
    all-reduce change per doubling of GPUs (a fit of the earlier format has none)."""
    rng = np.random.default_rng(seed)
    a = _truth(seed)
    D = draws
    noise = lambda shape: 0.01 * rng.standard_normal((1, D) + shape)  # noqa: E731
    post = {
        "a": a[None, None] + noise(a.shape) * HW.ACTIVE_MASK,
        "mu": np.broadcast_to(np.where(HW.ACTIVE_MASK, 0.2, 0.0), (1, D) + HW.ACTIVE_MASK.shape).copy(),
        "sigma": np.broadcast_to(np.where(HW.ACTIVE_MASK, 0.15, 0.0), (1, D) + HW.ACTIVE_MASK.shape).copy(),
        "ver": np.zeros((1, D, 1) + HW.ACTIVE_MASK.shape),
        "p": np.full((1, D, len(K.FAMILIES)), 3.0),
        "s": np.full((1, D, len(K.FAMILIES)), 0.1),
        "nu_m2": np.full((1, D, len(K.FAMILIES)), 10.0),
    }
    dims = {
        "a": ["gpu", "family", "term"],
        "mu": ["family", "term"],
        "sigma": ["family", "term"],
        "ver": ["version", "family", "term"],
    }
    dims |= {"p": ["family"], "s": ["family"], "nu_m2": ["family"]}
    if tp_slope is not None:
        post["tp_slope"] = np.broadcast_to(np.asarray(tp_slope, dtype=float), (1, D, len(GPUS))).copy()
        post["mu_tp"] = np.full((1, D), 0.3)
        post["sigma_tp"] = np.full((1, D), 0.4)
        dims["tp_slope"] = ["gpu"]
    coords = {"gpu": list(GPUS), "family": list(K.FAMILIES), "term": list(HW.TERMS), "version": ["0.14"]}
    idata = az.from_dict(posterior=post, dims=dims, coords=coords)
    idata.attrs["format"] = HW.HW_FORMAT
    idata.attrs["health"] = json.dumps(health or {"divergences": 0, "max_r_hat": 1.0, "min_ess_bulk": 900.0})
    return idata


@pytest.fixture(scope="module")
def default_fit():
    """The shipped default's step fit without its hardware level (the tests attach their own)."""
    idata = M.load_default()
    if HS.HW_GROUP in idata.groups():
        del idata[HS.HW_GROUP]
    idata.attrs.pop(HS.HW_GROUP, None)
    return idata


def test_the_shipped_default_carries_a_hardware_level_of_five_real_gpus():
    idata = M.load_default()
    d = diagnose_hardware(idata)
    assert d["status"] == "diagnosed" and d["passed"] and d["reference"] == "H100 SXM"
    assert set(d["deviations"]) == {"A100 SXM 80GB", "L40S", "H100 SXM", "H200 SXM", "B200 SXM"}
    assert sum(d["kernel_rows"].values()) > 1000
    assert M.coefficient_draws(idata, "L40S", "dense", n=10, new_run=False).new_levels == ["hardware_cpu"]


def test_efficiency_draws_of_a_fitted_gpu_and_of_an_unseen_one():
    hw = fake_hardware(draws=4000)
    a, fitted = HW.efficiency_draws(hw, "l40s")
    assert fitted and np.allclose(a.mean(axis=0), _truth()[GPUS.index("l40s")], atol=0.01)
    new, fitted = HW.efficiency_draws(hw, "some_gpu")
    assert not fitted
    assert np.allclose(new.mean(axis=0)[HW.ACTIVE_MASK], 0.2, atol=0.02)
    assert np.allclose(new.std(axis=0)[HW.ACTIVE_MASK], 0.15, atol=0.02)
    assert np.array_equal(new, HW.efficiency_draws(hw, "some_gpu")[0])  # one fixed draw per name
    assert not np.array_equal(new, HW.efficiency_draws(hw, "other_gpu")[0])


def test_save_and_load_keep_the_health_and_refuse_another_file(tmp_path):
    path = HW.save_hardware(fake_hardware(), tmp_path / "hw.nc")
    back = HW.load_hardware_fit(path)
    assert HW.json_attr(back, "health", {})["divergences"] == 0
    M.save(M.load_default(), tmp_path / "step.nc")
    with pytest.raises(SpecError, match="not a bayeslat hardware fit"):
        HW.load_hardware_fit(tmp_path / "step.nc")
    with pytest.raises(SpecError, match="hardware fit not found"):
        HW.load_hardware_fit(tmp_path / "missing.nc")


def test_a_gpu_of_the_hardware_level_scales_only_its_gpu_bound_terms(default_fit):
    plain = default_fit.copy()
    idata = HS.attach_hardware_level(default_fit.copy(), fake_hardware())
    ref = M.coefficient_draws(idata, "H100 SXM", "dense", n=60, seed=1, new_run=False)
    ref0 = M.coefficient_draws(plain, "H100 SXM", "dense", n=60, seed=1, new_run=False)
    assert np.array_equal(ref.beta, ref0.beta)  # the reference hardware is the step fit's own
    a100 = M.coefficient_draws(idata, "A100 SXM 80GB", "dense", n=60, seed=1, new_run=False)
    a100_0 = M.coefficient_draws(plain, "A100 SXM 80GB", "dense", n=60, seed=1, new_run=False)
    assert "hardware_cpu" in a100.new_levels and "hardware" not in a100.new_levels
    assert "hardware" in a100_0.new_levels
    cpu = [F.B[f] for f in ("request_overhead", "context_overhead")]
    assert np.array_equal(a100.beta[..., cpu], a100_0.beta[..., cpu])  # no kernel: the population draw
    # a ratio term is the reference's coefficient times the kernel efficiency ratio (same draws)
    log_ratio, rmask, delta, dmask, fitted = HS.step_hardware_deviation(idata, "A100 SXM 80GB", a100.draw_index)
    assert fitted and rmask[F.B["prefill_compute"]] and dmask[F.B["decode_compute"]]
    truth = _truth()
    g, h = GPUS.index("a100_sxm"), GPUS.index("h100_sxm")
    fi, ti = K.FAMILIES.index("gemm"), HW.TERMS.index("flop")
    assert np.allclose(log_ratio[:, F.B["prefill_compute"]], truth[g, fi, ti] - truth[h, fi, ti], atol=0.06)
    assert not np.allclose(a100.beta[..., F.B["weight_load"]], a100_0.beta[..., F.B["weight_load"]])


def test_the_reference_has_no_deviation_and_an_unknown_gpu_keeps_the_population(default_fit):
    idata = HS.attach_hardware_level(default_fit.copy(), fake_hardware())
    lr, rmask, delta, dmask, fitted = HS.step_hardware_deviation(idata, "H100 SXM", np.arange(10))
    assert fitted and np.all(lr == 0) and np.allclose(delta, 0)
    assert HS.step_hardware_deviation(idata, "My Custom GPU", np.arange(10)) is None
    lr, rmask, delta, dmask, fitted = HS.step_hardware_deviation(idata, "H200 SXM", np.arange(10))  # bundled datasheet
    assert not fitted and np.any(lr[:, rmask] != 0)
    cd = M.coefficient_draws(idata, "H200 SXM", "dense", n=10, new_run=False)
    assert "hardware" in cd.new_levels


def test_the_all_reduce_terms_follow_the_gpus_a_ring_spans(default_fit):
    # per doubling of GPUs: L40S all-reduce 2x slower, H100 (the reference) and A100 flat
    slopes = {"a100_sxm": 0.0, "h100_sxm": 0.0, "l40s": np.log(2.0)}
    idata = HS.attach_hardware_level(default_fit.copy(), fake_hardware(tp_slope=[slopes[g] for g in GPUS]))
    flat = HS.attach_hardware_level(default_fit.copy(), fake_hardware())
    sel = np.arange(20)
    tp_feats = [F.B[f] for f in HS.TP_FEATURES]
    base = HS.step_hardware_deviation(flat, "L40S", sel)[0]
    for tp, doublings in ((None, 0), (1, 0), (2, 0), (4, 1), (8, 2)):
        lr = HS.step_hardware_deviation(idata, "L40S", sel, tp)[0]
        assert np.allclose(lr[:, tp_feats] - base[:, tp_feats], doublings * np.log(2.0))
        others = np.setdiff1d(np.arange(F.N_BETA), tp_feats)
        assert np.allclose(lr[:, others], base[:, others])
    # a GPU as flat as the reference keeps its 2-GPU ratio at every TP degree
    a8 = HS.step_hardware_deviation(idata, "A100 SXM 80GB", sel, 8)[0]
    assert np.allclose(a8, HS.step_hardware_deviation(flat, "A100 SXM 80GB", sel, 8)[0])
    # through coefficient_draws: the L40S TP8 all-reduce coefficient is 4x its TP2 one
    c2 = M.coefficient_draws(idata, "L40S", "dense", n=30, seed=2, new_run=False, tensor_parallel=2)
    c8 = M.coefficient_draws(idata, "L40S", "dense", n=30, seed=2, new_run=False, tensor_parallel=8)
    assert np.allclose(c8.beta[..., F.B["tp_comm"]], 4.0 * c2.beta[..., F.B["tp_comm"]])
    assert np.allclose(c8.beta[..., F.B["weight_load"]], c2.beta[..., F.B["weight_load"]])
    # an unseen GPU draws its slope from N(mu_tp, sigma_tp), one fixed draw per name
    t1 = HW.tp_slope_draws(idata[HS.HW_GROUP], "Some GPU")
    assert np.allclose(t1, 0.3 + 0.4 * (t1 - 0.3) / 0.4) and np.array_equal(t1, HW.tp_slope_draws(idata[HS.HW_GROUP], "Some GPU"))
    assert np.all(HW.tp_slope_draws(flat[HS.HW_GROUP], "L40S") == 0.0)


def test_attach_needs_a_shared_gpu(default_fit):
    hw = fake_hardware()
    hw.posterior = hw.posterior.assign_coords(gpu=["a100_sxm", "l40s", "b200_sxm"])
    with pytest.raises(SpecError, match="is in the hardware fit"):
        HS.attach_hardware_level(default_fit.copy(), hw)
    from bayeslat.pipeline import attach_hardware

    assert attach_hardware(default_fit.copy(), hw) is False
    assert attach_hardware(default_fit.copy(), None) is False


def test_diagnose_reports_the_deviations_and_fails_a_divergent_kernel_fit(default_fit):
    good = diagnose_hardware(HS.attach_hardware_level(default_fit.copy(), fake_hardware()))
    assert good["passed"] and good["reference"] == "H100 SXM"
    row = good["deviations"]["A100 SXM 80GB"]
    assert row["prefill_compute"]["how"] == "ratio" and row["decode_compute"]["how"] == "difference"
    assert row["prefill_compute"]["lo90"] <= row["prefill_compute"]["median"] <= row["prefill_compute"]["hi90"]
    bad = diagnose_hardware(HS.attach_hardware_level(default_fit.copy(), fake_hardware(health={"divergences": 3})))
    assert not bad["passed"] and not bad["checks"]["divergences"]
    assert diagnose_hardware(default_fit)["status"] == "not attached"


def test_projected_decode_coefficients_follow_the_efficiencies():
    hw = K.datasheet("h100_sxm")
    a = np.where(HW.ACTIVE_MASK[None], 0.0, 0.0).repeat(2, axis=0)
    for fam in ("gemm", "moe"):  # weights read 1.5x slower (dense and expert)
        a[1, K.FAMILIES.index(fam), HW.TERMS.index("byte")] = np.log(1.5)
    c = HS.projected_coefficients(a, np.full((2, len(K.FAMILIES)), 8.0), hw)
    assert c[0, HS.PROJECTED.index("weight_load")] == pytest.approx(1.0, abs=0.05)  # the roofline itself
    assert c[0, HS.PROJECTED.index("decode_kv")] == pytest.approx(1.0, abs=0.05)
    # the canonical steps' projected time: batch-1 steps (weight bound) 1.5x slower
    _, _, X = HS.decode_steps(hw)
    t = X @ c.T
    b1 = np.arange(0, X.shape[0], len(HS.BATCH))
    assert np.median(t[b1, 1] / t[b1, 0]) == pytest.approx(1.5, rel=0.05)
    assert c[1, HS.PROJECTED.index("weight_load")] == pytest.approx(1.5, rel=0.05)


@pytest.mark.slow
def test_nuts_recovers_known_kernel_efficiencies():
    df = K.serving_shapes(K.load())
    df = df[df["gpu"].isin(GPUS) & (df["version"] == "0.14")]
    sub = HW.subsample(df, per_family=40, seed=3)
    truth = _truth(seed=1)
    p_true = 3.0
    rng = np.random.default_rng(2)
    d = HW.design(sub, gpus=list(GPUS))
    e = truth[d["gpu"], d["fam"]]
    # the all-reduce flat in the GPU count on two GPUs, 2x slower per doubling on the PCIe one
    tp_true = np.array([0.0 if g != "l40s" else np.log(2.0) for g in GPUS])
    mu_y = HW._log_time(e[:, 0], e[:, 1], e[:, 2], p_true, d["flop_ms"], d["byte_ms"], np)
    mu_y = mu_y + tp_true[d["gpu"]] * d["doublings"]
    assert set(np.unique(d["doublings"][d["fam"] == list(K.FAMILIES).index("allreduce")])) == {0.0, 1.0, 2.0}
    sim = sub.assign(latency_ms=np.exp(mu_y + 0.05 * rng.standard_normal(len(sub))))
    idata = HW.fit_hardware(sim, per_family=40, draws=300, tune=300, chains=2, seed=3)
    post = idata.posterior["a"].mean(("chain", "draw")).values
    m = HW.ACTIVE_MASK[None].repeat(len(GPUS), axis=0)
    assert np.max(np.abs(post - truth)[m]) < 0.12
    tp_post = idata.posterior["tp_slope"].mean(("chain", "draw")).values
    assert np.max(np.abs(tp_post - tp_true)) < 0.1
    assert int(idata.sample_stats["diverging"].sum()) == 0
    # predictions carry the slope: the L40S all-reduce over 8 GPUs, 4x its 2-GPU time per byte
    ar = sim[(sim["family"] == "allreduce") & (sim["gpu"] == "l40s")]
    pred = np.median(HW.predict_kernels(idata, ar, "l40s", n=200, noise=False), axis=0)
    assert np.max(np.abs(np.log(pred / np.exp(mu_y[(sim["family"] == "allreduce") & (sim["gpu"] == "l40s")])))) < 0.15
