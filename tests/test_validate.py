"""validate.compare / summarize on hand-built cases: signed errors, interval containment, the
median-across-draws point next to the mean across draws, stress runs out of the typical medians."""

import numpy as np
import pandas as pd
import pytest

from bayeslat import evaluate as V
from bayeslat.errors import SpecError


def _case(run, stress=False, itl_def="server", ttft=50.0, itl=10.0, e2e=2000.0):
    obs = {}
    for m, v in (("ttft", ttft), ("itl", itl), ("e2e", e2e)):
        obs |= {f"{m}_mean": v, f"{m}_p90": 1.5 * v, f"{m}_p99": 2.0 * v}
    return {
        "run": run,
        "model": "m",
        "workload": "w",
        "kind": "replay",
        "itl_definition": itl_def,
        "stress": stress,
        "observed": obs,
    }


def _pred(draws: dict):
    """posterior_predictive-shaped dict from per-draw workload means (p90 / p99 = 1.5x / 2x)."""
    out = {}
    for m, v in draws.items():
        v = np.asarray(v, float)
        e = {}
        for q, k in (("mean", 1.0), ("p90", 1.5), ("p99", 2.0)):
            e[q] = float(np.median(k * v))
            e[f"{q}_draw_mean"] = float(np.mean(k * v))
        e["mean_interval90"] = [float(np.quantile(v, 0.05)), float(np.quantile(v, 0.95))]
        if m == "e2e":  # the tails' intervals (only some predictions carry them)
            e["p90_interval90"] = [float(np.quantile(1.5 * v, 0.05)), float(np.quantile(1.5 * v, 0.95))]
            e["p99_interval90"] = [1.0, 2.0]
        out[f"{m}_ms"] = e
    return out


def test_compare_signed_errors_intervals_and_draw_mean():
    # TTFT: 4 draws near 55 ms and one runaway queue at 5 s; the median is the point, the mean is kept
    row = V.compare(
        _case("a"), _pred({"ttft": [54, 55, 55, 56, 5000], "itl": [9, 9, 9, 9, 9], "e2e": [2100, 2100, 2100, 2100, 2100]})
    )
    assert row["ttft_mean_pred"] == 55.0 and row["ttft_mean_err_pct"] == pytest.approx(10.0)
    assert row["ttft_mean_pred_draw_mean"] == pytest.approx(1044.0)
    assert row["ttft_mean_err_pct_draw_mean"] == pytest.approx(100 * (1044.0 - 50) / 50)
    assert row["itl_mean_err_pct"] == pytest.approx(-10.0) and not row["itl_mean_in90"]
    assert row["e2e_p90_err_pct"] == pytest.approx(5.0)
    assert row["ttft_mean_lo90"] == pytest.approx(54.2) and not row["ttft_mean_in90"]  # 50 ms is below it
    assert row["e2e_mean_in90"] is False and row["e2e_mean_lo90"] == row["e2e_mean_hi90"] == 2100.0
    # p90 / p99 containment where the prediction has their intervals, absent where it has not
    assert row["e2e_p90_lo90"] == 3150.0 and row["e2e_p90_in90"] is False  # observed p90 3000
    assert row["e2e_p99_in90"] is False and "ttft_p90_in90" not in row


def test_interval_score_is_width_plus_the_scaled_miss():
    # inside: the relative width; outside: plus 2 / alpha times the distance to the nearer bound
    assert V.interval_score(90.0, 110.0, 100.0) == pytest.approx(0.2)
    assert V.interval_score(90.0, 110.0, 80.0) == pytest.approx((20.0 + 20.0 * 10.0) / 80.0)
    assert V.interval_score(90.0, 110.0, 120.0, alpha=0.5) == pytest.approx((20.0 + 4.0 * 10.0) / 120.0)
    # a narrower interval that still holds the truth scores better; one that loses it scores worse
    assert V.interval_score(95.0, 105.0, 100.0) < V.interval_score(90.0, 110.0, 100.0)
    assert V.interval_score(101.0, 105.0, 100.0) > V.interval_score(90.0, 110.0, 100.0)
    with pytest.raises(SpecError, match="hi >= lo"):
        V.interval_score(110.0, 90.0, 100.0)
    row = V.compare(
        _case("a"), _pred({"ttft": [54, 55, 55, 56, 5000], "itl": [9, 9, 9, 9, 9], "e2e": [2100, 2100, 2100, 2100, 2100]})
    )
    assert row["itl_mean_iscore90"] == pytest.approx(V.interval_score(row["itl_mean_lo90"], row["itl_mean_hi90"], 10.0))


def test_summarize_typical_excludes_stress_and_client_itl():
    rows = [
        V.compare(_case("a"), _pred({"ttft": [60] * 3, "itl": [11] * 3, "e2e": [2100] * 3})),  # +20 / +10 / +5
        V.compare(_case("b"), _pred({"ttft": [45] * 3, "itl": [9.8] * 3, "e2e": [1960] * 3})),  # -10 / -2 / -2
        V.compare(_case("c", stress=True), _pred({"ttft": [100] * 3, "itl": [20] * 3, "e2e": [4000] * 3})),
        V.compare(_case("d", itl_def="client"), _pred({"ttft": [50] * 3, "itl": [30] * 3, "e2e": [2000] * 3})),
    ]
    s = V.summarize(pd.DataFrame(rows))
    assert s["all"]["runs"] == 4 and s["typical"]["runs"] == 3
    # typical: runs a, b, d -> |TTFT| 20, 10, 0 -> 10; ITL only the server-defined a, b -> 10, 2 -> 6
    assert s["typical"]["ttft_mean_median_abs_err_pct"] == pytest.approx(10.0)
    assert s["typical"]["itl_mean_median_abs_err_pct"] == pytest.approx(6.0)
    assert s["all"]["itl_mean_median_abs_err_pct"] == pytest.approx(10.0)  # a, b, c: 10, 2, 100
    assert s["typical"]["e2e_mean_median_abs_err_pct_draw_mean"] == pytest.approx(2.0)  # 5, 2, 0
    assert s["typical"]["e2e_mean_coverage90"] == pytest.approx(1 / 3)  # only d's point interval holds 2000
    assert s["typical"]["e2e_p90_coverage90"] == pytest.approx(1 / 3) and "ttft_p90_coverage90" not in s["all"]


def _experiment_dir(root, name="exp1", hardware=None, results=True):
    import json

    d = root / name
    (d / "results").mkdir(parents=True)
    cfg = (
        "model: meta-llama/Llama-2-7b-hf\ntensor_parallelism: 1\nmax_model_len: 4096\n"
        "max_num_batched_tokens: 2048\nmax_num_seqs: 128\n" + (f"hardware: {hardware}\n" if hardware else "")
    )
    (d / "exp-config.yaml").write_text(cfg)
    (d / "profile.yaml").write_text(
        json.dumps(
            {
                "data": {
                    "type": "shared_prefix",
                    "shared_prefix": {
                        "system_prompt_len": 100,
                        "question_len": 200,
                        "output_len": 51,
                        "num_unique_system_prompts": 2,
                        "num_users_per_system_prompt": 2,
                    },
                },
                "load": {"type": "constant", "stages": [{"rate": 2, "duration": 20}]},
                "server": {"ignore_eos": True},
            }
        )
    )
    if results:
        (d / "results" / "summary_lifecycle_metrics.json").write_text(
            json.dumps(
                {
                    "successes": {
                        "latency": {
                            "time_to_first_token": {"mean": 0.03, "p90": 0.04, "p99": 0.05},
                            "request_latency": {"mean": 0.53, "p90": 0.6, "p99": 0.7},
                        }
                    }
                }
            )
        )
    return d


def test_external_experiment_directories(tmp_path, capsys):
    """inference-perf experiment directories (the shared experiments/ layout): seconds -> ms, the
    mean ITL derived from the means under ignore_eos, the GPU by name, clear errors."""
    from bayeslat import model as M

    _experiment_dir(tmp_path)
    (c,) = V.external_cases([tmp_path], hardware="H100")
    assert c["observed"]["ttft_mean"] == pytest.approx(30.0) and c["observed"]["e2e_p99"] == pytest.approx(700.0)
    assert c["observed"]["itl_mean"] == pytest.approx((530.0 - 30.0) / 50) and c["observed"]["itl_p90"] is None
    assert c["deployment"].hardware == "H100 SXM" and len(c["workload_obj"]) == 40
    with pytest.raises(SpecError, match="no hardware") as e:
        V.external_cases([tmp_path])
    assert e.value.field == "hardware" and "exp-config.yaml" in str(e.value)
    _experiment_dir(tmp_path / "more", "exp2", hardware="L40S", results=False)
    with pytest.raises(SpecError, match="summary_lifecycle_metrics.json"):
        V.external_cases([tmp_path / "more"])
    df, summ = V.validate("external", idata=M.load_default(), draws=2, external=[tmp_path], hardware="H100")
    assert list(df.run) == ["exp1"] and df.loc[0, "itl_p90_in90"] is None
    assert summ["all"]["itl_p90_coverage90"] is None
    assert summ["all"]["itl_mean_coverage90"] == float(df.loc[0, "itl_mean_in90"])  # one run: its containment
    # the observed aggregate in ms, the signed error against it, and a prediction that is the 7B's
    # on an H100: 51-token answers at 2 requests/s run at batch ~1, so a decode step is about one
    # read of the 13.5 GB of weights (4.0 ms at 3.35 TB/s) plus overheads, and E2E = TTFT + 50 ITL
    r = df.loc[0]
    assert r["e2e_mean_obs"] == 530.0 and r["ttft_mean_obs"] == 30.0
    assert r["e2e_mean_err_pct"] == pytest.approx(100 * (r["e2e_mean_pred"] / 530.0 - 1))
    weights_ms = 2 * 6.74e9 / 3.35e12 * 1e3
    assert weights_ms < r["itl_mean_pred"] < 2 * weights_ms, r["itl_mean_pred"]
    assert r["e2e_mean_pred"] == pytest.approx(r["ttft_mean_pred"] + 50 * r["itl_mean_pred"], rel=0.02)
    from bayeslat import cli

    assert cli.main(["validate", "--external", str(tmp_path), "--hardware", "H100", "--draws", "2", "--json"]) == 0
    rep = __import__("json").loads(capsys.readouterr().out)
    assert rep["suite"] == "external" and [r["run"] for r in rep["runs"]] == ["exp1"]


def test_external_trainval_json(tmp_path):
    """A trainval-format JSON of new runs: model_config relative to the JSON, hardware by GPU name."""
    import json
    import shutil

    from bayeslat import config as specs
    from bayeslat.errors import SpecError

    (tmp_path / "cfg").mkdir()
    shutil.copy(specs.specs_dir() / "models" / "qwen2.5-7b-instruct" / "config.json", tmp_path / "cfg" / "config.json")
    run = {
        "id": "x1",
        "name": "x1-qwen-a100",
        "model_config": "cfg/config.json",
        "hardware": "A100-80",
        "tensor_parallel": 1,
        "max_num_seqs": 128,
        "max_num_batched_tokens": 2048,
        "gpu_kv_blocks": None,
        "workload": {
            "inference_perf": {
                "shared_prefix": {
                    "system_prompt_len": 100,
                    "question_len": 200,
                    "output_len": 50,
                    "num_unique_system_prompts": 2,
                    "num_users_per_system_prompt": 2,
                },
                "stages": [{"rate": 2, "duration": 10}],
            },
            "seed": 1,
        },
        "observed_ms": {"all": {"ttft_mean": 40.0, "e2e_mean": 900.0, "itl_mean": 17.0}},
    }
    f = tmp_path / "new_runs.json"
    f.write_text(json.dumps({"runs": [run]}))
    (c,) = V.external_cases([f])
    # no gpu_kv_blocks given: derived from the A100's memory for this model and server
    assert c["deployment"].hardware == "A100 SXM 80GB"
    assert c["deployment"].kv_blocks == specs.kv_blocks(
        specs.load_model(tmp_path / "cfg" / "config.json"),
        specs.load_hardware("a100-sxm-80gb"),
        specs.load_server({"tensor_parallel": 1, "max_num_seqs": 128, "max_num_batched_tokens": 2048}),
    )
    assert c["itl_definition"] == "client" and c["observed"]["e2e_mean"] == 900.0 and len(c["workload_obj"]) == 20
    del run["observed_ms"]
    f.write_text(json.dumps({"runs": [run]}))
    with pytest.raises(SpecError) as e:
        V.external_cases([f])
    assert e.value.field == "runs[0].observed_ms" and str(f) in str(e.value)


def test_cv_fit_cache_key_follows_the_fit_code(monkeypatch, tmp_path):
    """A cached fold fit is reused only by the same held-out set, sampler settings, rows, seed,
    feature spec, priors and fit code."""
    from bayeslat import evaluate as V
    from bayeslat import model as M

    p = V.cv_fit_path("d", {"b", "a"})
    assert p == V.cv_fit_path("d", ["a", "b"]) and p.startswith("d/heldout-") and p != V.cv_fit_path("d", {"a"})
    # the default sampler, however it is spelled; fewer draws or tuning steps are another fit
    assert V.cv_fit_path("d", {"a", "b"}, {"draws": M.DEFAULT_SAMPLER["draws"], "tune": None}) == p
    assert V.cv_fit_path("d", {"a", "b"}, {"draws": 1000, "tune": 500}) != p
    assert V.cv_fit_path("d", {"a", "b"}, {"chains": 1}) != p
    # so are other rows (other bins, or a subsample of raw rows), or another seed (cv_fit keys its
    # cache by all of its arguments)
    from bayeslat.data import design

    assert V.cv_fit_path("d", {"a", "b"}, bins=design.BINS, seed=0) == p
    assert V.cv_fit_path("d", {"a", "b"}, bins=(2, 3)) != p and V.cv_fit_path("d", {"a", "b"}, seed=1) != p
    sub = V.cv_fit_path("d", {"a", "b"}, n_per_run_kind=40)
    assert sub != p and sub != V.cv_fit_path("d", {"a", "b"}, n_per_run_kind=25)
    with pytest.raises(SpecError, match="n_per_run_kind.*or bins"):
        V.cv_fit_path("d", {"a", "b"}, bins=None)
    # a refit of bins needs rows built with bins: raw rows are refused before any sampling
    raw, _ = M.simulate_obs(seed=1, rows={("H100 SXM", "dense"): 20})
    with pytest.raises(SpecError, match="raw rows"):
        V.cv_fit(raw, set())
    edited = tmp_path / "model.py"
    edited.write_bytes(open(M.__file__, "rb").read() + b"\n# an edit\n")
    monkeypatch.setattr(M, "__file__", str(edited))
    assert V.cv_fit_path("d", {"a", "b"}) != p
