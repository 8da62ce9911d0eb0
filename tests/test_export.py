import json

import numpy as np
import pytest
import yaml
from fakefit import fake_idata

from bayeslat import export as E
from bayeslat import features as F
from bayeslat import model as M
from bayeslat.errors import SpecError


@pytest.fixture(scope="module")
def fake():
    # regime factors far apart (log-sd 0.5), so that the load weighting of the BLIS export matters
    obs, truth = M.simulate_obs(
        seed=3, rows={("H100 SXM", "dense"): 80, ("H100 SXM", "moe"): 60, ("A100 SXM", "dense"): 20}, dev_sd=(0.15, 0.15, 0.5)
    )
    return obs, truth, fake_idata(obs, truth, seed=1)


def test_json_content_and_roundtrip(fake, tmp_path):
    obs, truth, idata = fake
    text = E.export(idata, ("H100 SXM", "dense"), "json")
    d = json.loads(text)
    assert d["format"] == E.FORMAT and d["spec_version"] == F.SPEC_VERSION
    assert d["group"] == {"hardware": "H100 SXM", "model_class": "dense", "new_levels": [], "draws": 400}
    assert set(d["beta"]) == set(F.REGIMES) and set(d["beta"]["decode"]) == set(F.BETA_NAMES)
    for reg, row in d["beta"].items():
        for f, s in row.items():
            assert s["q05"] <= s["mean"] <= s["q95"] and s["unit"].startswith("ms per")
    # the posterior spread: the fake's draws are log-normal with sd ~0.05 (rel_sd on beta_pop, 0.01
    # on each deviation), so a present coefficient's sd is ~5% of its mean and its 90% interval
    # spans exp(+-1.645 x 0.05); a pruned one sits at ZERO_COEF (times its regime factor)
    tb = truth["beta"][("H100 SXM", "dense")]
    for r, reg in enumerate(F.REGIMES):
        for f, name in enumerate(F.BETA_NAMES):
            s = d["beta"][reg][name]
            if tb[r, f] > 0:
                assert 0.04 < s["sd"] / s["mean"] < 0.065, (reg, name, s)
                assert np.log(s["q95"] / s["q05"]) == pytest.approx(2 * 1.645 * s["sd"] / s["mean"], rel=0.2), (reg, name, s)
            else:
                assert s["mean"] < 1e-3 and s["sd"] < 0.1 * s["mean"], (reg, name, s)
    # posterior means sit near the known coefficients of the group
    got = np.array([[d["beta"][r][f]["mean"] for f in F.BETA_NAMES] for r in F.REGIMES])
    assert np.allclose(got, tb, rtol=0.1, atol=2e-3)
    assert [f["name"] for f in d["features"]["beta"]] == list(F.BETA_NAMES)
    assert d["features"]["stats"] == list(F.STATS)
    assert d["fit"]["backend"] == "fake"
    p = tmp_path / "c.json"
    p.write_text(text)
    assert E.read_export(p) == d


def test_yaml_roundtrip_equals_json(fake, tmp_path):
    _, _, idata = fake
    dj = json.loads(E.export(idata, "H100 SXM/moe", "json"))
    p = tmp_path / "c.yaml"
    p.write_text(E.export(idata, "H100 SXM/moe", "yaml"))
    assert E.read_export(p) == dj
    assert yaml.safe_load(p.read_text())["group"]["model_class"] == "moe"


def test_unseen_group_is_marked_and_wider(fake):
    _, _, idata = fake
    seen = json.loads(E.export(idata, "H100 SXM/dense", "json"))
    new = json.loads(E.export(idata, "H200 SXM/dense", "json"))
    assert new["group"]["new_levels"] == ["hardware"]
    w = lambda d: d["beta"]["decode"]["weight_load"]["q95"] - d["beta"]["decode"]["weight_load"]["q05"]  # noqa: E731
    assert w(new) > 2 * w(seen)


def test_blis_export(fake):
    obs, truth, idata = fake
    # the group's rows include TP > 1: the target TP must be given (b4 and a0 depend on it)
    with pytest.raises(SpecError, match="tp: the fit has .* at TP > 1.*pass --tp N or --server"):
        E.export(idata, "H100 SXM/dense", "blis")
    text = E.export(idata, "H100 SXM/dense", "blis", tp=1)
    assert E.export(idata, "H100 SXM/dense", "blis", server={"tensor_parallel": 1}) == text
    line = [ln for ln in text.splitlines() if ln.startswith("--alpha-coeffs")][0]
    parts = line.split()
    alpha = [float(x) for x in parts[1].split(",")]
    beta = [float(x) for x in parts[3].split(",")]
    assert len(alpha) == 3 and len(beta) == 10 and alpha[1:] == [0.0, 0.0]
    tb = truth["beta"][("H100 SXM", "dense")]
    # every term is the known coefficient, load-weighted over regimes by the group's fit rows and
    # converted to us per raw unit (module docstring); b3 rescaled by HBM / NVLink, b9 with the
    # context_overhead fold (checked on its own below); truly zero terms export as ~0; a feature
    # without load in the rows (tp_comm, MoE terms of a dense TP1 group) averages its regimes evenly
    m = (obs.hw == obs.hardware_levels.index("H100 SXM")) & (obs.cls == obs.class_levels.index("dense"))
    load = obs.X[m].sum(axis=0)
    tot = load.sum(axis=0)
    w = np.where(tot > 0, load / np.where(tot > 0, tot, 1.0), 1.0 / len(F.REGIMES))
    expect = (w * tb).sum(axis=0) * 1000.0 / F.BETA_SCALE
    expect = np.array([expect[F.B[name]] for name in E.BLIS_BETA])
    expect[3] *= 3.35e12 / 900e9
    np.testing.assert_allclose(np.array(beta)[:9], expect[:9], rtol=0.03, atol=1e-3)
    # per-step overhead: ms per step -> us per step (x1000), regime-weighted -> within the regime range
    lo, hi = tb[:, F.B["step_overhead"]].min() * 1000, tb[:, F.B["step_overhead"]].max() * 1000
    assert lo * 0.9 <= beta[6] <= hi * 1.1
    # per-layer overhead: ms per 100 layers -> us per layer (x10)
    lo, hi = tb[:, F.B["layer_overhead"]].min() * 10, tb[:, F.B["layer_overhead"]].max() * 10
    assert lo * 0.9 <= beta[4] <= hi * 1.1
    # decode KV is a dimensionless efficiency (same number as ours) plus context_overhead folded
    # in: us per KV token held x the fit rows' KV tokens per us of decode-KV roofline time
    b = E.blis_coefficients(idata, "H100 SXM/dense")
    k = b["context_tokens_per_kv_us"]
    X = obs.X.sum(axis=1)
    m = (obs.hw == obs.hardware_levels.index("H100 SXM")) & (obs.cls == obs.class_levels.index("dense"))
    assert k == pytest.approx(X[m, F.B["context_overhead"]].sum() * 1e5 / (X[m, F.B["decode_kv"]].sum() * 1000.0), rel=1e-6)
    assert k > 0
    folded = tb[:, F.B["decode_kv"]] + tb[:, F.B["context_overhead"]] * 1000.0 / 1e5 * k
    assert folded.min() * 0.9 <= beta[9] <= folded.max() * 1.1

    # the fold itself: b9 moves linearly with the context_overhead coefficient (0, 1x, 2x), by
    # us per KV token x k, and nothing else moves
    def b9_with(factor):
        c = idata.copy()
        bp = c.posterior["beta_pop"].values.copy()
        bp[..., F.B["context_overhead"]] *= factor
        c.posterior["beta_pop"] = (c.posterior["beta_pop"].dims, bp)
        return E.blis_coefficients(c, "H100 SXM/dense")["beta"]

    b0, b1, b2 = b9_with(0.0), b9_with(1.0), b9_with(2.0)
    step = b1[9] - b0[9]
    assert step > 0 and b2[9] - b1[9] == pytest.approx(step, rel=1e-9)
    assert b1[:9] == pytest.approx(b0[:9], rel=1e-12)
    ctx_us_per_token = tb[:, F.B["context_overhead"]] * 1000.0 / 1e5
    assert ctx_us_per_token.min() * k * 0.9 <= step <= ctx_us_per_token.max() * k * 1.1
    # tp_comm rescaled by HBM / NVLink bandwidth of the H100 datasheet
    assert b["hbm_over_link"] == pytest.approx(3.35e12 / 900e9)
    assert alpha[0] > truth["alpha"][("H100 SXM", "dense")][0] * 1000 * 0.8  # const + prompt + queue terms (us)
    # the multi-process executor term is added for the exported TP degree (> 1), whatever the fit's mix
    mp = F.ALPHA_NAMES.index("multiproc")
    from bayeslat.model import coefficient_draws

    a_mp = float(coefficient_draws(idata, "H100 SXM", "dense", new_run=False).alpha[:, mp].mean())
    assert b["reference_alpha_features"][mp] == 0.0
    b2tp = E.blis_coefficients(idata, "H100 SXM/dense", tp=2)
    assert b2tp["alpha"][0] - b["alpha"][0] == pytest.approx(a_mp * 1000.0, rel=1e-6) and a_mp > 0
    assert "tp_comm" in text and "kv_offload" in text


def test_bad_inputs(fake, tmp_path):
    _, _, idata = fake
    from bayeslat.errors import SpecError

    with pytest.raises(SpecError, match="format"):
        E.export(idata, "H100 SXM/dense", "toml")
    with pytest.raises(SpecError, match="group"):
        E.export(idata, "H100 SXM", "json")
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"format": "other"}))
    with pytest.raises(SpecError, match="format"):
        E.read_export(p)
