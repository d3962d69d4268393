"""Failure reasons as users read them (a job's `error`, a model's `export_error`): what went wrong, without
what only the operator should see. The whole story (tracebacks, server paths) goes to the service log."""

from __future__ import annotations

import re

from services.common.errors import without_server_paths

# Terminal colours (Ultralytics colours its console output).
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
# The last line of a Python traceback: "TypeError: ...", "_pickle.UnpicklingError: ...".
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit)\b.*$")


def fit_for_users(message: str) -> str:
    """An exception message without colours or emojis, and without Ultralytics' hint to edit its settings
    file, which is not theirs to edit."""
    text = ANSI_ESCAPE.sub("", message).replace("❌", "").replace("⚠️", "").replace("\ufe0f", "")
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in text.splitlines()]
    return "\n".join(line for line in lines if line and not line.startswith("Note dataset download directory"))


def last_exception(output: str) -> str | None:
    """The exception a Python process died of, from its output (the last line of its traceback), fit for
    users and without server paths; None if the output has no traceback."""
    lines = [line.strip() for line in output.splitlines()]
    found = next((line for line in reversed(lines) if _EXCEPTION_LINE.match(line)), None)
    if found is None:
        return None
    # Ultralytics starts its own messages with a level ("TypeError: ERROR ❌️ ..."): the type says it already.
    return without_server_paths(re.sub(r": (?:ERROR|WARNING) ", ": ", fit_for_users(found)))
