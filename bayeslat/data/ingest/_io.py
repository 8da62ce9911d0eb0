"""Line-by-line reading (gzip detected by magic bytes), JSON record iteration, kind detection.

JSON is parsed with ``orjson`` when it is installed (3-5x faster than the stdlib on OTLP lines)
and with the stdlib ``json`` otherwise. A line orjson rejects is re-parsed with the stdlib, so the
accepted inputs (``NaN``, ``1e400``, ...) and the error messages in the report are the stdlib's
whichever parser is installed; a string with an unpaired surrogate (``"\\ud800"``) is rejected by
both (it is not valid Unicode: no table can hold it).

One exception: orjson (3.13) reads an integer literal beyond the 64-bit range (below -2**63 or
from 2**64) as a float where the stdlib reads an int. No documented field is such a literal (OTLP
integers are strings), but a value of that kind may then be read differently (e.g. -2**63-1 as
the float -2**63, in range). Detecting those literals before orjson would cost about a third of
the parse time of a trace line (a regular-expression scan).
"""

from __future__ import annotations

import gzip
import io
import json
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

from .report import IngestReport

GZIP_MAGIC = b"\x1f\x8b"
DOC_MODE_MAX_BYTES = 256 << 20  # a pretty-printed (multi-line) JSON document is read whole up to this size
READ_BUFFER = 1 << 20  # bytes of read buffer of open_binary
# what reading a file can raise when it cannot be read (to the end): I/O errors, a gzip stream
# that is cut (EOFError) or damaged (zlib.error, gzip.BadGzipFile is an OSError)
UNREADABLE = (OSError, EOFError, zlib.error)
# a surrogate code point, escaped (\ud800) or as raw (CESU-8) bytes: the stdlib's json reads it into
# a str that is not valid Unicode (no table can hold it); orjson rejects it
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}|\xed[\xa0-\xbf]")


def _lone_surrogate(obj) -> bool:
    """``obj`` (parsed JSON) holds a string (value or key) with an unpaired surrogate."""
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, str):
            try:
                o.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(o, dict):
            stack.extend(o)
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)
    return False


def _std_loads(raw):
    """The stdlib's ``json.loads``, but a text with an unpaired surrogate (``"\\ud800"``) is a
    ``ValueError`` as it is for orjson (and as invalid UTF-8 bytes are): a string that is not
    valid Unicode cannot be written to a table. The scan runs on the lines orjson rejected only
    (all lines without orjson)."""
    obj = json.loads(raw)
    b = raw if isinstance(raw, (bytes, bytearray)) else raw.encode("utf-8", "surrogatepass")
    # (json.loads reads bytes that start with a NUL or a UTF-16/32 byte-order mark as UTF-16/32)
    if (_SURROGATE.search(b) or 0 in b[:4] or b[:1] in (b"\xff", b"\xfe")) and _lone_surrogate(obj):
        raise ValueError("a string holds an unpaired surrogate (\\ud800-\\udfff): not valid Unicode text")
    return obj


try:  # optional accelerator; same results (see the module docstring)
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - exercised when orjson is absent
    _fast_loads = None


def _loads(raw):
    """Parse one JSON text (bytes/str): orjson first, the stdlib on any orjson error (so what
    parses and the ``ValueError`` message are the stdlib's)."""
    if _fast_loads is not None:
        try:
            return _fast_loads(raw)
        except ValueError:
            pass
    return _std_loads(raw)


def open_binary(path: str | Path) -> io.BufferedIOBase:
    """Open ``path`` for binary reading, transparently gunzipping when it starts with the gzip
    magic bytes (whatever its name). The buffer is :data:`READ_BUFFER` bytes: trace lines are
    often longer than the default 8 KiB, and a line longer than the buffer is read in pieces and
    joined (5x slower line iteration)."""
    f = open(path, "rb", buffering=READ_BUFFER)
    head = f.peek(2)[:2] if hasattr(f, "peek") else b""
    if head == GZIP_MAGIC:
        return io.BufferedReader(gzip.GzipFile(fileobj=f, mode="rb"), buffer_size=READ_BUFFER)
    return f


def head_bytes(path: str | Path, n: int = 4096) -> bytes:
    with open_binary(path) as f:
        return f.read(n)


def detect_kind(path: str | Path) -> str:
    """``otlp`` | ``kv_events`` | ``replay`` | ``ground_truth`` | ``lifecycle`` | ``experiment`` |
    ``unknown`` from the content (not the name)."""
    h = head_bytes(path, 1 << 16).lstrip()
    if not h:
        return "unknown"
    if h[:1] == b"[":
        # kv events: [ts, [events...], ...]; ground truth: [{"index": ...}, ...]
        rest = h[1:].lstrip()
        if rest[:1] == b"{":
            return "ground_truth"
        return "kv_events"
    if h[:1] == b"{":
        if b'"resourceSpans"' in h:
            return "otlp"
        if b'"requests"' in h or b'"experiment"' in h:
            return "replay"
        if b'"successes"' in h or b'"load_summary"' in h or b'"failures"' in h:
            return "lifecycle"
        return "unknown"
    if b"server:" in h or b"model:" in h:
        return "experiment"
    return "unknown"


def iter_lines(path: str | Path) -> Iterator[tuple[int, bytes, bool]]:
    """Yield (line number from 1, raw bytes, terminated-by-newline)."""
    with open_binary(path) as f:
        for i, raw in enumerate(f, 1):
            yield i, raw, raw.endswith(b"\n")


class Prepared:
    """A line already handled elsewhere (a worker process, see :mod:`.otlp`): ``res`` is its
    result; :func:`json_records` yields it in place of the parsed JSON."""

    __slots__ = ("res",)

    def __init__(self, res):
        self.res = res


def iter_raw_lines(path: str | Path) -> Iterator[tuple[int, bytes, None]]:
    """(line number from 1, raw bytes, None) of every non-blank line."""
    with open_binary(path) as f:
        lineno = 0
        for raw in f:
            lineno += 1
            if not raw or raw.isspace():  # == `not raw.strip()` without copying the line
                continue
            yield lineno, raw, None


def iter_json_records(path: str | Path, report: IngestReport, file: str) -> Iterator[tuple[int, object]]:
    """Yield (line, parsed JSON) for every non-blank line. Lines that do not parse are skipped
    (``invalid_json``, or ``truncated_line`` for an unterminated last line) and reported. A file
    whose first line is not JSON but which is one (pretty-printed) JSON document is yielded as a
    single record at line 1."""
    return json_records(path, report, file, iter_raw_lines(path))


def json_records(path: str | Path, report: IngestReport, file: str, raw_lines) -> Iterator[tuple[int, object]]:
    """:func:`iter_json_records` over ``raw_lines`` ((line, raw bytes, result) of the non-blank
    lines in order): a line whose result is not None was handled elsewhere and is yielded as
    :class:`Prepared` (it parsed as JSON there), the others are parsed here."""
    first = True
    lines = report.lines
    fast, std = _fast_loads, _std_loads
    for lineno, raw, pre in raw_lines:
        lines[file] = lineno
        if pre is not None:
            first = False
            yield lineno, Prepared(pre)
            continue
        try:
            if fast is not None:
                try:
                    obj = fast(raw)
                except ValueError:
                    obj = std(raw)
            else:
                obj = std(raw)
        except ValueError as e:
            if first and Path(path).stat().st_size <= DOC_MODE_MAX_BYTES:
                try:
                    with open_binary(path) as g:
                        doc = _loads(g.read())
                except ValueError:
                    doc = None
                if doc is not None:
                    report.note(f"{file}: read as one multi-line JSON document")
                    report.lines[file] = 1
                    yield 1, doc
                    return
            first = False
            if not raw.endswith(b"\n"):
                report.skip(
                    file, lineno, "line", "truncated_line", f"last line has no newline and is cut off ({len(raw)} bytes): {e}"
                )
            else:
                report.skip(file, lineno, "line", "invalid_json", str(e))
            continue
        first = False
        yield lineno, obj
