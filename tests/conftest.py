"""Shared test fixtures."""

from __future__ import annotations

import pytest


class FitCalled(Exception):
    """Raised by the :func:`fit_calls` stand-in of ``model.fit``: sampling never starts."""


@pytest.fixture
def fit_calls(monkeypatch):
    """Replace ``bayeslat.model.fit`` by a stand-in that records its keyword arguments in the
    returned dict and raises :class:`FitCalled`: what a command would fit with, without sampling."""
    from bayeslat import model as M

    seen: dict = {}

    def fake_fit(obs, **kw):
        seen.update(kw)
        raise FitCalled

    monkeypatch.setattr(M, "fit", fake_fit)
    return seen
