"""The kernel table (bayeslat.data.kernels): compaction of hand-built aiconfigurator CSVs, the
roofline physics of a row, interpolation on the kernel grid, the decode-step kernel sum."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bayeslat import config as C
from bayeslat.data import kernels as K
from bayeslat.errors import SpecError


def _write_tables(d, gemm=None):
    base = {"device": "X", "vllm_version": "0.14.0", "kernel_source": "k", "dtype": "bfloat16"}
    g = (
        gemm
        if gemm is not None
        else pd.DataFrame(
            [
                {"gpu": "h100_sxm", "m": 1, "n": 4096, "k": 4096, "latency_ms": 0.030},
                {"gpu": "h100_sxm", "m": 1, "n": 4096, "k": 4096, "latency_ms": 0.034},  # repeated key: averaged
                {"gpu": "h100_sxm", "m": 8, "n": 4096, "k": 4096, "latency_ms": 0.0},  # not positive: skipped
                {"gpu": "rtx_pro_6000_server", "m": 1, "n": 4096, "k": 4096, "latency_ms": 0.05},  # no datasheet
                {"gpu": "a100_sxm", "m": 1, "n": 4096, "k": 4096, "latency_ms": 0.06},
            ]
        )
    )
    g.assign(**base).to_csv(d / "gemm_bf16_vllm.csv.gz", index=False)
    attn = {"batch_size": 2, "num_heads": 8, "num_kv_heads": 8, "head_dim": 128, "gpu": "h100_sxm"}
    pd.DataFrame([{**attn, "seq_len": 128, "latency_ms": 0.02}]).assign(**base).to_csv(
        d / "context_attention_bf16_vllm.csv.gz", index=False
    )
    pd.DataFrame([{**attn, "kv_len": 1024, "latency_ms": 0.03}]).assign(**base).to_csv(
        d / "generation_attention_bf16_vllm.csv.gz", index=False
    )
    moe = {"hidden_size": 4096, "inter_size": 14336, "topk": 2, "num_experts": 8, "moe_tp_size": 1, "moe_ep_size": 1}
    pd.DataFrame(
        [
            {**moe, "gpu": "h100_sxm", "num_tokens": 4, "distribution": "power_law_1.01", "latency_ms": 0.4},
            {**moe, "gpu": "h100_sxm", "num_tokens": 4, "distribution": "power_law_1.2", "latency_ms": 0.6},
        ]
    ).assign(**base).to_csv(d / "moe_bf16_vllm.csv.gz", index=False)
    ar = {"gpu": "h100_sxm", "num_gpus": 2, "message_elems": 4096, "message_bytes": 8192}
    pd.DataFrame([{**ar, "mode": "vllm_graph", "latency_ms": 0.005}, {**ar, "mode": "vllm_eager", "latency_ms": 0.05}]).assign(
        **base
    ).to_csv(d / "allreduce_vllm_custom.csv.gz", index=False)


def test_compact_keeps_what_a_step_runs_and_reports_every_skipped_row(tmp_path):
    _write_tables(tmp_path)
    table, report = K.compact(tmp_path)
    gemm = table[table["family"] == "gemm"].sort_values("gpu")
    assert gemm["gpu"].tolist() == ["a100_sxm", "h100_sxm"]
    assert gemm["latency_ms"].tolist() == pytest.approx([0.06, 0.032])  # the repeated key averaged
    assert report["gemm"]["skipped"] == {"GPU without a bundled datasheet": 1, "latency not a positive number": 1}
    assert report["gemm"]["repeated keys averaged"] == 1
    assert report["gemm"]["rows_in"] == 5 and report["gemm"]["rows_out"] == 2
    assert report["allreduce"]["skipped"] == {"eager mode (a decode step replays a CUDA graph)": 1}
    moe = table[table["family"] == "moe"]
    assert len(moe) == 1 and moe["latency_ms"].iloc[0] == pytest.approx(0.5)  # both router skews averaged
    assert set(table["version"]) == {"0.14"}
    assert list(table.columns) == ["gpu", "version", "family", *K.SHAPE_COLS, "latency_ms"]


def test_compact_errors_name_the_file_and_the_column(tmp_path):
    with pytest.raises(SpecError, match="kernel table missing") as e:
        K.compact(tmp_path)
    assert "gemm_bf16_vllm.csv.gz" in str(e.value)
    _write_tables(tmp_path, gemm=pd.DataFrame([{"gpu": "h100_sxm", "m": 1, "n": 2, "latency_ms": 0.1}]))
    with pytest.raises(SpecError, match="columns missing") as e:
        K.compact(tmp_path)
    assert e.value.field == "k" and "gemm_bf16_vllm" in str(e.value)


def test_a_bad_version_string_is_an_error():
    with pytest.raises(SpecError, match="not a vLLM version"):
        K._version("main")
    assert K._version("0.14.1.dev1+gd68209402") == "0.14"


def _row(family, *shape):
    return (
        pd.DataFrame([{"gpu": "h100_sxm", "version": "0.14", "family": family, **{f"s{i}": v for i, v in enumerate(shape)}}])
        .fillna(0.0)
        .assign(**{f"s{i}": 0.0 for i in range(len(shape), K.N_SHAPE)})
    )


def test_kernel_physics_counts_flops_and_bytes_of_each_family():
    hw = K.datasheet("h100_sxm")
    ph = K.kernel_physics(_row("gemm", 64, 4096, 8192), hw, benchmark_loop=False)
    assert ph["flops"][0] == 2 * 64 * 4096 * 8192
    assert ph["bytes"][0] == 2 * (64 * 8192 + 8192 * 4096 + 64 * 4096)
    assert ph["flop_ms"][0] == pytest.approx(ph["flops"][0] / hw.bf16_flops * 1e3)
    assert ph["byte_ms"][0] == pytest.approx(ph["bytes"][0] / hw.hbm_bandwidth * 1e3)
    dec = K.kernel_physics(_row("decode", 4, 1000, 32, 8, 128), hw, benchmark_loop=False)
    assert dec["bytes"][0] == 2 * 128 * (2 * 8 * 4 * 1000 + 2 * 32 * 4)  # K and V of every token, Q and O
    assert dec["flops"][0] == 4 * 4 * 1000 * 32 * 128
    pre = K.kernel_physics(_row("prefill", 1, 100, 8, 8, 128), hw)
    assert pre["flops"][0] == 4 * (100 * 101 / 2) * 8 * 128  # causal pairs
    ar = K.kernel_physics(_row("allreduce", 4, 1000), hw)
    assert ar["bytes"][0] == 2 * 1000 * 2 * 3 / 4  # ring: 2 (g - 1) / g of the message
    assert ar["byte_ms"][0] == pytest.approx(ar["bytes"][0] / hw.link_bandwidth * 1e3)
    moe = K.kernel_physics(_row("moe", 1, 4096, 14336, 2, 8, 1, 1), hw)
    touched = 8 * (1 - (1 - 2 / 8) ** 1)  # one token touches its top-2 experts
    assert touched == 2
    assert moe["bytes"][0] == pytest.approx(2 * (2 * 3 * 4096 * 14336 + 2 * 4096))


def test_a_working_set_within_l2_is_no_dram_traffic_in_a_benchmark_loop_only():
    hw = K.datasheet("h100_sxm")
    small = _row("gemm", 1, 1024, 1024)  # 2 MiB of weights < 50 MB of L2
    assert K.kernel_physics(small, hw)["byte_ms"][0] == 0.0
    assert K.kernel_physics(small, hw, benchmark_loop=False)["byte_ms"][0] > 0.0
    assert K.kernel_physics(small, K.datasheet("b200_sxm"))["byte_ms"][0] > 0.0  # no L2 on its datasheet


def _grid_table():
    ms = np.array([1, 2, 4, 8, 16])
    rows = [
        {"gpu": "h100_sxm", "version": "0.14", "family": "gemm", "s0": m, "s1": n, "s2": 1024, "latency_ms": 0.01 * m * n / 1024}
        for m in ms
        for n in (1024, 4096)
    ]
    return pd.DataFrame(rows).assign(**{f"s{i}": 0.0 for i in range(3, K.N_SHAPE)})


def test_interpolate_is_exact_on_the_grid_log_linear_between_and_keeps_the_slope_beyond():
    df = _grid_table()
    q = {"m": np.array([4.0, 3.0, 32.0]), "n": 1024.0, "k": 1024.0}
    t = K.interpolate(df, "gemm", "h100_sxm", "0.14", q)
    assert t == pytest.approx([0.04, 0.03, 0.32])  # t = 0.01 m is a line in log-log: exact everywhere
    t2 = K.interpolate(df, "gemm", "h100_sxm", "0.14", {"m": 2.0, "n": 2048.0, "k": 1024.0})
    assert t2 == pytest.approx([0.04])
    with pytest.raises(SpecError, match="no gemm rows of l40s"):
        K.interpolate(df, "gemm", "l40s", "0.14", q)
    with pytest.raises(SpecError, match="unknown shape columns"):
        K.interpolate(df, "gemm", "h100_sxm", "0.14", {"batch": 1.0})


def test_decode_step_sum_adds_its_parts_and_grows_with_the_batch():
    df = K.load()
    m = C.load_model("llama-2-70b-hf")
    r = K.decode_step_sum(df, m, "h100_sxm", "0.14", 4, [1, 64, 256], 1024)
    assert r["total"] == pytest.approx(r["gemm"] + r["moe"] + r["attention"] + r["allreduce"])
    assert np.all(np.diff(r["total"]) > 0) and np.all(r["allreduce"] > 0) and np.all(r["moe"] == 0)
    # a decode step of 70B at TP4 streams 2 bytes x 69e9 / 4 = 34.5 GB of weights per GPU: 10.3 ms
    # at 3.35 TB/s; the measured GEMMs take a bit more
    assert 10.0 < r["gemm"][0] < 14.0
    moe = K.decode_step_sum(df, C.load_model("mixtral-8x7b-v0.1"), "h100_sxm", "0.14", 2, [1, 64], 1024)
    assert np.all(moe["moe"] > 0)


def test_the_bundled_table_has_five_gpus_on_one_grid():
    df = K.load()
    assert set(df["gpu"]) == set(K.GPU_DATASHEETS)
    assert set(df["family"]) == set(K.FAMILIES)
    assert set(df.loc[df["gpu"] == "h100_sxm", "version"]) == {"0.14", "0.19"}
    sv = K.serving_shapes(df)
    assert (sv.loc[sv["family"] == "gemm", ["s1", "s2"]] >= 256).all().all()
