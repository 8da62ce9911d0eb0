"""feature_context from specs, and the kernel's features on hand-built batches."""

import numpy as np
import pytest

from bayeslat import config as S
from bayeslat import features as F
from bayeslat.deployment import resolve


@pytest.fixture(scope="module")
def llama7b():
    m, hw = S.load_model("llama-2-7b-hf"), S.load_hardware("h100-sxm")
    return m, hw, F.feature_context(m, hw, S.load_server("llama-2-7b-tp1"))


@pytest.fixture(scope="module")
def mixtral():
    m, hw = S.load_model("mixtral-8x7b-v0.1"), S.load_hardware("h100-sxm")
    return m, hw, F.feature_context(m, hw, S.load_server("mixtral-8x7b-tp2"))


def test_context_fields(llama7b, mixtral):
    m, hw, ctx = llama7b
    arr = ctx.to_array()
    assert arr.shape == (len(F.CONTEXT_FIELDS),) and np.all(np.isfinite(arr))
    assert ctx.peak_flops_per_us == pytest.approx(989.5e6)
    assert ctx.hbm_bytes_per_us == pytest.approx(3.35e6)
    assert ctx.link_bytes_per_us == pytest.approx(900e3) and ctx.pcie_bytes_per_us == pytest.approx(128e3)
    assert ctx.kv_bytes_per_token == 524_288
    assert ctx.allreduce_bytes_per_token == 0.0 and ctx.dispatch_bytes_per_token == 0.0
    assert ctx.num_experts == 0 and ctx.expert_weight_bytes == 0 and ctx.num_layers == 32
    assert ctx.attn_flops_per_pair == 32 * 4 * 32 * 128
    assert ctx.lm_head_flops_per_seq == 2 * 4096 * 32000
    mx, _, cm = mixtral
    assert cm.num_experts == 8 and cm.experts_per_token == 2 and cm.num_moe_layers == 32
    assert cm.allreduce_bytes_per_token == pytest.approx(2 * 0.5 * 4096 * 2 * 2 * 32)
    assert cm.kv_bytes_per_token == 65_536
    # workers: the TP degree; multiproc (alpha feature) is 1 only with more than one worker
    assert ctx.workers == 1.0 and F.multiproc(ctx) == 0.0 and F.multiproc(ctx.to_array()) == 0.0
    assert cm.workers == 2.0 and F.multiproc(cm) == 1.0 and F.multiproc(cm.to_array()) == 1.0
    np.testing.assert_array_equal(
        F.alpha_features([100, 200], [0, 5], F.multiproc(cm))[:, F.ALPHA_NAMES.index("multiproc")], [1.0, 1.0]
    )
    assert cm.expert_weight_bytes == pytest.approx(32 * 8 * 3 * 4096 * 14336 * 2 / 2)
    ep = F.feature_context(mx, S.load_hardware("h100-sxm"), S.load_server({"tensor_parallel": 2, "expert_parallel": True}))
    assert ep.dispatch_bytes_per_token > 0


def test_fp8_and_kv_dtype():
    hw = S.load_hardware("h100-sxm")
    scout = S.load_model("llama-4-scout-17b-16e-instruct-fp8-dynamic")
    ctx = F.feature_context(scout, hw, S.load_server({"tensor_parallel": 2}))
    assert ctx.peak_flops_per_us == pytest.approx(1979e6)  # FP8 weights -> FP8 peak
    m = S.load_model("llama-2-7b-hf")
    c8 = F.feature_context(m, hw, S.load_server({"kv_cache_dtype": "fp8"}))
    assert c8.kv_bytes_per_token == 524_288 / 2
    l40s = F.feature_context(m, S.load_hardware("l40s"), S.load_server(None))
    assert l40s.link_bytes_per_us == l40s.pcie_bytes_per_us


def test_deployment_context(llama7b):
    m, hw, ctx = llama7b
    dep = resolve(m, hw, "llama-2-7b-tp1")
    assert dep.ctx == ctx and abs(dep.kv_blocks - 7462) / 7462 < 0.03


def test_kernel_hand_computed(llama7b):
    m, hw, ctx = llama7b
    # decode at context 99 + a 10-token prefill chunk on a 0 context
    st = F.batch_stats([1, 10], [99, 0], [False, True])
    assert list(st[:6]) == [1, 1, 10, 55, 10, 100]
    raw, reg = F.step_features(st, ctx, scaled=False)
    raw = raw[0]
    fl = S.step_flops(m, [1, 10], [99, 0], [False, True])
    peak = 989.5e6
    assert raw[F.B["prefill_compute"]] + raw[F.B["decode_compute"]] == pytest.approx(fl["total"] / peak)
    assert raw[F.B["prefill_compute"]] == pytest.approx(
        (10 * ctx.linear_flops_per_token + 55 * ctx.attn_flops_per_pair + ctx.lm_head_flops_per_seq) / peak
    )
    assert raw[F.B["weight_load"]] == pytest.approx(ctx.dense_weight_bytes / 3.35e6)
    assert ctx.dense_weight_bytes == pytest.approx(S.weight_bytes_per_gpu(m)["total"] - 32000 * 4096 * 2)
    assert raw[F.B["decode_kv"]] == pytest.approx(100 * 524_288 / 3.35e6)
    assert raw[F.B["prefill_kv"]] == pytest.approx(10 * 524_288 / 3.35e6)
    assert raw[F.B["tp_comm"]] == 0 and raw[F.B["moe_dispatch"]] == 0 and raw[F.B["kv_offload"]] == 0
    assert raw[F.B["layer_overhead"]] == 32 and raw[F.B["request_overhead"]] == 2
    # KV tokens held: the decode's 99 + 1 and the chunk's 0 + 10
    assert raw[F.B["context_overhead"]] == 110
    assert F.REGIMES[reg[0]] == "mixed"


def test_regimes(llama7b):
    _, _, ctx = llama7b
    cases = {
        "decode": F.batch_stats([1] * 8, [100] * 8, [False] * 8),
        "kv_bound": F.batch_stats([1] * 128, [8000] * 128, [False] * 128),
        "prefill_heavy": F.batch_stats([2048], [0], [True]),
        "mixed": F.batch_stats([1] * 64 + [8], [2000] * 64 + [0], [False] * 64 + [True]),
    }
    for name, st in cases.items():
        _, reg = F.step_features(st, ctx)
        assert F.REGIMES[reg[0]] == name, name


def test_moe_weight_load_grows_with_tokens(mixtral):
    _, _, ctx = mixtral
    w = [
        F.step_features(F.batch_stats([1] * n, [100] * n, [False] * n), ctx, scaled=False)[0][0, F.B["weight_load"]]
        for n in (1, 2, 8, 64)
    ]
    assert all(a < b for a, b in zip(w, w[1:]))
    full = (ctx.dense_weight_bytes + ctx.expert_weight_bytes) / ctx.hbm_bytes_per_us
    assert w[-1] == pytest.approx(full, rel=1e-6)
    one = (ctx.dense_weight_bytes + 0.25 * ctx.expert_weight_bytes) / ctx.hbm_bytes_per_us
    assert w[0] == pytest.approx(one)


@pytest.mark.parametrize(
    "key,server",
    [
        ("llama-2-7b-hf", "llama-2-7b-tp1"),
        ("mixtral-8x7b-v0.1", "mixtral-8x7b-tp2"),
        ("llama-2-70b-hf", "llama-2-70b-tp4"),
        ("deepseek-v2-lite", None),
    ],
)
def test_monotone_finite_and_scaled(key, server):
    m, hw = S.load_model(key), S.load_hardware("h100-sxm")
    ctx = F.feature_context(m, hw, S.load_server(server))
    contexts = np.array([0, 1, 16, 512, 4096, 16384, 32768, 65536])
    dec = np.array([F.batch_stats([1] * 32, [c] * 32, [False] * 32) for c in contexts])
    pre = np.array([F.batch_stats([512], [c], [True]) for c in contexts])
    for st in (dec, pre):
        f, _ = F.step_features(st, ctx)
        assert np.all(np.isfinite(f)) and np.all(f >= 0)
        assert np.all(np.diff(f, axis=0) >= -1e-12)  # no feature decreases with context
    # O(1) after scaling for one request at 0..64k context (decode or a 512-token chunk)
    one = np.array([F.batch_stats([1], [c], [False]) for c in contexts] + [F.batch_stats([512], [c], [True]) for c in contexts])
    f, _ = F.step_features(one, ctx)
    assert np.all(f.max(axis=0) < 50)
    # a typical step (32 decodes at 1k context + a 512-token chunk): every active column is O(1)
    st = F.batch_stats([1] * 32 + [512], [1000] * 32 + [0], [False] * 32 + [True])
    f, _ = F.step_features(st, ctx)
    nz = f[0][f[0] > 0]
    assert np.all(nz > 1e-3) and np.all(nz < 50)
