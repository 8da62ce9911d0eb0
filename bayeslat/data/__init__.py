"""The data layer: trace ingestion, the bundled real runs, lifecycle reconstruction, workloads and
the ObsTable the model is fitted to. The bundled data files (Parquet, JSON) live beside these modules.

- :mod:`~bayeslat.data.ingest`: trace files -> validated tables (``bayeslat ingest``);
- :mod:`~bayeslat.data.datasets`: the real vLLM measurements bundled with bayeslat;
- :mod:`~bayeslat.data.reconstruct`: per-request lifecycles -> the step clock and observation windows;
- :mod:`~bayeslat.data.workload`: request streams for the simulator;
- :mod:`~bayeslat.data.obs`: the :class:`~bayeslat.data.obs.ObsTable` (the model's design arrays);
- :mod:`~bayeslat.data.training_specs`: each run's deployment specs and their JSON form;
- :mod:`~bayeslat.data.bundled`: the bundled runs as an ObsTable (:func:`~bayeslat.data.bundled.bundled_obs`);
- :mod:`~bayeslat.data.experiments`: ingested runs as an ObsTable (:func:`~bayeslat.data.experiments.obs_from_tables`);
- :mod:`~bayeslat.data.trace_rows`: exact step rows and alpha rows straight from traced tables;
- :mod:`~bayeslat.data.design`: the names of the last five in one namespace.

The modules are imported on use (``from bayeslat.data import design``), so that reading traces
does not load the feature kernels.
"""

__all__ = [
    "bundled",
    "datasets",
    "design",
    "experiments",
    "ingest",
    "obs",
    "reconstruct",
    "trace_rows",
    "training_specs",
    "workload",
]
