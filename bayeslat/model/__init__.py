"""The hierarchical latency model (the only ``import pymc`` in bayeslat): the facade of its modules.

- :mod:`~bayeslat.model.priors`: constants, the default priors and their validation;
- :mod:`~bayeslat.model.build`: the input checks and the PyMC graph (its docstring states the model);
- :mod:`~bayeslat.model.sample`: the NUTS backends, sampler health, library versions, data hash;
- :mod:`~bayeslat.model.fitting`: :func:`fit` (NUTS, then the cut stages);
- :mod:`~bayeslat.model.spread`: the between-deployment and between-run spread;
- :mod:`~bayeslat.model.posterior`: coefficient draws and predictions of ObsTable rows;
- :mod:`~bayeslat.model.io`: :func:`save`, :func:`load`, the shipped default fit;
- :mod:`~bayeslat.model.synthetic`: data simulated from known coefficients;
- :mod:`~bayeslat.model.diagnose`: sampler and model diagnostics of a fit.

Public API: :func:`fit`, :func:`save`, :func:`load`, :func:`coefficient_draws`,
:func:`predict_mean`, :func:`posterior_predictive`, :func:`simulate_obs`.
"""

from __future__ import annotations

import warnings

from bayeslat.model.build import (
    FIELDS,
    _centred_cells,
    _deployment_groups,
    _structure,
    _zerosum_basis,
    build_model,
    check_obs,
)
from bayeslat.model.fitting import HELPER_VARS, MAX_SAVED_DRAWS, OFFSET_PREFIXES, data_groups, fit, raw_rows
from bayeslat.model.io import DEFAULT_MODEL, attr_json, load, load_default, load_or_default, put_group, save
from bayeslat.model.posterior import CoefDraws, coefficient_draws, noise_terms, posterior_predictive, predict_mean
from bayeslat.model.priors import DEFAULT_PRIORS, DEPLOYMENT_LEVELS, FORMAT, KINDS, SYS_KINDS, _merge_priors
from bayeslat.model.sample import (
    BACKENDS,
    DEFAULT_BACKEND,
    DEFAULT_SAMPLER,
    VERSIONED_LIBRARIES,
    available_backends,
    blas_note,
    data_hash,
    library_versions,
    sampler_health,
)
from bayeslat.model.spread import (
    RUN_SPREAD,
    _deployment_factors,
    _weighted_quantile,
    attach_deployment_spread,
    attach_run_spread,
    deployment_residuals,
    deployment_spread_draws,
    estimate_deployment_spread,
    run_residuals,
    run_spread_draws,
    run_update_factors,
    trained_deployment,
    update_weights,
)
from bayeslat.model.synthetic import TRUE_ALPHA_POP, TRUE_BETA_POP, example_contexts, simulate_obs

# pytensor's C backend warns in five lines when no BLAS links (the warning fires at the first
# compile, so this filter still comes first), which a pip install never does. The samplers are off
# that backend (nutpie compiles the model with numba, numpyro with JAX); only the pointwise
# log-likelihood pass runs in it. `bayeslat fit` says so in one line (sample.blas_note).
warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS installation", category=UserWarning)

__all__ = [
    # constants and priors
    "FORMAT",
    "KINDS",
    "DEPLOYMENT_LEVELS",
    "SYS_KINDS",
    "DEFAULT_PRIORS",
    "FIELDS",
    "BACKENDS",
    "DEFAULT_BACKEND",
    "DEFAULT_SAMPLER",
    "VERSIONED_LIBRARIES",
    "MAX_SAVED_DRAWS",
    "OFFSET_PREFIXES",
    "HELPER_VARS",
    "RUN_SPREAD",
    # building and fitting
    "check_obs",
    "build_model",
    "available_backends",
    "data_groups",
    "fit",
    "sampler_health",
    "blas_note",
    "raw_rows",
    "library_versions",
    "data_hash",
    # spread stages and draws
    "attach_deployment_spread",
    "attach_run_spread",
    "estimate_deployment_spread",
    "deployment_residuals",
    "run_residuals",
    "deployment_spread_draws",
    "run_spread_draws",
    "run_update_factors",
    "update_weights",
    "trained_deployment",
    # posterior draws and predictions
    "CoefDraws",
    "coefficient_draws",
    "predict_mean",
    "noise_terms",
    "posterior_predictive",
    # files
    "DEFAULT_MODEL",
    "save",
    "load",
    "load_default",
    "load_or_default",
    "attr_json",
    "put_group",
    # synthetic data
    "TRUE_BETA_POP",
    "TRUE_ALPHA_POP",
    "example_contexts",
    "simulate_obs",
    # helpers that transfer, tests and test fixtures use
    "_merge_priors",
    "_structure",
    "_zerosum_basis",
    "_centred_cells",
    "_deployment_groups",
    "_deployment_factors",
    "_weighted_quantile",
]
