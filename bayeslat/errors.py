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


def yaml_error(err: Exception, file: str, cls: type[BayeslatError] = SpecError, field: str | None = None) -> BayeslatError:
    """The one-line error of a YAML parse failure ``err`` (PyYAML's own message spans several lines,
    with a copy of the offending line): its problem, and where it was found."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or (str(err).strip().splitlines() or ["unparsable"])[0]
    context = getattr(err, "context", None)
    msg = f"invalid YAML: {problem}" + (f" ({context})" if context else "") + (f", column {mark.column + 1}" if mark else "")
    return cls(msg, file=file, line=mark.line + 1 if mark else None, field=field)
