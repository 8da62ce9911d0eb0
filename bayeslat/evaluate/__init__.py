"""Run-level validation against real runs: predicted mean / p90 / p99 TTFT, ITL and E2E vs observed.

:mod:`~bayeslat.evaluate.cases` builds the runs to predict, :mod:`~bayeslat.evaluate.metrics` scores
them, :mod:`~bayeslat.evaluate.crossval` refits without held-out runs, :mod:`~bayeslat.evaluate.suites`
runs a suite (:func:`validate`).

Suites
------
``replay``     the 16 per-request runs, replaying their real arrivals and prompt lengths.
``aggregate``  the 11 aggregate-only runs of ``trainval15`` (new models, TP 1/2/4, budgets
               1024/2048/8192, FP8 MoE, CPU offload configured), generated from their
               inference-perf profiles (their arrivals are not public).
``all``        both.
``external``   real runs that are not bundled (``--external PATH...``): a trainval-format JSON or
               inference-perf experiment directories (:func:`external_cases`).
``loro`` / ``lomo`` / ``lowo``  cross-validation on the replay runs: leave one run / model /
               workload out, refit the model on the rest, predict the held-out runs.

Metric definitions (say which): TTFT and E2E are means over successful requests; ITL is the
per-request ``(E2E - TTFT) / (output_tokens - 1)`` with the server's output count (repaired,
see :mod:`bayeslat.data.datasets`), averaged over requests. For aggregate-only runs the observed
``itl_mean`` was computed by the source with the client's re-tokenised counts, which inflates it
(e.g. 10.58 ms recorded vs 8.35 ms true on Llama-2-7B codegen); it is reported but flagged
``itl_definition = "client"`` and left out of the ITL medians.
"""

from __future__ import annotations

from bayeslat.evaluate.cases import external_cases
from bayeslat.evaluate.crossval import cv_fit, cv_fit_path, cv_rows, drop_unused_levels
from bayeslat.evaluate.metrics import METRICS, compare, interval_score, summarize
from bayeslat.evaluate.suites import SUITES, validate
from bayeslat.simulate.discrepancy import (
    SIM_DISCREPANCY,
    SIM_DISCREPANCY_DRAWS,
    attach_sim_discrepancy,
    discrepancy_sd,
    sim_discrepancy,
)
from bayeslat.simulate.replay import predict_case, replay_cases
from bayeslat.simulate.rundeployment import RunDeployment, deployment

__all__ = [
    "METRICS",
    "SIM_DISCREPANCY",
    "SIM_DISCREPANCY_DRAWS",
    "SUITES",
    "RunDeployment",
    "replay_cases",
    "attach_sim_discrepancy",
    "compare",
    "cv_fit",
    "cv_rows",
    "cv_fit_path",
    "deployment",
    "discrepancy_sd",
    "drop_unused_levels",
    "external_cases",
    "interval_score",
    "predict_case",
    "sim_discrepancy",
    "summarize",
    "validate",
]
