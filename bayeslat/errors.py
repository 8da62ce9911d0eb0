"""Errors raised on bad input. Each names the file, the line (where there is one) and the field."""
from __future__ import annotations


class BayeslatError(ValueError):
    """Base class: ``str(err)`` reads ``file:line: field: message``."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None, field: str | None = None):
        self.file, self.line, self.field, self.reason = file, line, field, message
        where = ""
        if file is not None:
            where = f"{file}:{line}: " if line is not None else f"{file}: "
        if field is not None:
            where += f"{field}: "
        super().__init__(where + message)


class SpecError(BayeslatError):
    """A model config, datasheet or server config is malformed or inconsistent."""


class IngestError(BayeslatError):
    """A trace or per-request record is malformed."""
