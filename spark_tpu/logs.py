"""Logging for the command lines: the terminal gets this project's warnings and every error;
everything else (the libraries' INFO lines and their warnings) goes to a log file."""

from __future__ import annotations

import logging as std_logging
import logging.handlers as std_handlers
import os

from absl import logging

# Records logged from files under these folders are "ours".
OURS = tuple(os.sep + name + os.sep for name in ("spark_tpu", "launch_tpu", "experiments"))


class TerminalFilter(std_logging.Filter):
    """Passes errors, and warnings logged by this project's own code."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        if record.levelno >= std_logging.ERROR:
            return True
        return record.levelno >= std_logging.WARNING and any(p in record.pathname for p in OURS)


def quiet_terminal(keep: bool = True) -> std_handlers.MemoryHandler | None:
    """Filters absl's terminal handler with `TerminalFilter`.

    Args:
      keep: hold every record from now on in memory, for `to_file` to write out later.

    Returns:
      The memory buffer (None without ``keep``).
    """
    logging.get_absl_handler().addFilter(TerminalFilter())
    if not keep:
        return None
    buffer = std_handlers.MemoryHandler(capacity=1 << 20, flushLevel=std_logging.CRITICAL + 1)
    std_logging.getLogger().addHandler(buffer)
    return buffer


def to_file(path: str, buffer: std_handlers.MemoryHandler | None = None) -> None:
    """Appends every record to ``path`` from now on, starting with those ``buffer`` held."""
    handler = std_logging.FileHandler(path, mode="a")
    handler.setFormatter(logging.PythonFormatter())
    root = std_logging.getLogger()
    if buffer is not None:
        buffer.setTarget(handler)
        buffer.flush()
        root.removeHandler(buffer)
        buffer.close()
    root.addHandler(handler)
