"""Discrete-event simulation of one vLLM v1 instance and its posterior predictive.

- :mod:`~bayeslat.simulate.kernel`: the numba engine loop (what one step does);
- :mod:`~bayeslat.simulate.engine`: :func:`simulate`, one run under one set of coefficients;
- :mod:`~bayeslat.simulate.predictive`: :func:`posterior_predictive`, one run per coefficient draw;
- :mod:`~bayeslat.simulate.rundeployment`: a run's deployment as the simulator takes it;
- :mod:`~bayeslat.simulate.replay`: the bundled runs as cases, and their predictive under a fit;
- :mod:`~bayeslat.simulate.extrapolation`: how far a workload lies from the training rows, and the
  step-time discrepancy that widens its predictions with that distance;
- :mod:`~bayeslat.simulate.discrepancy`: the simulator's run-level error on a fit's training runs;
- :mod:`~bayeslat.simulate.spec`: SPEC files (a deployment and a workload to predict).
"""

from __future__ import annotations

from bayeslat.model import DEFAULT_MODEL
from bayeslat.simulate.discrepancy import (
    SIM_DISCREPANCY,
    SIM_DISCREPANCY_DRAWS,
    attach_sim_discrepancy,
    discrepancy_sd,
    sim_discrepancy,
)
from bayeslat.simulate.engine import METRICS, TRACE_COLUMNS, SimResult, discrepancy_key, simulate
from bayeslat.simulate.kernel import COUNTERS, ST_DONE, ST_FAILED
from bayeslat.simulate.predictive import NEW_LEVEL_DRAWS, posterior_predictive
from bayeslat.simulate.replay import predict_case, replay_cases
from bayeslat.simulate.rundeployment import RunDeployment, deployment
from bayeslat.simulate.spec import load_spec, make_spec, resolve_spec, sim_server, spec_for_run, spec_from_dict, spec_sim_server

__all__ = [
    "COUNTERS",
    "DEFAULT_MODEL",
    "METRICS",
    "NEW_LEVEL_DRAWS",
    "SIM_DISCREPANCY",
    "SIM_DISCREPANCY_DRAWS",
    "ST_DONE",
    "ST_FAILED",
    "TRACE_COLUMNS",
    "RunDeployment",
    "SimResult",
    "attach_sim_discrepancy",
    "deployment",
    "discrepancy_key",
    "discrepancy_sd",
    "load_spec",
    "make_spec",
    "posterior_predictive",
    "predict_case",
    "replay_cases",
    "resolve_spec",
    "sim_discrepancy",
    "sim_server",
    "simulate",
    "spec_for_run",
    "spec_from_dict",
    "spec_sim_server",
]
