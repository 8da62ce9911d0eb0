"""Spec loaders, validation errors, derived quantities and the `bayeslat specs` CLI."""

import json

import pytest

from bayeslat import config as S
from bayeslat.cli import main
from bayeslat.errors import SpecError

MODEL_KEYS = sorted(p.parent.name for p in (S.specs_dir() / "models").glob("*/config.json"))
DEPLOYMENTS = [  # (server yaml key, vLLM-reported GPU KV blocks, H100 SXM, gmu 0.9, block 16)
    ("llama-2-7b-tp1", "llama-2-7b-hf", 7462),
    ("codellama-34b-tp2", "codellama-34b-instruct-hf", 26602),
    ("mixtral-8x7b-tp2", "mixtral-8x7b-v0.1", 27510),
    ("llama-2-70b-tp4", "llama-2-70b-hf", 31356),
]


def test_every_bundled_config_loads():
    assert len(MODEL_KEYS) == 14
    for key in MODEL_KEYS:
        m = S.load_model(key)
        p = S.param_counts(m)
        assert 0 < p["active"] <= p["total"]
        assert m.model_class in ("dense", "moe")
        assert S.kv_bytes_per_token(m) > 0


def test_llama2_7b_params_and_kv():
    m = S.load_model("llama-2-7b-hf")
    assert m.model_class == "dense"
    assert S.param_counts(m)["total"] == pytest.approx(6.74e9, rel=0.01)
    # 32 layers * 2 (K,V) * 32 heads * 128 dims * 2 bytes
    assert S.kv_bytes_per_token(m) == 524_288
    assert S.kv_bytes_per_token(m, tp=2) == 262_144


def test_mixtral_params():
    m = S.load_model("mixtral-8x7b-v0.1")
    p = S.param_counts(m)
    assert m.model_class == "moe" and m.num_moe_layers == 32
    assert p["total"] == pytest.approx(46.7e9, rel=0.02)
    assert p["active"] == pytest.approx(12.9e9, rel=0.02)


def test_moe_variants_and_mla():
    ds = S.load_model("deepseek-v2-lite")
    assert ds.is_mla and ds.num_moe_layers == 26  # first_k_dense_replace=1 of 27
    assert ds.shared_intermediate_size == 2 * 1408
    assert S.kv_bytes_per_token(ds) == 27 * (512 + 64) * 2  # compressed latent
    assert S.kv_bytes_per_token(ds, tp=4) == S.kv_bytes_per_token(ds)  # replicated under TP
    scout = S.load_model("llama-4-scout-17b-16e-instruct-fp8-dynamic")  # text_config nesting
    assert scout.hidden_size == 5120 and scout.num_moe_layers == 48 and scout.weight_bytes == 1.0
    assert scout.attn_weight_bytes == 2.0  # attention projections in the quant ignore list
    p = S.param_counts(scout)
    assert p["total"] == pytest.approx(107.8e9, rel=0.02) and p["active"] == pytest.approx(17.2e9, rel=0.03)
    q3 = S.load_model("qwen3-30b-a3b")
    assert S.param_counts(q3)["total"] == pytest.approx(30.5e9, rel=0.02)
    assert S.load_model("glm-5.2-fp8").weight_bytes == 1.0
    assert S.load_model("mistral-nemo-instruct-2407").head_dim == 128  # explicit head_dim != h/heads


def test_int4_quantization_bytes():
    cfg = json.loads((S.specs_dir() / "models" / "llama-2-7b-hf" / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    m = S.model_from_config(cfg, file="x.json")
    assert m.weight_bytes == 0.5
    assert S.weight_bytes_per_gpu(m)["total"] < 0.35 * S.param_counts(m)["total"] * 2


def test_h100_datasheet():
    hw = S.load_hardware("h100-sxm")
    assert hw.bf16_flops == pytest.approx(989.5e12)  # 1979 with sparsity / 2
    assert hw.fp8_flops == pytest.approx(1979e12)
    assert hw.hbm_bandwidth == pytest.approx(3.35e12)
    assert hw.visible_memory_bytes / 2**30 == pytest.approx(79.2)
    assert hw.link_bandwidth == 900e9
    assert S.load_hardware("l40s").link_bandwidth == 64e9  # no NVLink -> PCIe


@pytest.mark.parametrize("server_key,model_key,reported", DEPLOYMENTS)
def test_kv_blocks_in_sample_match_vllm(server_key, model_key, reported):
    """In sample: the memory-accounting constants of specs.py were calibrated on these four."""
    server = S.load_server(server_key)
    assert server.model == model_key
    blocks = S.kv_blocks(S.load_model(model_key), S.load_hardware("h100-sxm"), server)
    assert abs(blocks - reported) / reported < 0.03


def _aggregate_kv_cases():
    """The distinct deployments of the 15 trainval runs (datasets.aggregate_runs, from
    shared/data/trainval15.json) with the GPU KV blocks vLLM reported, less the calibration ones."""
    from bayeslat.data import datasets

    calibration = {(m, S.load_server(k).tensor_parallel) for k, m, _ in DEPLOYMENTS}
    cases = {}
    for r in datasets.aggregate_runs():
        key = (r["model_spec"], r["tensor_parallel"], r["max_num_batched_tokens"], r["max_num_seqs"])
        if (r["model_spec"], r["tensor_parallel"]) in calibration and r["max_num_batched_tokens"] == 2048:
            continue
        cases.setdefault(key, r["gpu_kv_blocks"])
    marks = {
        "llama-4-scout-17b-16e-instruct-fp8-dynamic": pytest.mark.xfail(
            strict=True,
            reason=(
                "Llama-4-Scout FP8 at TP2: derived 10,488 GPU KV blocks against vLLM's 8,253 (+27%, ~3.3 GiB per GPU "
                "that specs.kv_memory_bytes does not account for; cause not identified: this multimodal MoE checkpoint's "
                "profiling pass is not modelled). Not tuned away: the constants stay calibrated on the four runs above"
            ),
        )
    }
    return [pytest.param(*k, v, marks=marks.get(k[0], ()), id=f"{k[0]}-tp{k[1]}-{k[2]}") for k, v in sorted(cases.items())]


@pytest.mark.parametrize("model_key,tp,budget,max_seqs,reported", _aggregate_kv_cases())
def test_kv_blocks_out_of_sample_trainval15(model_key, tp, budget, max_seqs, reported):
    """Out of sample: the deployments of BLIS's 15 trainval runs that the constants were not
    calibrated on (other models, TP degrees and token budgets; the Llama-3.1-70B and Qwen2.5-7B
    runs were used to check the activation slope, not to set it). Same 3% tolerance as in sample."""
    server = S.load_server({"tensor_parallel": tp, "max_num_batched_tokens": budget, "max_num_seqs": max_seqs})
    blocks = S.kv_blocks(S.load_model(model_key), S.load_hardware("h100-sxm"), server)
    assert abs(blocks - reported) / reported < 0.03, (blocks, reported)


def test_kv_blocks_override_and_cpu_blocks():
    m, hw = S.load_model("llama-2-7b-hf"), S.load_hardware("h100-sxm")
    assert S.kv_blocks(m, hw, S.load_server({"kv_blocks": 123})) == 123
    assert S.cpu_kv_blocks(m, S.load_server({"cpu_offload_gb": 8})) == 1023  # as vLLM reported
    assert S.cpu_kv_blocks(m, S.load_server({"cpu_kv_blocks": 7})) == 7
    # less memory for KV with a bigger step budget, more with lower utilisation
    a = S.kv_blocks(m, hw, S.load_server({"max_num_batched_tokens": 8192, "max_num_seqs": 128}))
    b = S.kv_blocks(m, hw, S.load_server({"max_num_batched_tokens": 2048, "max_num_seqs": 128}))
    assert a < b


def test_server_defaults_and_validation(tmp_path):
    s = S.load_server(None)
    assert (s.block_size, s.gpu_memory_utilization, s.tensor_parallel, s.prefix_caching) == (16, 0.9, 1, True)
    assert S.load_server({"tensor_parallel_size": 2}).tensor_parallel == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("tensor_parallel: 2\nbogus_knob: 3\n")
    with pytest.raises(SpecError) as e:
        S.load_server(bad)
    assert e.value.file == str(bad) and e.value.field == "bogus_knob" and str(bad) in str(e.value)
    with pytest.raises(SpecError, match="gpu_memory_utilization"):
        S.load_server({"gpu_memory_utilization": 1.5})


def test_tp_not_dividing_heads(tmp_path):
    f = tmp_path / "tp3.yaml"
    f.write_text("tensor_parallel: 3\n")
    with pytest.raises(SpecError) as e:
        S.validate_deployment(S.load_model("llama-2-7b-hf"), S.load_server(f))
    assert e.value.field == "tensor_parallel" and str(f) in str(e.value)
    # 8 KV heads < TP 16: allowed (vLLM replicates KV heads) since 16 is a multiple of 8
    S.validate_deployment(S.load_model("llama-2-70b-hf"), S.load_server({"tensor_parallel": 16}))
    with pytest.raises(SpecError, match="num_key_value_heads"):
        S.validate_deployment(S.load_model("qwen2.5-7b-instruct"), S.load_server({"tensor_parallel": 7}))


def test_malformed_config(tmp_path):
    f = tmp_path / "config.json"
    f.write_text('{"hidden_size": 4096,')
    with pytest.raises(SpecError) as e:
        S.load_model(f)
    assert str(f) in str(e.value) and "invalid JSON" in str(e.value)
    f.write_text(json.dumps({"hidden_size": 4096, "num_attention_heads": 32, "vocab_size": 32000}))
    with pytest.raises(SpecError) as e:
        S.load_model(f)
    assert e.value.field == "num_hidden_layers" and str(f) in str(e.value)
    f.write_text(json.dumps({"text_config": {"hidden_size": 4096, "num_attention_heads": 32, "vocab_size": 1}}))
    with pytest.raises(SpecError) as e:
        S.load_model(f)
    assert e.value.field == "text_config.num_hidden_layers"


def test_unknown_datasheet_field(tmp_path):
    sheet = json.loads((S.specs_dir() / "hardware" / "h100-sxm.json").read_text())
    sheet["memory"]["colour"] = "green"
    f = tmp_path / "sheet.json"
    f.write_text(json.dumps(sheet))
    with pytest.raises(SpecError) as e:
        S.load_hardware(f)
    assert e.value.field == "memory.colour" and str(f) in str(e.value)
    del sheet["memory"]["colour"]
    sheet["price"] = 1
    f.write_text(json.dumps(sheet))
    with pytest.raises(SpecError, match="price"):
        S.load_hardware(f)
    del sheet["price"]
    del sheet["memory"]["bandwidth_tb_s"]
    f.write_text(json.dumps(sheet))
    with pytest.raises(SpecError, match="memory.bandwidth_tb_s"):
        S.load_hardware(f)


def test_step_quantities_hand_computed():
    m = S.load_model("llama-2-7b-hf")
    # one decode at context 99 (100 pairs) + one prefill of 10 new tokens on 0 context (55 pairs)
    fl = S.step_flops(m, [1, 10], [99, 0], [False, True])
    lin_tok = 2 * 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    assert fl["linear"] == pytest.approx(11 * lin_tok)
    assert fl["attention"] == pytest.approx(155 * 32 * 4 * 32 * 128)
    assert fl["lm_head"] == pytest.approx(2 * 2 * 4096 * 32000)
    by = S.step_bytes(m, [1, 10], [99, 0], [False, True])
    assert by["kv_read"] == pytest.approx(100 * 524_288) and by["kv_write"] == pytest.approx(11 * 524_288)
    assert S.allreduce_bytes(m, 10, tp=1) == 0.0
    assert S.allreduce_bytes_per_token(m, tp=2) == pytest.approx(2 * 0.5 * 4096 * 2 * 2 * 32)
    mx = S.load_model("mixtral-8x7b-v0.1")
    assert S.dispatch_bytes(mx, 10, ep=1) == 0.0
    assert S.dispatch_bytes_per_token(mx, ep=2) == pytest.approx(2 * 2 * 4096 * 2 * 0.5 * 32)
    assert S.offload_bytes(m, 16) == 16 * 524_288
    assert S.expected_experts_touched(mx, 1) == pytest.approx(0.25)
    w1, w2 = S.weight_bytes_per_gpu(mx, 2), S.weight_bytes_per_gpu(mx, 2, ep=2)
    assert w1["experts"] == pytest.approx(w2["experts"])


def test_cli_specs_json(capsys):
    rc = main(["specs", "--model", "llama-2-7b-hf", "--hardware", "h100-sxm", "--server", "llama-2-7b-tp1", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert abs(out["kv_blocks"] - 7462) / 7462 < 0.03
    assert out["params_total"] == pytest.approx(6.74e9, rel=0.01)
    assert out["feature_context"]["kv_bytes_per_token"] == 524_288
    rc = main(["specs", "--model", "mixtral-8x7b-v0.1", "--hardware", "h100-sxm", "--tp", "2"])
    assert rc == 0 and "kv_blocks" in capsys.readouterr().out


def test_cli_specs_error(capsys, tmp_path):
    rc = main(["specs", "--model", "llama-2-7b-hf", "--hardware", "h100-sxm", "--tp", "3", "--json"])
    assert rc == 2
    assert "tensor_parallel" in capsys.readouterr().err
    rc = main(["specs", "--model", str(tmp_path / "nope.json"), "--hardware", "h100-sxm"])
    assert rc == 2


@pytest.mark.parametrize(
    "name,expect",
    [
        ("H100", "H100 SXM"),
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("H100 SXM", "H100 SXM"),
        ("h100-sxm", "H100 SXM"),
        ("A100-80", "A100 SXM 80GB"),
        ("NVIDIA A100-SXM4-80GB", "A100 SXM 80GB"),
        ("L40S", "L40S"),
        ("NVIDIA L40S", "L40S"),
        ("H200", "H200 SXM"),
        ("H100 NVL", "H100 NVL"),
    ],
)
def test_gpu_names_resolve_to_bundled_datasheets(name, expect):
    assert S.load_hardware(name).name == expect


def test_ambiguous_or_unknown_gpu_name():
    with pytest.raises(SpecError, match="ambiguous GPU name.*a100-sxm-80gb") as e:
        S.load_hardware("A100")
    assert e.value.field == "hardware"
    with pytest.raises(SpecError, match="bundled: a100-sxm-80gb"):
        S.load_hardware("A100-40GB")


def test_blis_hardware_config(tmp_path):
    """BLIS's hardware_config.json entries load; a GPU matching a bundled datasheet takes its name
    (the fitted level) and interconnect, any other GPU gets PCIe with a warning."""
    f = tmp_path / "hardware_config.json"
    f.write_text(
        json.dumps(
            {
                "H100": {"TFlopsPeak": 989.5, "TFlopsFP8": 1979.0, "BwPeakTBs": 3.35, "MemoryGiB": 80},
                "A100-80": {"TFlopsPeak": 312, "BwPeakTBs": 2.0, "MemoryGiB": 80},
                "X1": {"TFlopsPeak": 100, "BwPeakTBs": 1.0, "MemoryGiB": 32},
            }
        )
    )
    ref = S.load_hardware("h100-sxm")
    h = S.load_hardware(f"{f}#H100")
    assert h.name == "H100 SXM" and h.nvlink_bandwidth == ref.nvlink_bandwidth
    assert h.bf16_flops == pytest.approx(989.5e12) and h.fp8_flops == pytest.approx(1979e12)
    assert h.hbm_bandwidth == pytest.approx(3.35e12) and h.memory_bytes == pytest.approx(80e9)
    a = S.load_hardware(f"{f}#a100-80")  # names match loosely
    assert a.name == "A100 SXM 80GB" and a.fp8_flops == a.bf16_flops
    with pytest.warns(UserWarning, match="matches no bundled GPU"):
        x = S.load_hardware(f"{f}#X1")
    assert x.name == "X1" and x.nvlink_bandwidth == 0 and x.link_bandwidth == pytest.approx(64e9)
    with pytest.raises(SpecError, match="several GPUs.*H100, A100-80, X1"):
        S.load_hardware(f)
    with pytest.raises(SpecError, match="no GPU 'B200'"):
        S.load_hardware(f"{f}#B200")
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"TFlopsPeak": 362.05, "BwPeakTBs": 0.864, "MemoryGiB": 48}))
    assert S.load_hardware(one).name == "L40S"
    one.write_text(json.dumps({"TFlopsPeak": -1, "BwPeakTBs": 0.864, "MemoryGiB": 48}))
    with pytest.raises(SpecError, match="positive") as e:
        S.load_hardware(one)
    assert e.value.field == "TFlopsPeak"


def test_renamed_datasheet_is_the_fitted_level(tmp_path):
    """An H100 datasheet under another name is the fitted H100 level (same physics), with a warning."""
    sheet = json.loads((S.specs_dir() / "hardware" / "h100-sxm.json").read_text())
    sheet["name"] = "My H100 box"
    f = tmp_path / "mine.json"
    f.write_text(json.dumps(sheet))
    with pytest.warns(UserWarning, match="using that hardware level"):
        assert S.load_hardware(f).name == "H100 SXM"
    sheet["memory"]["bandwidth_tb_s"] = 2.0  # a different GPU keeps its own name
    f.write_text(json.dumps(sheet))
    assert S.load_hardware(f).name == "My H100 box"


def test_model_that_does_not_fit_says_why(tmp_path):
    """No KV cache left: the error gives the memory accounting and what to change."""
    model, hw = S.load_model("llama-3.1-70b-instruct"), S.load_hardware("L40S")
    server = S.load_server({"tensor_parallel": 1})
    assert S.kv_blocks(model, hw, server) == 0
    with pytest.raises(SpecError, match=r"does not fit on L40S: .* GiB of weights .*Raise tensor_parallel") as e:
        S.require_kv_blocks(model, hw, server, file="SPEC.yaml")
    assert e.value.field == "server.tensor_parallel" and "SPEC.yaml" in str(e.value)
    tp4 = S.load_server({"tensor_parallel": 4})
    assert S.require_kv_blocks(model, hw, tp4) == S.kv_blocks(model, hw, tp4) > 0
    # through a SPEC mapping with an inline server: the field is named once
    from bayeslat.simulate import spec as SP

    with pytest.raises(SpecError) as e:
        SP.spec_from_dict(
            {"model": "llama-3.1-70b-instruct", "hardware": "L40S", "server": {"tensor_parallel": 1}}, require_workload=False
        )
    assert e.value.field == "server.tensor_parallel"
