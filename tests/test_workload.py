"""Request streams: generated inference-perf profiles match the profile and the real runs;
replayed and file workloads parse exactly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bayeslat.data import datasets
from bayeslat.data import workload as W
from bayeslat.errors import SpecError

PROFILE = {
    "data": {
        "shared_prefix": {
            "system_prompt_len": 100,
            "question_len": 447,
            "output_len": 248,
            "num_unique_system_prompts": 9,
            "num_users_per_system_prompt": 5,
            "enable_multi_turn_chat": True,
        }
    },
    "load": {"type": "constant", "stages": [{"rate": 8, "duration": 100}, {"rate": 20, "duration": 100}]},
}


def test_generated_matches_profile():
    w = W.from_inference_perf(PROFILE, seed=1)
    assert len(w) == 800 + 2000
    t = w.arrival_us / 1e6
    assert (np.diff(w.arrival_us) >= 0).all()
    n0 = (t < 100).sum()
    assert abs(n0 - 800) < 60  # stage boundary at the nominal start (+- Poisson jitter)
    for lo, hi, rate in ((5, 95, 8), (105, 195, 20)):
        k = ((t >= lo) & (t < hi)).sum() / (hi - lo)
        assert abs(k - rate) < 4 * np.sqrt(rate / (hi - lo))
        g = np.diff(t[(t >= lo) & (t < hi)])
        assert 0.85 < g.std() / g.mean() < 1.15  # exponential gaps (what the real runs show)
    assert (w.output_tokens == 248).all()
    # 9 system prompts x 5 users = 45 fixed prompts, each reused by its user's requests and
    # cacheable whole (the real traces prefill a median 2-3.5 tokens per request)
    prompts = {}
    for g, p in zip(w.prefix_group, w.input_tokens):
        assert prompts.setdefault(int(g), int(p)) == int(p)  # one prompt length per prompt id
    assert set(prompts) == set(range(45))
    user_prompts = np.array(list(prompts.values()), dtype=float)
    mean_prompt = W.calibrated_prompt(PROFILE["data"]["shared_prefix"])
    se = mean_prompt * W.TEMPLATE_REL_SD / np.sqrt(len(user_prompts))
    assert abs(user_prompts.mean() - mean_prompt) < 4 * se + 0.5
    assert w.input_tokens.std() < 10
    assert (w.prefix_length == w.input_tokens).all()
    assert (w.timeout_us == 300_000_000).all()
    # reproducible, num_requests truncates
    w2 = W.from_inference_perf(PROFILE, seed=1, num_requests=50)
    assert len(w2) == 50 and (w2.arrival_us == w.arrival_us[:50]).all()
    assert not np.array_equal(W.from_inference_perf(PROFILE, seed=2).arrival_us, w.arrival_us)


def test_constant_arrivals():
    w = W.from_inference_perf(PROFILE, seed=0, arrivals="constant")
    g = np.diff(w.arrival_us[:800])
    assert np.allclose(g, 125_000, atol=1)
    assert np.allclose(np.diff(w.arrival_us[801:]), 50_000, atol=1)
    with pytest.raises(SpecError, match="arrivals"):
        W.from_inference_perf(PROFILE, arrivals="bursty")


def test_profile_errors():
    with pytest.raises(SpecError, match="question_len"):
        W.from_inference_perf({"data": {"shared_prefix": {"system_prompt_len": 1, "output_len": 2}}, "load": PROFILE["load"]})
    with pytest.raises(SpecError, match="load.stages"):
        W.from_inference_perf({"data": PROFILE["data"], "load": {}})


def _mean_prompts():
    """(run, workload, profile tokens system_prompt_len + question_len, real mean prompt) of the 16 runs."""
    out = []
    for run in datasets.runs()["run"]:
        info = datasets.run_info(run)
        q = datasets.requests(run)
        ok = ~q["has_error"] & ~q["input_imputed"]
        sp = info["profile"]["data"]["shared_prefix"]
        out.append((run, info["workload"], sp["system_prompt_len"] + sp["question_len"], q.loc[ok, "input_tokens"].mean()))
    return out


def test_template_in_sample_and_arrivals_of_the_16_runs():
    """In sample: the template constants were fit (least squares) to these 16 runs' mean prompts;
    it reproduces each within 5 tokens. And the real arrivals are Poisson (gap CV ~ 1) with exactly
    rate x duration per stage."""
    for run, _, n, mean in _mean_prompts():
        assert abs(mean - W.calibrated_prompt({"system_prompt_len": n, "question_len": 0})) < 5.0, run
    for run in datasets.runs()["run"]:
        info = datasets.run_info(run)
        q = datasets.requests(run)
        for k, g in q.groupby("stage"):
            st = info["profile"]["load"]["stages"][k]
            assert len(g) == round(st["rate"] * st["duration"])
            gaps = np.diff(g["arrival_us"].to_numpy())
            assert 0.9 < gaps.std() / gaps.mean() < 1.1
    # multi-turn chat does not grow prompts over time
    q = datasets.requests("llama-2-7b-tp1-codegen")
    x = q["input_tokens"].to_numpy()
    assert abs(x[:1000].mean() - x[-1000:].mean()) < 2.0


@pytest.mark.parametrize(
    "held_out",
    [
        "codegen",
        "general",
        "roleplay",
        pytest.param(
            "reasoning",
            marks=pytest.mark.xfail(
                strict=True,
                reason=(
                    "one (overhead, ratio) pair for every tokenizer: Mixtral's prompts run 2.5-5 tokens below it in "
                    "sample, and the ratio refit on the three shorter workloads extrapolates to reasoning's 1,034 "
                    "profile tokens 2 tokens low on top: Mixtral reasoning is off by 7.1 tokens (0.7%)"
                ),
            ),
        ),
    ],
)
def test_template_out_of_sample_held_out_workload(held_out):
    """Out of sample: no real prompt lengths beyond the 16 runs exist (the other trainval runs are
    aggregates only), so the template is refit as W documents it (least squares of the mean
    prompt on system_prompt_len + question_len) without one workload's four runs and must
    predict their mean prompts within the in-sample 5 tokens."""
    rows = _mean_prompts()
    x = np.array([r[2] for r in rows], float)
    y = np.array([r[3] for r in rows])
    held = np.array([r[1] == held_out for r in rows])
    assert held.sum() == 4
    A = np.column_stack([np.ones_like(x), x])
    pair = np.linalg.lstsq(A[~held], y[~held], rcond=None)[0]
    err = {
        rows[i][0]: W.calibrated_prompt({"system_prompt_len": x[i], "question_len": 0}, tuple(pair)) - y[i]
        for i in np.flatnonzero(held)
    }
    assert all(abs(e) < 5.0 for e in err.values()), err


def test_from_requests_bundled_run():
    run = "llama-2-7b-tp1-reasoning"
    q = datasets.requests(run)
    w = W.from_run(run)
    assert len(w) == len(q)
    assert (w.arrival_us == q["arrival_us"].to_numpy()).all()  # errored requests keep their arrival
    assert (w.output_tokens == datasets.run_info(run)["output_len"]).all()  # repaired count
    assert (w.timeout_us == 300_000_000).all()
    assert w.info["n_error_recorded"] == int(q["has_error"].sum()) > 0
    # no prompt identity in per-request data: equal prompt length stands for the same prompt,
    # cacheable whole (as in bayeslat.data.reconstruct)
    assert (w.prefix_group == w.input_tokens).all() and (w.prefix_length == w.input_tokens).all()
    w2 = W.from_requests(q, timeout_s=None)
    assert (w2.prefix_group == -1).all() and (w2.timeout_us == -1).all()


def test_from_csv_and_parquet(tmp_path):
    df = pd.DataFrame(
        {
            "arrival_time_us": [5, 0, 10],
            "input_tokens": [10, 20, 30],
            "output_tokens": [1, 2, 3],
            "prefix_group": [0, -1, 0],
            "prefix_length": [8, 0, 40],
        }
    )
    df.to_csv(tmp_path / "w.csv", index=False)
    df.to_parquet(tmp_path / "w.parquet")
    for w in (W.from_csv(tmp_path / "w.csv"), W.from_parquet(tmp_path / "w.parquet"), W.from_file(tmp_path / "w.parquet")):
        assert list(w.arrival_us) == [0, 5, 10]  # sorted by arrival
        assert list(w.input_tokens) == [20, 10, 30]
        assert list(w.prefix_group) == [-1, 0, 0]
        assert list(w.prefix_length) == [0, 8, 30]  # clipped to the prompt
        assert (w.timeout_us == -1).all()
    assert (W.from_csv(tmp_path / "w.csv", timeout_s=2).timeout_us == 2_000_000).all()
    (tmp_path / "bad.csv").write_text("arrival_time_us,input_tokens\n0,1\n")
    with pytest.raises(SpecError, match="output_tokens"):
        W.from_csv(tmp_path / "bad.csv")
    (tmp_path / "bad2.csv").write_text("arrival_time_us,input_tokens,output_tokens\n0,1,1\n5,x,1\n")
    with pytest.raises(SpecError, match=r"bad2.csv:3: input_tokens"):
        W.from_csv(tmp_path / "bad2.csv")
    with pytest.raises(SpecError, match="no such file"):
        W.from_csv(tmp_path / "nope.csv")


def test_random_data_profile():
    """inference-perf's random / synthetic data: lengths normal(mean, std), rounded and clipped to
    [min, max]; nothing shared; the stages' request counts as for shared_prefix."""
    prof = {
        "data": {
            "type": "random",
            "input_distribution": {"min": 10, "max": 900, "mean": 500, "std": 200},
            "output_distribution": {"min": 5, "max": 300, "mean": 100, "std": 1e6},
        },
        "load": {"type": "constant", "stages": [{"rate": 10, "duration": 30}, {"rate": 20, "duration": 10}]},
    }
    w = W.from_inference_perf(prof, seed=3)
    assert len(w.arrival_us) == 500
    assert w.input_tokens.min() >= 10 and w.input_tokens.max() <= 900
    assert abs(np.median(w.input_tokens) - 500) < 30 and 150 < w.input_tokens.std() < 230
    # std far above the range: almost every output is clipped to an end of [5, 300]
    assert set(np.unique(w.output_tokens)) <= set(range(5, 301)) and np.isin(w.output_tokens, (5, 300)).mean() > 0.99
    assert (w.prefix_group == -1).all() and (w.prefix_length == 0).all()
    assert (
        W.from_inference_perf({**prof, "data": {**prof["data"], "type": "synthetic"}}, seed=3).input_tokens.tolist()
        == w.input_tokens.tolist()
    )
    with pytest.raises(SpecError, match="shareGPT.*not generated") as e:
        W.from_inference_perf({**prof, "data": {"type": "shareGPT"}})
    assert e.value.field == "data.type"
    with pytest.raises(SpecError) as e:
        W.from_inference_perf({**prof, "data": {"type": "random", "input_distribution": {"mean": 10}}})
    assert e.value.field == "data.output_distribution"
    with pytest.raises(SpecError) as e:
        W.from_inference_perf({**prof, "data": {**prof["data"], "input_distribution": {"min": 50, "max": 10, "mean": 20}}})
    assert e.value.field == "data.input_distribution.max"
