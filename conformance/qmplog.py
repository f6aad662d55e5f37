"""The raw record of one case's session: every QMP message, stdout text and tool run, in order.

Kept verbatim (ids and timestamps included) so that a failure can show exactly what happened;
conformance.compare.normalize turns it into the comparable form.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

EntryKind = Literal["greeting", "command", "reply", "event", "output", "tool"]


@dataclass(frozen=True)
class LogEntry:
    """One recorded item.  `message` is a JSON object for QMP kinds and text for output/tool."""

    kind: EntryKind
    message: dict[str, Any] | str


@dataclass
class QmpLog:
    """Everything a case exchanged with its target, in arrival order."""

    case: str
    entries: list[LogEntry] = field(default_factory=list)

    def add(self, kind: EntryKind, message: dict[str, Any] | str) -> None:
        if isinstance(message, dict):
            message = json.loads(json.dumps(message))  # a private deep copy of plain JSON data
        self.entries.append(LogEntry(kind, message))

    def events(self) -> list[dict[str, Any]]:
        return [entry.message for entry in self.entries if entry.kind == "event"]  # type: ignore[misc]

    def raw_text(self) -> str:
        """The unfiltered session, one item per line, for failure reports."""
        marks = {"greeting": "<=", "command": "->", "reply": "<-", "event": "<!", "output": "..",
                 "tool": "$"}
        lines = [f"raw log of {self.case}"]
        for entry in self.entries:
            body = entry.message if isinstance(entry.message, str) else json.dumps(entry.message)
            for line in body.splitlines() or [""]:
                lines.append(f"{marks[entry.kind]} {line}")
        return "\n".join(lines) + "\n"
