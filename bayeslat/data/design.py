"""Reconstruction + FeatureContext -> :class:`ObsTable`, the model's design arrays: the names of
:mod:`.obs` (the table, :func:`build_obs`, :func:`concat`, :func:`subsample`, :func:`time_split`),
:mod:`.training_specs` (each run's deployment specs), :mod:`.bundled` (:func:`bundled_obs`, the real
runs bundled in :mod:`bayeslat.data.datasets`), :mod:`.experiments` (:func:`obs_from_tables`, the
Parquet tables of ``bayeslat ingest ... --out DIR``; what ``bayeslat fit --data DIR`` reads) and
:mod:`.trace_rows` (exact one-step rows from step snapshots, alpha-only rows from journey events),
in one namespace.
"""

from bayeslat.data.bundled import bundled_obs, model_class_of, reconstruct_run, skip_reason
from bayeslat.data.experiments import (
    SOURCE_PREFERENCE,
    TABLE_FILES,
    experiment_context,
    obs_from_tables,
    read_tables,
    run_obs,
    table_dirs,
)
from bayeslat.data.experiments import _lifecycle_frame as _lifecycle_frame
from bayeslat.data.experiments import _resolve_hardware as _resolve_hardware
from bayeslat.data.experiments import _resolve_model as _resolve_model
from bayeslat.data.obs import _ARRAYS as _ARRAYS
from bayeslat.data.obs import BINS, KINDS, ObsTable, build_obs, collapse, concat, effective_rows, subsample, time_split
from bayeslat.data.trace_rows import (
    ALPHA_MISS_REASONS,
    alpha_table,
    exact_step_rows,
    exact_step_table,
    idle_overlap,
    journey_alpha_misses,
    journey_alpha_rows,
    journey_idle_gaps,
    journey_offset_us,
)
from bayeslat.data.training_specs import (
    TRAINING_SPECS_FORMAT,
    bundled_spec,
    spec_record,
    training_specs_from_json,
    training_specs_json,
)

__all__ = [
    "BINS",
    "collapse",
    "effective_rows",
    "KINDS",
    "ObsTable",
    "build_obs",
    "concat",
    "subsample",
    "time_split",
    "TRAINING_SPECS_FORMAT",
    "spec_record",
    "bundled_spec",
    "training_specs_json",
    "training_specs_from_json",
    "model_class_of",
    "reconstruct_run",
    "skip_reason",
    "bundled_obs",
    "TABLE_FILES",
    "SOURCE_PREFERENCE",
    "table_dirs",
    "read_tables",
    "experiment_context",
    "run_obs",
    "obs_from_tables",
    "ALPHA_MISS_REASONS",
    "exact_step_rows",
    "exact_step_table",
    "journey_alpha_rows",
    "journey_alpha_misses",
    "alpha_table",
    "journey_offset_us",
    "journey_idle_gaps",
    "idle_overlap",
]
