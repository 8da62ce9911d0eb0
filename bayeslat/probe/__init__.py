"""Probes: a short run of a configuration, used to check and update a fit.

- :mod:`bayeslat.probe.read`: a probe (per-request files, ``bundled:`` probes, ingest directories,
  vLLM traces) read into observation rows (:func:`probe_obs`).
- :mod:`bayeslat.probe.score`: how well the fit predicts the probe's rows and a ``decision``
  (:func:`score_probe`; the rules are in that module's docstring).
- :mod:`bayeslat.probe.gate`: the fit updated with the probe (:func:`update`), where the
  decision says so.
- :mod:`bayeslat.probe.condition`: the deployment update it runs (:func:`update_deployment`) and
  the calibration of the probe's slice errors (:func:`auto_calibration`), on the Laplace /
  importance-weight engine of :mod:`bayeslat.probe.laplace`.
- :mod:`bayeslat.probe.slices` and :mod:`bayeslat.probe.calibrate`: how far a probe, one slice
  of a run, is off: the spread a fit measures, and the out-of-sample errors the shipped default's
  calibration is made from (:func:`oos_errors`, stored by :func:`attach_probe_oos`).
"""

from __future__ import annotations

from bayeslat.probe.calibrate import oos_errors, probe_slice_error, run_factor_error, whole_run_update
from bayeslat.probe.condition import (
    POOLED_PROBE_KINDS,
    PROBE_TTFT_LEVEL,
    STEP_FACTORS,
    auto_calibration,
    pool_rows,
    probe_calibration,
    probe_statistics,
    update_deployment,
)
from bayeslat.probe.gate import UPDATE_WHEN, predict_before_after, update, update_gate
from bayeslat.probe.laplace import PROBE_LEVEL_NU, PSIS_K_MAX, RUN_LEVEL_PRIOR, probe_level_weights
from bayeslat.probe.read import (
    PROBE_DESIGNS,
    PROBE_STEP_MAX_GAP,
    PROBE_TRACE_KINDS,
    PROBE_WARMUP,
    bundled_probe,
    probe_design_of,
    probe_obs,
    read_probe,
)
from bayeslat.probe.score import (
    DECISIONS,
    PROBE_LEVEL_DEFAULT,
    PROBE_REFIT_COVERAGE,
    PROBE_REFIT_RATIO,
    PROBE_UPDATE_COVERAGE,
    PROBE_UPDATE_OUTLIERS,
    PROBE_UPDATE_RATIO,
    decide,
    probe_level_error,
    score_probe,
    score_rows,
)
from bayeslat.probe.slices import (
    OOS_SIZE_TOLERANCE,
    SLICE_SD_DEFAULT,
    attach_probe_oos,
    factor_sd_from,
    oos_attr,
    oos_calibration,
    slice_spread,
)

__all__ = [
    "DECISIONS",
    "OOS_SIZE_TOLERANCE",
    "POOLED_PROBE_KINDS",
    "PROBE_DESIGNS",
    "PROBE_LEVEL_DEFAULT",
    "PROBE_LEVEL_NU",
    "PROBE_REFIT_COVERAGE",
    "PROBE_REFIT_RATIO",
    "PROBE_STEP_MAX_GAP",
    "PROBE_TRACE_KINDS",
    "PROBE_TTFT_LEVEL",
    "PROBE_UPDATE_COVERAGE",
    "PROBE_UPDATE_OUTLIERS",
    "PROBE_UPDATE_RATIO",
    "PROBE_WARMUP",
    "PSIS_K_MAX",
    "RUN_LEVEL_PRIOR",
    "SLICE_SD_DEFAULT",
    "STEP_FACTORS",
    "UPDATE_WHEN",
    "attach_probe_oos",
    "auto_calibration",
    "bundled_probe",
    "decide",
    "factor_sd_from",
    "oos_attr",
    "oos_calibration",
    "oos_errors",
    "pool_rows",
    "predict_before_after",
    "probe_calibration",
    "probe_design_of",
    "probe_level_error",
    "probe_level_weights",
    "probe_obs",
    "probe_slice_error",
    "probe_statistics",
    "read_probe",
    "run_factor_error",
    "score_probe",
    "score_rows",
    "slice_spread",
    "update",
    "update_deployment",
    "update_gate",
    "whole_run_update",
]
