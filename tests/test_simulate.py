"""The discrete-event simulator: invariants on random workloads, exact constant-step timing,
preemption / prefix caching / offload / timeouts, posterior predictive and `bayeslat predict`."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest

from bayeslat import features as F
from bayeslat import simulate as S
from bayeslat.data import workload as W
from bayeslat.errors import SpecError

# Llama-2-7B on one H100 SXM (hand-built constants)
CTX = F.FeatureContext(
    peak_flops_per_us=989.5e6,
    hbm_bytes_per_us=3.35e6,
    link_bytes_per_us=0.9e6,
    pcie_bytes_per_us=0.128e6,
    linear_flops_per_token=2 * 6.48e9,
    attn_flops_per_pair=4 * 32 * 4096 * 32,
    lm_head_flops_per_seq=2 * 4096 * 32000,
    dense_weight_bytes=2 * 6.74e9,
    expert_weight_bytes=0.0,
    num_experts=0.0,
    experts_per_token=0.0,
    kv_bytes_per_token=2 * 32 * 4096 * 2,
    allreduce_bytes_per_token=0.0,
    dispatch_bytes_per_token=0.0,
    num_layers=32.0,
    num_moe_layers=0.0,
)


def make_beta(step_overhead=5.0, **terms):
    b = np.zeros((len(F.REGIMES), F.N_BETA))
    b[:, F.B["step_overhead"]] = step_overhead
    for k, v in terms.items():
        b[:, F.B[k]] = v
    return b


BETA = make_beta(
    5.0, prefill_compute=1.5, decode_compute=1.5, weight_load=1.1, decode_kv=1.2, prefill_kv=1.0, request_overhead=0.5
)
ALPHA = np.array([3.0, 1.0, 2.0, 4.0])  # ms: const, per 1000 prompt tokens, per 100 queued, multi-process


def server(**kw):
    s = dict(
        max_num_seqs=32,
        max_num_batched_tokens=1024,
        block_size=16,
        kv_blocks=4000,
        cpu_kv_blocks=0,
        chunked_prefill=True,
        prefix_caching=True,
    )
    s.update(kw)
    return s


def random_workload(n=300, rate=20.0, seed=0, groups=4, prefix=100, pmin=20, pmax=700, omin=1, omax=120, timeout_s=None):
    rng = np.random.default_rng(seed)
    arr = np.cumsum(rng.exponential(1e6 / rate, n)).astype(np.int64)
    grp = rng.integers(-1, groups, n) if groups else np.full(n, -1)
    return W.Workload(
        arrival_us=arr - arr[0],
        input_tokens=rng.integers(pmin, pmax, n),
        output_tokens=rng.integers(omin, omax, n),
        prefix_group=grp,
        prefix_length=np.full(n, prefix),
        timeout_us=-1 if timeout_s is None else int(timeout_s * 1e6),
    )


def check_invariants(w, srv, res):
    df, tr, c = res.requests, res.trace, res.counters
    n = len(w)
    # every request finishes exactly once or fails
    assert len(df) == n
    assert df["finish_us"].notna().all()
    ok = ~df["failed"].to_numpy()
    # ordering of the lifecycle
    d = df[ok]
    assert (d["queued_us"] >= d["arrival_us"]).all()
    assert (d["scheduled_us"] >= d["queued_us"]).all()
    assert (d["first_token_us"] > d["scheduled_us"]).all()
    assert (d["finish_us"] >= d["first_token_us"]).all()
    multi = d["output_tokens"] > 1
    assert (d.loc[multi, "ttft_ms"] < d.loc[multi, "e2e_ms"]).all()
    assert (d["ttft_ms"] <= d["e2e_ms"]).all()
    # token conservation: computed + cached + loaded = prompt + output - 1 (+ recomputed, only with preemption)
    extra = (
        d["computed_tokens"] + d["cached_tokens"] + d["loaded_tokens"] - (d["input_tokens"] + d["output_tokens"] - 1)
    ).to_numpy()
    assert (extra >= 0).all()
    assert (extra[d["preemptions"].to_numpy() == 0] == 0).all()
    assert df["computed_tokens"].sum() == c["prefill_tokens"] + c["decode_tokens"]
    assert tr["prefill_tokens"].sum() == c["prefill_tokens"]
    assert tr["n_decode"].sum() == c["decode_tokens"]
    assert tr["n_preempted"].sum() == c["preemptions"] == df["preemptions"].sum()
    # per-step limits
    assert (tr["n_tokens"] <= srv["max_num_batched_tokens"]).all()
    assert (tr["n_tokens"] == tr["prefill_tokens"] + tr["n_decode"]).all()
    assert (tr["n_prefill"] + tr["n_decode"] <= srv["max_num_seqs"]).all()
    assert (tr["n_running"] <= srv["max_num_seqs"]).all()
    assert (tr["kv_used"] <= srv["kv_blocks"]).all() and (tr["kv_free"] >= 0).all()
    assert np.allclose(tr["kv_used"] + tr["kv_cached"] + tr["kv_free"], srv["kv_blocks"])
    # KV holds what the scheduled requests' contexts need (used blocks >= tokens / block_size;
    # with prefix caching shared blocks are counted once, so only without it)
    if not srv["prefix_caching"] or (w.prefix_group < 0).all():
        assert (
            tr["kv_used"] * srv["block_size"]
            >= tr["decode_ctx_tokens"] + tr["prefill_ctx_tokens"] - srv["block_size"] * (tr["n_prefill"] + tr["n_decode"])
        ).all()
    assert c["kv_used_end"] == 0  # everything freed at the end
    assert (np.diff(tr["t_us"]) > 0).all()


@pytest.mark.parametrize(
    "srv",
    [
        server(),
        server(chunked_prefill=False, max_num_batched_tokens=2048),
        server(prefix_caching=False, max_num_seqs=8),
        server(kv_blocks=150, max_num_seqs=64),  # tiny KV: preemptions
        server(kv_blocks=150, max_num_seqs=64, cpu_kv_blocks=300),  # with CPU offload
    ],
)
def test_invariants_random(srv):
    w = random_workload(n=250, rate=25.0, seed=srv["kv_blocks"] + srv["max_num_seqs"])
    res = S.simulate(w, CTX, srv, BETA, ALPHA, step_noise=0.1, seed=1, record_steps=True)
    check_invariants(w, srv, res)
    assert res.summary["n_failed"] == 0
    assert res.summary["steps"] == len(res.trace)


def test_step_time_is_the_feature_model():
    """Each recorded step's dt is features(stats) @ beta[regime] (no noise): the trace can be
    reconstructed with the shared feature code."""
    w = random_workload(n=120, seed=3)
    res = S.simulate(w, CTX, server(), BETA, ALPHA, record_steps=True)
    tr = res.trace
    X, reg = F.step_features(tr[list(F.STATS)].to_numpy(), CTX)
    assert (reg == tr["regime"].to_numpy()).all()
    assert np.allclose((X * BETA[reg]).sum(1), tr["dt_ms"], rtol=1e-12)
    assert np.isclose(tr["dt_ms"].sum() * 1e3, res.counters["busy_us"])
    assert set(np.unique(reg)) >= {0, 1}


def test_constant_step_time_exact():
    c = 7.0
    beta = make_beta(c)
    alpha = np.array([2.0, 1.5, 4.0, 3.0])
    # light load, huge budget: every running request is scheduled every step
    w = random_workload(n=60, rate=2.0, seed=5, omin=2, omax=50)
    res = S.simulate(w, CTX, server(max_num_batched_tokens=100000, max_num_seqs=256), beta, alpha, record_steps=True)
    d = res.requests
    assert not d["failed"].any()
    assert np.allclose(d["itl_ms"], c, rtol=0, atol=1e-9)
    assert np.allclose(res.trace["dt_ms"], c)
    # alpha delay = alpha . features(prompt, queue depth at arrival)
    A = F.alpha_features(d["input_tokens"], d["queue_depth"])
    assert (A[:, F.ALPHA_NAMES.index("multiproc")] == 0).all()  # CTX: one in-process worker
    assert np.allclose(d["alpha_ms"], A @ alpha)
    # multi-process workers (TP > 1) add the multiproc coefficient to every request's delay
    from dataclasses import replace

    mp = S.simulate(w, replace(CTX, workers=2.0), server(max_num_batched_tokens=100000, max_num_seqs=256), beta, alpha)
    assert np.allclose(mp.requests["alpha_ms"], d["alpha_ms"] + alpha[3])
    # TTFT = alpha delay + wait for the step boundary + one step (prefill fits one step)
    wait = d["ttft_ms"] - d["alpha_ms"] - c
    assert (wait >= -1e-9).all() and (wait < c + 1e-9).all()
    # a lone request: TTFT = alpha delay + c exactly; E2E = TTFT + (n-1) c
    one = W.Workload(
        arrival_us=[1000], input_tokens=[300], output_tokens=[10], prefix_group=[-1], prefix_length=[0], timeout_us=[-1]
    )
    r = S.simulate(one, CTX, server(), beta, alpha).requests.iloc[0]
    delay = alpha[0] + alpha[1] * 300 / 1000
    assert r["ttft_ms"] == pytest.approx(delay + c, abs=1e-9)
    assert r["e2e_ms"] == pytest.approx(delay + 10 * c, abs=1e-9)


def test_wait_for_step_in_flight():
    """A request arriving while a step runs waits for its end."""
    c = 10.0
    beta = make_beta(c)
    alpha = np.array([1.0, 0.0, 0.0, 0.0])
    w = W.Workload(
        arrival_us=[0, 4000],
        input_tokens=[100, 100],
        output_tokens=[50, 5],
        prefix_group=[-1, -1],
        prefix_length=[0, 0],
        timeout_us=[-1, -1],
    )
    d = S.simulate(w, CTX, server(), beta, alpha).requests
    # steps start at 1 ms, 11 ms, ...; request 2 queued at 5 ms -> admitted at 11 ms -> first token 21 ms
    assert d["ttft_ms"].iloc[0] == pytest.approx(1.0 + c)
    assert d["first_token_us"].iloc[1] == pytest.approx(21000.0)
    assert d["ttft_ms"].iloc[1] == pytest.approx(21.0 - 4.0)


def test_chunked_prefill_splits_long_prompt():
    c = 5.0
    w = W.Workload(arrival_us=[0], input_tokens=[1000], output_tokens=[3], prefix_group=[-1], prefix_length=[0], timeout_us=[-1])
    res = S.simulate(w, CTX, server(max_num_batched_tokens=256), make_beta(c), np.zeros(F.N_ALPHA), record_steps=True)
    tr = res.trace
    assert list(tr["prefill_tokens"][:4]) == [256, 256, 256, 232]
    assert list(tr["prefill_ctx_tokens"][:4]) == [256, 512, 768, 1000]
    assert res.requests["ttft_ms"].iloc[0] == pytest.approx(4 * c)
    # without chunking a prompt over the budget can never run: rejected
    res2 = S.simulate(w, CTX, server(max_num_batched_tokens=256, chunked_prefill=False), make_beta(c), np.zeros(F.N_ALPHA))
    assert res2.requests["failed"].iloc[0]


def test_preemption_and_recovery_under_tiny_kv():
    w = random_workload(n=80, rate=50.0, seed=7, groups=0, pmin=100, pmax=300, omin=100, omax=200)
    srv = server(kv_blocks=60, max_num_seqs=64)
    res = S.simulate(w, CTX, srv, BETA, ALPHA, record_steps=True)
    check_invariants(w, srv, res)
    d = res.requests
    assert res.counters["preemptions"] > 0 and (d["preemptions"] > 0).any()
    assert not d["failed"].any()  # all recovered
    assert res.trace["kv_used"].max() <= 60
    pre = d[d["preemptions"] > 0]
    assert (pre["computed_tokens"] > pre["input_tokens"] + pre["output_tokens"] - 1).all()  # recomputation
    # plenty of KV: no preemption, fewer computed tokens
    res2 = S.simulate(w, CTX, server(kv_blocks=100000, max_num_seqs=64), BETA, ALPHA)
    assert res2.counters["preemptions"] == 0
    assert res2.counters["prefill_tokens"] < res.counters["prefill_tokens"]


def test_cpu_offload_reloads_instead_of_recompute():
    w = random_workload(n=80, rate=50.0, seed=7, groups=0, pmin=100, pmax=300, omin=100, omax=200)
    base = S.simulate(w, CTX, server(kv_blocks=60, max_num_seqs=64), BETA, ALPHA)
    off = S.simulate(w, CTX, server(kv_blocks=60, max_num_seqs=64, cpu_kv_blocks=10000), BETA, ALPHA, record_steps=True)
    assert off.counters["preemptions"] > 0
    assert off.counters["offload_tokens"] > 0 and off.trace["offload_tokens"].sum() == off.counters["offload_tokens"]
    assert off.requests["loaded_tokens"].sum() > 0
    assert not off.requests["failed"].any()
    per_pre = lambda r: r.counters["prefill_tokens"] / max(1, r.counters["preemptions"])  # noqa: E731
    assert per_pre(off) < per_pre(base)


def test_prefix_hits_reduce_prefill_tokens():
    w = random_workload(n=200, rate=10.0, seed=11, groups=3, prefix=200, pmin=250, pmax=600)
    on = S.simulate(w, CTX, server(), BETA, ALPHA)
    off = S.simulate(w, CTX, server(prefix_caching=False), BETA, ALPHA)
    assert off.requests["cached_tokens"].sum() == 0
    hits = on.requests["cached_tokens"]
    assert hits.sum() > 0 and set(np.unique(hits)) <= {0, 192}  # full blocks of the 200-token prefix
    assert on.counters["prefill_tokens"] == off.counters["prefill_tokens"] - hits.sum()
    assert on.summary["ttft_ms"]["mean"] < off.summary["ttft_ms"]["mean"]
    # grouped requests with a resident prefix hit: all but (about) the first of each group
    grouped = on.requests[on.requests["prefix_group"] >= 0]
    assert (grouped["cached_tokens"] > 0).mean() > 0.9


def test_prompt_equal_to_cached_prefix_recomputes_only_its_last_block():
    # vLLM v1 caps a prefix-cache hit at prompt - 1 tokens: a repeated prompt of exactly 12 full
    # blocks hits 11 of them and computes 16 tokens (the simulator used to compute all 192)
    n = 40
    w = W.Workload(
        arrival_us=np.arange(n, dtype=np.int64) * 200_000,
        input_tokens=np.full(n, 192),
        output_tokens=np.full(n, 8),
        prefix_group=np.zeros(n, dtype=np.int64),
        prefix_length=np.full(n, 192),
        timeout_us=-1,
    )
    srv = server()
    res = S.simulate(w, CTX, srv, BETA, ALPHA, record_steps=True)
    check_invariants(w, srv, res)
    d = res.requests
    assert d["cached_tokens"].iloc[0] == 0 and d["computed_tokens"].iloc[0] == 192 + 7
    assert (d["cached_tokens"].iloc[1:] == 176).all()
    assert (d["computed_tokens"].iloc[1:] == 16 + 7).all()
    assert res.counters["prefill_tokens"] == 192 + 16 * (n - 1)


def test_prefix_blocks_evicted_lru_under_pressure():
    w = random_workload(n=150, rate=30.0, seed=2, groups=40, prefix=160, pmin=200, pmax=400, omin=50, omax=100)
    srv = server(kv_blocks=120, max_num_seqs=64)
    res = S.simulate(w, CTX, srv, BETA, ALPHA, record_steps=True)
    check_invariants(w, srv, res)
    assert res.trace["kv_cached"].max() > 0
    assert not res.requests["failed"].any()


def test_timeouts_fail_and_free():
    w = random_workload(n=200, rate=100.0, seed=4, groups=0, omin=5, omax=200, timeout_s=1.0)
    srv = server()
    res = S.simulate(w, CTX, srv, BETA, ALPHA, record_steps=True)
    d = res.requests
    assert d["failed"].any() and not d["failed"].all()
    assert res.summary["n_failed"] == int(d["failed"].sum())
    assert d.loc[d["failed"], "ttft_ms"].isna().all()
    ok = d[~d["failed"]]
    assert (ok["e2e_ms"] <= 1000.0 + 1e-6).all()
    assert res.counters["kv_used_end"] == 0
    late = (d["finish_us"] - d["arrival_us"] - 1e6).max()
    assert late <= res.trace["dt_ms"].max() * 1e3 + 1e-6  # aborted within a step of the deadline


def test_oversized_request_rejected():
    w = W.Workload(
        arrival_us=[0, 10],
        input_tokens=[5000, 100],
        output_tokens=[10, 10],
        prefix_group=[-1, -1],
        prefix_length=[0, 0],
        timeout_us=[-1, -1],
    )
    d = S.simulate(w, CTX, server(kv_blocks=100), BETA, ALPHA).requests
    assert list(d["failed"]) == [True, False]


def test_noise_seeded():
    w = random_workload(n=100, seed=9)
    a = S.simulate(w, CTX, server(), BETA, ALPHA, step_noise=0.2, seed=3).summary
    b = S.simulate(w, CTX, server(), BETA, ALPHA, step_noise=0.2, seed=3).summary
    c = S.simulate(w, CTX, server(), BETA, ALPHA, step_noise=0.2, seed=4).summary
    assert a["e2e_ms"] == b["e2e_ms"] and a["e2e_ms"] != c["e2e_ms"]


def test_bad_inputs():
    w = random_workload(n=10)
    with pytest.raises(SpecError, match="kv_blocks"):
        S.simulate(w, CTX, {"max_num_seqs": 4}, BETA, ALPHA)
    with pytest.raises(SpecError, match="beta"):
        S.simulate(w, CTX, server(), np.zeros(3), ALPHA)
    with pytest.raises(SpecError, match="alpha"):
        S.simulate(w, CTX, server(), BETA, np.zeros(5))


def fake_draws(D=6, seed=0):
    rng = np.random.default_rng(seed)
    beta = BETA[None] * np.exp(0.1 * rng.standard_normal((D, 1, F.N_BETA)))
    alpha = ALPHA[None] * np.exp(0.1 * rng.standard_normal((D, F.N_ALPHA)))
    return types.SimpleNamespace(beta=beta, alpha=alpha, sigma_rel=np.full(D, 0.05), new_levels=[])


def test_posterior_predictive_intervals():
    w = random_workload(n=150, seed=12)
    pp = S.posterior_predictive(w, CTX, server(), fake_draws(), n_draws=4, seed=0)
    assert pp["requests"] == 150 and pp["draws"] == 4
    for m in S.METRICS:
        e = pp[m]
        for stat in ("mean", "p90", "p99"):
            lo50, hi50 = e[f"{stat}_interval50"]
            lo90, hi90 = e[f"{stat}_interval90"]
            assert lo90 <= lo50 <= hi50 <= hi90
            assert lo90 <= e[stat] <= hi90
            # the point is the median across draws (absolute-error Bayes estimate); the mean is kept
            v = np.asarray(e["draws"][stat])
            assert e[stat] == pytest.approx(np.median(v)) and e[f"{stat}_draw_mean"] == pytest.approx(v.mean())
        assert e["mean"] <= e["p90"] <= e["p99"]
    # a pure function of its arguments: the same draws again (what makes a Dask sweep of SPECs
    # independent of the worker count, tests/test_cluster.py)
    pp2 = S.posterior_predictive(w, CTX, server(), fake_draws(), n_draws=4, seed=0)
    assert pp2["e2e_ms"]["draws"] == pp["e2e_ms"]["draws"]


def test_posterior_predictive_sim_discrepancy():
    """A simulator discrepancy widens the workload intervals of its metric by about the log-normal
    width it adds, and leaves the point (median across draws) and the per-draw values alone."""
    w = random_workload(n=150, seed=12)
    base = S.posterior_predictive(w, CTX, server(), fake_draws(), n_draws=4, seed=0)
    d = fake_draws()
    d.sim_sd = {"e2e": 0.05, "ttft": 0.0}
    pp = S.posterior_predictive(w, CTX, server(), d, n_draws=4, seed=0)
    assert pp["e2e_ms"]["draws"] == base["e2e_ms"]["draws"] and pp["e2e_ms"]["mean"] == base["e2e_ms"]["mean"]
    assert pp["e2e_ms"]["sim_sd"] == 0.05 and pp["itl_ms"]["sim_sd"] == 0.0
    assert pp["ttft_ms"]["mean_interval90"] == base["ttft_ms"]["mean_interval90"]
    assert pp["itl_ms"]["mean_interval90"] == base["itl_ms"]["mean_interval90"]
    lo, hi = pp["e2e_ms"]["mean_interval90"]
    blo, bhi = base["e2e_ms"]["mean_interval90"]
    assert lo < blo and hi > bhi
    # at least the discrepancy's own 90% width (2 x 1.645 x 0.05 on the log scale), at most that plus the draws'
    width, bwidth = np.log(hi / lo), np.log(bhi / blo)
    assert 2 * 1.645 * 0.05 * 0.95 <= width <= 2 * 1.645 * 0.05 + bwidth


def test_discrepancy_sd_recovers_extra_error():
    from bayeslat.simulate import discrepancy as V

    rng = np.random.default_rng(3)
    w = rng.uniform(0.01, 0.03, 4000)
    e = rng.normal(0, np.sqrt(0.04**2 + w**2))
    assert V.discrepancy_sd(e, w) == pytest.approx(0.04, rel=0.05)
    # errors the predictive spread explains leave no discrepancy
    assert V.discrepancy_sd(rng.normal(0, 0.5 * w), w) == 0.0


def test_cli_predict(tmp_path, monkeypatch, capsys):
    from bayeslat import cli
    from bayeslat import model as M

    spec = tmp_path / "SPEC.yaml"
    spec.write_text(
        "model: llama-2-7b-hf\nhardware: h100-sxm\n"
        "server: {tensor_parallel: 1, max_num_batched_tokens: 2048, max_num_seqs: 128, max_model_len: 4096}\n"
        "workload:\n  seed: 1\n  inference_perf:\n"
        "    data: {shared_prefix: {system_prompt_len: 100, question_len: 300, output_len: 50,"
        " num_unique_system_prompts: 3, num_users_per_system_prompt: 2, enable_multi_turn_chat: true}}\n"
        "    load: {type: constant, stages: [{rate: 5, duration: 20}]}\n"
    )
    # no default fit shipped / missing file: a clear error naming the file
    assert cli.main(["predict", str(spec), "--model", str(tmp_path / "missing.nc")]) == 2
    err = capsys.readouterr().err
    assert "missing.nc" in err and ("no such file" in err or "not found" in err)
    fake = tmp_path / "fit.nc"
    fake.write_bytes(b"")
    seen = {}
    monkeypatch.setattr(M.io, "load", lambda p: "IDATA")

    def cd(idata, hardware, model_class, n=None, seed=0, deployment=None, tensor_parallel=None):
        seen.update(hardware=hardware, model_class=model_class, n=n, deployment=deployment, tensor_parallel=tensor_parallel)
        return fake_draws(D=n)

    monkeypatch.setattr(M, "coefficient_draws", cd)
    assert cli.main(["predict", str(spec), "--model", str(fake), "--draws", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"ttft_ms", "itl_ms", "e2e_ms", "requests", "workload_discrepancy", "version_discrepancy"}
    assert out["requests"] == 100 and out["workload_discrepancy"] is None  # a fit without one
    assert out["version_discrepancy"] is None  # the spec names no vLLM release
    for m in S.METRICS:
        assert set(out[m]) == {"mean", "p90", "p99", "mean_interval90"}
        assert out[m]["mean_interval90"][0] <= out[m]["mean"] <= out[m]["mean_interval90"][1]
    # the configuration's deployment key is passed on (a trained deployment: the bundled 7B TP1)
    assert seen == {
        "hardware": "H100 SXM",
        "model_class": "dense",
        "n": 3,
        "deployment": "H100 SXM|9ba1fd527f",
        "tensor_parallel": 1,
    }
    # a requests CSV relative to the SPEC, and the kv_blocks override
    (tmp_path / "reqs.csv").write_text("arrival_time_us,input_tokens,output_tokens\n0,100,5\n1000,200,5\n")
    spec2 = tmp_path / "SPEC2.yaml"
    spec2.write_text("model: llama-2-7b-hf\nhardware: h100-sxm\nserver: {kv_blocks: 500}\nworkload: {requests: reqs.csv}\n")
    loaded = S.load_spec(spec2)
    assert loaded["kv_blocks"] == 500 and len(loaded["workload"]) == 2
    assert cli.main(["predict", str(spec2), "--model", str(fake), "--draws", "2"]) == 0
    got = capsys.readouterr()
    assert "ttft_ms" in got.out and "--draws" not in got.err  # a trained group: no advice on draws
    # a new level (an unseen GPU): few draws get a note on stderr, the JSON on stdout stays clean
    monkeypatch.setattr(
        M,
        "coefficient_draws",
        lambda *a, n=None, **k: types.SimpleNamespace(**dict(vars(fake_draws(D=n)), new_levels=["hardware"])),
    )
    assert cli.main(["predict", str(spec2), "--model", str(fake), "--draws", "2", "--json"]) == 0
    got = capsys.readouterr()
    assert json.loads(got.out)["requests"] == 2 and f"--draws {S.NEW_LEVEL_DRAWS}" in got.err
    assert cli.main(["predict", str(spec2), "--model", str(fake), "--draws", str(S.NEW_LEVEL_DRAWS)]) == 0
    assert "--draws" not in capsys.readouterr().err
    bad = tmp_path / "BAD.yaml"
    bad.write_text("model: llama-2-7b-hf\nhardware: h100-sxm\nworkload: {foo: 1}\n")
    with pytest.raises(SpecError, match="workload"):
        S.load_spec(bad)


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).resolve().parent.parent / "specs" / "examples").glob("*.yaml")), ids=lambda p: p.stem
)
def test_example_specs_load(path):
    """Every shipped example SPEC resolves: model, GPU (by key or name), server, the KV capacity of
    that deployment (derived, or the SPEC's override) and the profile's rate x duration requests."""
    import yaml

    from bayeslat import config as specs

    spec = S.load_spec(path)
    raw = yaml.safe_load(path.read_text())
    stages = raw["workload"]["inference_perf"]["load"]["stages"]
    assert len(spec["workload"]) == sum(round(st["rate"] * st["duration"]) for st in stages) > 0
    assert spec["kv_blocks"] == specs.require_kv_blocks(spec["model"], spec["hardware"], spec["server"])
    if "kv_blocks" in raw["server"]:
        assert spec["kv_blocks"] == raw["server"]["kv_blocks"]
    assert spec["hardware"].name in ("H100 SXM", "A100 SXM 80GB", "L40S")
