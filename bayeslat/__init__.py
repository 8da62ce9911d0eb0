"""bayeslat: hierarchical Bayesian latency models for vLLM serving, learned from vLLM's traces.

Data flows one way, each layer importing only the ones before it::

    config -> features -> deployment -> data -> model -> simulate
           -> evaluate -> probe -> transfer -> pipeline -> export -> cli

The public API is the eight functions in ``__all__``; each is loaded on first use, so ``import
bayeslat`` stays cheap (PyMC is imported only by a fit).

- :func:`fit` / :func:`calibrate`: the fit pipeline (:mod:`bayeslat.pipeline`).
- :func:`load` / :func:`save`: a fitted posterior (netCDF).
- :func:`predict`: posterior predictive TTFT, ITL and E2E of a workload on a deployment.
- :func:`check`: is a configuration in the fit's distribution (:mod:`bayeslat.transfer`).
- :func:`update`: condition a fit on a short probe run (:mod:`bayeslat.probe`).
- :func:`validate`: accuracy against real runs (:mod:`bayeslat.evaluate`).
"""

from __future__ import annotations

import importlib

from bayeslat._version import __version__

#: public name -> (module, attribute)
_API = {
    "fit": ("bayeslat.pipeline", "fit"),
    "calibrate": ("bayeslat.pipeline", "calibrate"),
    "predict": ("bayeslat.pipeline", "predict"),
    "load": ("bayeslat.model", "load"),
    "save": ("bayeslat.model", "save"),
    "check": ("bayeslat.transfer", "check"),
    "update": ("bayeslat.probe", "update"),
    "validate": ("bayeslat.evaluate", "validate"),
}

__all__ = ["__version__", "calibrate", "check", "fit", "load", "predict", "save", "update", "validate"]


def __getattr__(name):
    if name in _API:
        module, attr = _API[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'bayeslat' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
