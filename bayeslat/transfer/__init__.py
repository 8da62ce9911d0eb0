"""Transfer checks: will a fitted posterior predict a configuration it was not fit on?

- :func:`check` (:mod:`bayeslat.transfer.verdict`, before any data of the configuration exists):
  which hierarchy levels are new, how far the configuration's features are from the training
  deployments, how wide the posterior predictive intervals are, and a ``verdict`` with
  ``reasons`` (the rules are in that module's docstring).
- :mod:`bayeslat.transfer.distance`: the configuration- and workload-level feature distances the
  check measures.
- The training deployments it compares with (:func:`training_specs`,
  :func:`training_deployments`, :func:`attach_training_specs`) are read from the fit
  (:mod:`bayeslat.model.training`).

After a short probe run of the configuration, :mod:`bayeslat.probe` scores the probe against the
fit (``score_probe``) and conditions the fit on it (``update``).
"""

from __future__ import annotations

from bayeslat.model.training import TrainedDeployment, attach_training_specs, training_deployments, training_specs
from bayeslat.transfer.distance import (
    NEVER_TRAINED,
    canonical_batches,
    config_distance,
    smooth_steps,
    smoothing_steps,
    training_reference_steps,
    training_step_features,
    workload_distance,
)
from bayeslat.transfer.verdict import (
    EXTRAP_FEATURE_RATIO,
    EXTRAP_WORKLOAD_FRAC,
    OOD_E2E_REL_WIDTH,
    OOD_FEATURE_RATIO,
    SCORE_VERDICT_FLOOR,
    SENSITIVITY_LIMIT,
    SENSITIVITY_STEP,
    VERDICTS,
    check,
    load_sensitivity,
    score_of,
)

__all__ = [
    "EXTRAP_FEATURE_RATIO",
    "EXTRAP_WORKLOAD_FRAC",
    "NEVER_TRAINED",
    "OOD_E2E_REL_WIDTH",
    "OOD_FEATURE_RATIO",
    "SCORE_VERDICT_FLOOR",
    "SENSITIVITY_LIMIT",
    "SENSITIVITY_STEP",
    "VERDICTS",
    "TrainedDeployment",
    "attach_training_specs",
    "canonical_batches",
    "check",
    "config_distance",
    "load_sensitivity",
    "score_of",
    "smooth_steps",
    "smoothing_steps",
    "training_deployments",
    "training_reference_steps",
    "training_specs",
    "training_step_features",
    "workload_distance",
]
