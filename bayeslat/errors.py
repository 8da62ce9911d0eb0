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


def read_text(path, cls: type[BayeslatError] = SpecError, prefix: str = "") -> str:
    """The text of an input file; a binary or unreadable file is a ``cls`` error naming it (the
    message after ``prefix``, e.g. "cannot read experiment YAML: ")."""
    from pathlib import Path

    try:
        return Path(path).read_text()
    except UnicodeDecodeError:
        raise cls(f"{prefix}not a text file (binary content)", file=str(path)) from None
    except OSError as e:
        raise cls(f"{prefix or 'unreadable: '}{e.strerror or e}", file=str(path)) from None


def read_yaml(path, cls: type[BayeslatError] = SpecError, prefix: str = ""):
    """The YAML document of an input file (:func:`read_text`); malformed YAML is :func:`yaml_error`."""
    import yaml

    text = read_text(path, cls, prefix)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise yaml_error(e, str(path), cls=cls) from None
