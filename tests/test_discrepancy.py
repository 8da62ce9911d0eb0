"""The workload discrepancy: its calibration recovers known step-time errors, its draws widen with
the distance from the training rows, and near saturation the interval spans both branches."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from bayeslat import features as F
from bayeslat import model as M
from bayeslat import pipeline
from bayeslat import simulate as S
from bayeslat import transfer as T
from bayeslat.evaluate import discrepancy as D
from bayeslat.simulate import extrapolation as X


def _errors(rng, n_runs, tau0, tau1, v=0.01):
    """Held-out runs' implied step errors drawn from the calibration's own model, three metrics
    per run sharing one step-time error (as a run's metrics do)."""
    out = []
    for i in range(n_runs):
        g = float(rng.choice([0.02, 0.1, 0.5, 1.0]))
        r = rng.normal(0.0, np.sqrt(tau0**2 + (tau1 * g) ** 2))
        ms = {m: {"r": float(r + rng.normal(0, v)), "v": v, "elasticity": 1.0, "e": float(r), "used": True} for m in S.METRICS}
        out.append({"run": f"run-{i}", "distance": g, "feature": "decode_kv", "metrics": ms})
    return out


def test_calibration_recovers_known_discrepancy():
    rng = np.random.default_rng(3)
    cal = D.calibrate_workload_discrepancy(_errors(rng, 400, 0.05, 0.30), tau0_scale=0.05, tau1_scale=0.28, seed=0)
    lo0, hi0 = cal["tau0_interval90"]
    lo1, hi1 = cal["tau1_interval90"]
    assert lo0 <= 0.05 <= hi0 and abs(cal["tau0_mean"] - 0.05) < 0.015
    assert lo1 <= 0.30 <= hi1 and abs(cal["tau1_mean"] - 0.30) < 0.05
    assert len(cal["tau0"]) == D.CALIBRATION_DRAWS and cal["runs"] == 400


def test_calibration_without_far_workloads_falls_back_on_the_prior():
    # every held-out workload inside the training range: tau1 is only its prior (half-normal mean
    # scale * sqrt(2 / pi)), which is what a fold without any far workload can say
    rng = np.random.default_rng(4)
    errs = [e | {"distance": 0.0} for e in _errors(rng, 200, 0.05, 0.0)]
    cal = D.calibrate_workload_discrepancy(errs, tau0_scale=0.05, tau1_scale=0.28, seed=0)
    assert cal["tau1_mean"] == pytest.approx(0.28 * np.sqrt(2 / np.pi), rel=0.15)


def test_calibration_skips_metrics_that_ignore_the_step_time():
    rng = np.random.default_rng(5)
    errs = _errors(rng, 100, 0.05, 0.1)
    flat = copy.deepcopy(errs)
    for e in flat:
        e["metrics"]["extra"] = {"r": 0.6, "v": 0.01, "elasticity": 0.1, "e": 0.04, "used": False}
    a = D.calibrate_workload_discrepancy(errs, seed=0)
    b = D.calibrate_workload_discrepancy(flat, seed=0)
    assert a["tau0_mean"] == pytest.approx(b["tau0_mean"]) and a["tau1_mean"] == pytest.approx(b["tau1_mean"])
    with pytest.raises(ValueError, match="prior scales must be > 0"):
        D.calibrate_workload_discrepancy(errs, tau0_scale=0.0)


def test_implied_step_factor_reads_the_response_curve():
    lf = np.linspace(-0.6, 0.6, 25)
    y = 2.0 * lf  # elasticity 2
    assert D._implied(lf, y, 0.2) == pytest.approx(0.1)
    assert D._implied(lf, y, -0.5) == pytest.approx(-0.25)
    assert D._implied(lf, y, 5.0) == pytest.approx(0.6)  # beyond the grid: at least its end
    # a plateau through the observed value: the factor nearest 1 that reaches it
    plateau = np.where(np.abs(lf) <= 0.2, 0.0, 2.0 * (lf - np.sign(lf) * 0.2))
    assert D._implied(lf, plateau, 0.0) == 0.0
    assert D._implied(lf, plateau, 0.1) == pytest.approx(0.25)


def test_tau1_prior_scale_is_the_shipped_kernel_fit_residual_scale():
    from pathlib import Path

    import arviz as az

    hw = az.from_netcdf(Path(M.__file__).resolve().parents[2] / "models" / "hardware.nc")
    s = hw.posterior["s"].mean(("chain", "draw")).values
    assert float(np.median(s)) == pytest.approx(D.TAU1_PRIOR_SCALE, abs=0.02)


def _with_calibration(idata, tau0, tau1):
    idata = copy.copy(idata)
    idata.attrs = dict(idata.attrs)
    cal = {"tau0": [tau0] * 50, "tau1": [tau1] * 50, "tau0_mean": tau0, "tau1_mean": tau1}
    idata.attrs[X.WORKLOAD_DISCREPANCY_ATTR] = json.dumps(cal)
    return idata


def test_step_discrepancy_grows_with_the_distance():
    idata = _with_calibration(M.load_default(), 0.05, 0.3)
    near = X.step_discrepancy(idata, 0.0, 4000, seed=1)
    far = X.step_discrepancy(idata, 1.0, 4000, seed=1)
    assert np.std(near) == pytest.approx(0.05, rel=0.06)
    assert np.std(far) == pytest.approx(np.hypot(0.05, 0.3), rel=0.06)
    assert np.array_equal(near, X.step_discrepancy(idata, 0.0, 4000, seed=1))  # seeded
    assert np.allclose(near[:2000], -near[2000:])  # antithetic pairs: symmetric in every sample
    bare = copy.copy(idata)
    bare.attrs = {k: v for k, v in idata.attrs.items() if k != X.WORKLOAD_DISCREPANCY_ATTR}
    assert X.step_discrepancy(bare, 1.0, 10) is None


def test_widen_gives_each_draw_its_step_factor():
    cd = M.coefficient_draws(M.load_default(), "H100", "dense", n=6, seed=0)
    beta = cd.beta.copy()
    X.widen(cd, np.log(np.arange(1, 7, dtype=float)))
    assert np.array_equal(cd.beta, beta) and np.allclose(np.exp(cd.step_log_factor), np.arange(1, 7))
    with pytest.raises(ValueError, match="one step factor per draw"):
        X.widen(cd, np.zeros(3))


@pytest.fixture(scope="module")
def saturated_spec():
    """Mixtral's general run at its real arrivals: the default fit puts it near saturation (its mean
    TTFT moves ~30x as much as the step time)."""
    run = next(r for r in S.replay_cases(["mixtral-8x7b-v0-1-tp2-general"]))["run"]
    return S.spec_for_run(run)


def test_predict_near_saturation_spans_both_branches(saturated_spec):
    idata = M.load_default()
    plain = pipeline.predict(saturated_spec, _with_calibration(idata, 1e-6, 1e-6), draws=24, seed=0)
    wide = pipeline.predict(saturated_spec, _with_calibration(idata, 0.05, 0.3), draws=24, seed=0)
    assert wide["workload_discrepancy"]["tau"] == pytest.approx(np.hypot(0.05, 0.3 * wide["workload_discrepancy"]["distance"]))
    lo0, hi0 = plain["ttft_ms"]["mean_interval90"]
    lo1, hi1 = wide["ttft_ms"]["mean_interval90"]
    # the point is the draws' own, the discrepancy widens the interval only
    assert wide["ttft_ms"]["mean"] == pytest.approx(plain["ttft_ms"]["mean"], rel=1e-9)
    # the step-time draws reach both the unsaturated TTFT (below) and the queueing one (far above)
    assert lo1 < lo0 and hi1 > 3 * hi0
    assert lo1 < plain["ttft_ms"]["mean"] < hi1


def test_cv_suites_calibrate_the_discrepancy_without_the_held_out_runs(monkeypatch):
    from bayeslat.evaluate import suites

    cases = S.replay_cases(None)
    # every run's step error: the held-out workload's are huge, the others' small
    fake = [
        {
            "run": c["run"],
            "distance": 1.0 if c["workload"] == "reasoning" else 0.05,
            "feature": "decode_kv",
            "metrics": {
                "itl_ms": {
                    "r": 2.0 if c["workload"] == "reasoning" else 0.01,
                    "v": 0.01,
                    "elasticity": 1.0,
                    "e": 0.0,
                    "used": True,
                }
            },
        }
        for c in cases
    ]
    monkeypatch.setattr(
        suites.VD, "heldout_step_errors", lambda cs, fold_fit, **kw: [e for e in fake if e["run"] in {c["run"] for c in cs}]
    )
    folds = []
    monkeypatch.setattr(suites, "cv_fit", lambda full, exclude, **kw: folds.append(set(exclude)) or M.load_default())
    seen = {}
    real = suites.predict_case

    def spy(c, fit, draws, seed, **kw):
        seen[c["run"]] = json.loads(fit.attrs[X.WORKLOAD_DISCREPANCY_ATTR])
        return real(c, fit, draws, seed, **kw)

    monkeypatch.setattr(suites, "predict_case", spy)
    df, _ = suites.validate("lowo", draws=2, runs=["llama-2-7b-tp1-reasoning"])
    ((run, cal),) = seen.items()
    assert "reasoning" in run and len(df) == 1
    # nested: calibrated on the 12 runs of the other workloads, none of the held-out workload's
    assert cal["runs"] == 12 and all("reasoning" not in e["run"] for e in cal["errors"])
    assert "nested: without workload reasoning" == cal["source"]
    # lomo: the held-out model's runs are left out of its calibration, the other models' kept
    seen.clear()
    suites.validate("lomo", draws=2, runs=["llama-2-7b-tp1-reasoning"])
    ((_, cal),) = seen.items()
    assert cal["runs"] == 12 and all("llama-2-7b-tp1" not in e["run"] for e in cal["errors"])


def test_distance_of_an_unfitted_gpu_is_the_workloads_not_the_gpus():
    # the same workload on the L40S (no step rows in the fit): the distance is of its batch shapes,
    # about the H100's, not "every step out" as its slower steps' time features would be
    idata = M.load_default()
    case = S.replay_cases(["llama-2-7b-tp1-codegen"])[0]
    wl = case["workload_obj"].head(1500)
    out = {}
    for hw in (None, "l40s"):
        s = S.resolve_spec(S.spec_for_run(case["run"], hardware=hw, workload=wl))
        cd = M.coefficient_draws(idata, s["hardware"].name, s["model"].model_class, n=20, seed=0)
        out[hw] = X.workload_extrapolation(
            wl, s["ctx"], S.spec_sim_server(s), idata, np.median(cd.beta, 0), np.median(cd.alpha, 0)
        )
    assert out[None]["basis"] == out["l40s"]["basis"] == "batch shapes"
    assert out["l40s"]["distance"] < 0.2 and out[None]["distance"] < 0.2
    feats = T.workload_distance(
        F.step_features(
            S.simulate(wl, s["ctx"], S.spec_sim_server(s), np.median(cd.beta, 0), np.median(cd.alpha, 0), record_steps=True)
            .trace[list(F.STATS)]
            .to_numpy(np.float64),
            s["ctx"],
        )[0],
        idata,
    )
    assert max(v["frac_outside"] for k, v in feats.items() if not k.startswith("_")) > 0.5  # the time features are out
