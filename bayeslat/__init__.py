"""bayeslat: hierarchical Bayesian latency models for vLLM serving, learned from vLLM's traces.

Data flows one way: traces -> tables (``ingest``, ``datasets``) -> features (``specs``,
``features``, ``reconstruct``) -> posterior (``model``) -> coefficients / predictions / checks
(``export``, ``latency``, ``simulate``, ``validate``, ``transfer``). Heavy modules (PyMC) are
imported lazily: ``import bayeslat`` is cheap.
"""
from __future__ import annotations

from bayeslat._version import __version__


def __getattr__(name):  # lazy public API
    if name == "fit":
        from bayeslat.model import fit

        return fit
    raise AttributeError(name)
