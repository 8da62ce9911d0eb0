"""The ingest report: every record read is counted as kept or skipped (with a reason).

Record kinds are per file: ``line`` (a physical line / JSON document), span names
(``llm_request``, ``llm_core``, ``scheduler_steps_N``), event names (``journey.SCHEDULED``,
``step.BATCH_SUMMARY``, ``BlockStored``, ...) and ``request`` (a replay request). Skip reasons:

- ``invalid_json``: a line is not JSON; ``truncated_line``: the file's last line has no newline
  and does not parse (a cut-off write);
- ``missing_attribute``: a required attribute/field is absent; ``bad_value``: it has the wrong
  type or an unparsable value;
- ``negative_timestamp``; ``reversed_timestamp``: an event's time is before the previous event of
  the same span, or a step ends before it starts;
- ``unknown_event`` / ``unknown_span`` / ``unknown_scope`` / ``unknown_record``;
- ``duplicate``: a repeated transfer event (same kind + transfer id), a second ``llm_core`` span
  for the same request, a second ``llm_request`` span with the same spanId (a re-export).

Each skip is an :class:`bayeslat.errors.IngestError` (``file:line: field: message``); the first
``MAX_EXAMPLES`` per reason are kept as examples. ``notes`` holds facts that are not skips
(e.g. journey requests without a core span).
"""

from __future__ import annotations

import json
from collections import defaultdict

from bayeslat.errors import IngestError

MAX_EXAMPLES = 5


class IngestReport:
    def __init__(self) -> None:
        # file -> kind -> {"kept": n, "skipped": n}
        self.files: dict[str, dict] = {}
        self.file_kind: dict[str, str] = {}
        self.lines: dict[str, int] = defaultdict(int)
        self.skipped: dict[str, dict] = {}
        self.errors: list[str] = []  # fatal: unreadable input
        self.notes: list[str] = []
        self.tables: dict[str, int] = {}
        self.aggregates: dict[str, dict] = {}

    def _c(self, file: str, kind: str) -> dict:
        f = self.files.setdefault(file, {})
        c = f.get(kind)
        if c is None:
            c = f[kind] = {"kept": 0, "skipped": 0}
        return c

    def keep(self, file: str, kind: str, n: int = 1) -> None:
        self._c(file, kind)["kept"] += n

    def skip(self, file: str, line: int | None, kind: str, reason: str, message: str, field: str | None = None) -> IngestError:
        self._c(file, kind)["skipped"] += 1
        err = IngestError(f"{reason}: {message}", file=file, line=line, field=field)
        r = self.skipped.setdefault(reason, {"count": 0, "examples": []})
        r["count"] += 1
        if len(r["examples"]) < MAX_EXAMPLES:
            r["examples"].append(str(err))
        return err

    def error(self, file: str, message: str) -> None:
        self.errors.append(str(IngestError(message, file=file)))

    def note(self, message: str) -> None:
        self.notes.append(message)

    # -- summaries ------------------------------------------------------------------------
    def count(self, file: str | None = None, kind: str | None = None, what: str = "kept") -> int:
        tot = 0
        for f, kinds in self.files.items():
            if file is not None and f != file and not f.endswith("/" + file):
                continue
            for k, c in kinds.items():
                if kind is None or k == kind:
                    tot += c[what]
        return tot

    def skip_count(self, reason: str) -> int:
        return self.skipped.get(reason, {}).get("count", 0)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "files": {
                f: {"kind": self.file_kind.get(f), "lines": self.lines.get(f, 0), "records": k} for f, k in self.files.items()
            },
            "kept": self.count(what="kept"),
            "skipped_total": self.count(what="skipped"),
            "skipped": self.skipped,
            "errors": self.errors,
            "notes": self.notes,
            "tables": self.tables,
            "aggregates": self.aggregates,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, default=str)

    def format(self) -> str:
        out = [f"ingest: {self.count()} records kept, {self.count(what='skipped')} skipped, {len(self.errors)} unreadable"]
        for f, kinds in self.files.items():
            out.append(f"  {f} [{self.file_kind.get(f)}] {self.lines.get(f, 0)} lines")
            for k, c in sorted(kinds.items()):
                out.append(f"    {k:<28} kept {c['kept']:>10}  skipped {c['skipped']:>6}")
        if self.tables:
            out.append("  tables: " + ", ".join(f"{k}={v}" for k, v in self.tables.items()))
        for reason, r in sorted(self.skipped.items()):
            out.append(f"  skipped {reason}: {r['count']}")
            out.extend(f"    {e}" for e in r["examples"])
        out.extend(f"  note: {n}" for n in self.notes)
        out.extend(f"  ERROR: {e}" for e in self.errors)
        return "\n".join(out)
