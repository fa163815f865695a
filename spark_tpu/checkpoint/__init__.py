"""Orbax checkpoint and resume of whole runs (docs/architecture.md §2, layer 9)."""

from ._manager import FREE_FLAGS as FREE_FLAGS
from ._manager import STATE_FLAGS as STATE_FLAGS
from ._manager import CheckpointHooks as CheckpointHooks
from ._manager import ResumeError as ResumeError
from ._manager import check_flags as check_flags
from ._manager import run_with_checkpoints as run_with_checkpoints
