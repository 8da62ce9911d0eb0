"""InferenceData built from seeded arrays around a known truth (no sampling), for fast tests."""
from __future__ import annotations

import json

import arviz as az
import numpy as np
import xarray as xr

from bayeslat import features as F
from bayeslat import model as M


def fake_idata(obs, truth, chains=2, draws=200, seed=0, rel_sd=0.05, diverging=None, shift_chain=0.0):
    rng = np.random.default_rng(seed)
    H, C, R = len(obs.hardware_levels), len(obs.class_levels), len(F.REGIMES)
    beta = np.zeros((H, C, R, F.N_BETA))
    alpha = np.zeros((H, C, F.N_ALPHA))
    for (h, c), b in truth["beta"].items():
        beta[obs.hardware_levels.index(h), obs.class_levels.index(c)] = b
        alpha[obs.hardware_levels.index(h), obs.class_levels.index(c)] = truth["alpha"][(h, c)]
    sh = (chains, draws)
    noise = lambda *s: np.exp(rel_sd * rng.standard_normal(sh + s))  # noqa: E731
    bp = truth["beta_pop"] * noise(F.N_BETA) + 1e-4
    ap = truth["alpha_pop"] * noise(F.N_ALPHA)
    with np.errstate(divide="ignore"):
        dev = np.log(np.maximum(beta, 1e-12) / np.maximum(truth["beta_pop"], 1e-12))
    dev = np.where(beta > 0, dev, 0.0)
    adev = np.log(np.maximum(alpha, 1e-12) / truth["alpha_pop"])
    post = {
        "beta_pop": bp, "alpha_pop": ap,
        "dev_regime": dev + 0.01 * rng.standard_normal(sh + dev.shape),
        "dev_alpha_cls": adev + 0.01 * rng.standard_normal(sh + adev.shape),
        "sigma_hw": np.abs(0.2 + 0.02 * rng.standard_normal(sh)),
        "sigma_cls": np.abs(0.2 + 0.02 * rng.standard_normal(sh)),
        "sigma_regime": np.abs(0.1 + 0.02 * rng.standard_normal(sh)),
        "sigma_alpha_hw": np.abs(0.2 + 0.02 * rng.standard_normal(sh)),
        "sigma_alpha_cls": np.abs(0.2 + 0.02 * rng.standard_normal(sh)),
        "s_abs": np.abs(0.1 + 0.01 * rng.standard_normal(sh + (4,))),
        "s_rel": np.abs(0.05 + 0.005 * rng.standard_normal(sh + (4,))),
        "nu": 8.0 + rng.standard_normal(sh),
        "z_regime": rng.standard_normal(sh + (3,)),
    }
    post["dev_cls"] = np.zeros(sh + (H, C, F.N_BETA))
    post["dev_alpha_cls"] = post["dev_alpha_cls"]
    post["beta_pop"][0] += shift_chain
    dims = {"beta_pop": ["feature"], "alpha_pop": ["alpha_feature"],
            "dev_regime": ["hardware", "model_class", "regime", "feature"],
            "dev_cls": ["hardware", "model_class", "feature"],
            "dev_alpha_cls": ["hardware", "model_class", "alpha_feature"],
            "s_abs": ["kind"], "s_rel": ["kind"], "z_regime": ["z_dim"]}
    coords = {"hardware": list(obs.hardware_levels), "model_class": list(obs.class_levels), "regime": list(F.REGIMES),
              "feature": list(F.BETA_NAMES), "alpha_feature": list(F.ALPHA_NAMES), "kind": list(M.KINDS)}
    energy = rng.standard_normal(sh)
    div = np.zeros(sh, dtype=bool) if diverging is None else diverging
    idata = az.from_dict(posterior=post, dims=dims, coords=coords,
                         sample_stats={"energy": energy, "diverging": div, "maxdepth_reached": np.zeros(sh, bool)})
    n = len(obs.y)
    idata.add_groups(constant_data=xr.Dataset({
        "X": (("obs_id", "regime", "feature"), obs.X), "A": (("obs_id", "alpha_feature"), obs.A),
        "kind": ("obs_id", obs.kind), "n_steps": ("obs_id", obs.n_steps), "hw": ("obs_id", obs.hw), "cls": ("obs_id", obs.cls)},
        coords={"obs_id": np.arange(n)}))
    counts = np.zeros((H, C), int)
    np.add.at(counts, (obs.hw, obs.cls), 1)
    idata.attrs.update({"format": M.FORMAT, "spec_version": F.SPEC_VERSION, "group_rows": json.dumps(counts.tolist()),
                        "priors": json.dumps(M.DEFAULT_PRIORS), "feature_present": json.dumps(list(F.BETA_NAMES)),
                        "backend": "fake", "seed": seed})
    return idata
