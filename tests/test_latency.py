import time

import numpy as np
import pytest
from fakefit import fake_idata

from bayeslat import export as E
from bayeslat import features as F
from bayeslat import model as M
from bayeslat.export.latency import LatencyModel

OBS, TRUTH = M.simulate_obs(seed=4, rows={("H100 SXM", "dense"): 60, ("H100 SXM", "moe"): 40})


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    idata = fake_idata(OBS, TRUTH, seed=2)
    p = tmp_path_factory.mktemp("exp") / "h100_dense.json"
    p.write_text(E.export(idata, "H100 SXM/dense", "json"))
    ctx = M.example_contexts()[("H100 SXM", "dense")]
    return LatencyModel.from_file(p, ctx), ctx


def _batch(rng, n=128):
    new = np.ones(n)
    new[:3] = [512, 256, 1024]
    ctx = rng.uniform(0, 3000, n)
    isp = np.zeros(n, bool)
    isp[:3] = True
    return new, ctx, isp


def test_step_time_matches_features(lm):
    m, ctx = lm
    rng = np.random.default_rng(0)
    new, c, p = _batch(rng)
    stats = F.batch_stats(new, c, p)
    feats, reg = F.step_features(stats, ctx)
    expect = float(feats[0] @ m.beta[reg[0]])
    assert m.step_time((new, c, p)) == pytest.approx(expect, rel=1e-12)
    assert m.step_time(stats) == pytest.approx(expect, rel=1e-12)
    assert m.step_time({"new_tokens": new, "context_before": c, "is_prefill": p}) == pytest.approx(expect, rel=1e-12)
    # ... and the step time of the known coefficients the fake posterior was built around
    assert expect == pytest.approx(float(feats[0] @ TRUTH["beta"][("H100 SXM", "dense")][reg[0]]), rel=0.02)


def test_other_methods(lm):
    m, _ = lm
    a = m.alpha
    assert m.queueing_time({"prompt_tokens": 2000, "queue_depth": 50}) == pytest.approx(a[0] + 2 * a[1] + 0.5 * a[2])
    assert m.queueing_time((0, 0)) == pytest.approx(a[0])
    assert m.output_token_processing_time() == 0.0
    assert m.scheduling_processing_time() == 0.0
    assert m.preemption_processing_time() == 0.0


def test_zero_methods_are_inside_step_time(lm):
    """The three methods return 0 because step_time carries their cost (module docstring): without
    the request_overhead / step_overhead coefficients a step is shorter by exactly the per-request /
    per-step cost of the exported group (known: 0.5 ms per 100 requests, 0.15 ms per step at the
    population, times the group's deviations), and preempted requests do not enter step_time
    (their recompute shows as prefill tokens of later steps)."""
    m, ctx = lm
    new, c, p = _batch(np.random.default_rng(2))
    stats = F.batch_stats(new, c, p)
    r = int(F.step_features(stats, ctx)[1][0])
    base = m.step_time(stats)
    for name, count in (("request_overhead", len(new)), ("step_overhead", 1)):
        f = F.B[name]
        beta = m.beta.copy()
        beta[:, f] = 0.0
        cost = base - LatencyModel(beta, m.alpha, ctx).step_time(stats)
        assert cost == pytest.approx(m.beta[r, f] * count / F.BETA_SCALE[f], rel=1e-9)
        assert cost == pytest.approx(TRUTH["beta"][("H100 SXM", "dense")][r, f] * count / F.BETA_SCALE[f], rel=0.1)
    assert m.step_time(F.batch_stats(new, c, p, n_preempted=5.0)) == base


def test_step_time_speed(lm):
    m, _ = lm
    rng = np.random.default_rng(1)
    batch = _batch(rng)
    m.step_time(batch)
    times = []
    for _ in range(1000):
        t0 = time.perf_counter()
        m.step_time(batch)
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    assert med < 2e-4, f"median step_time {med * 1e6:.1f} us"  # "well under 1 ms" on a loaded box
