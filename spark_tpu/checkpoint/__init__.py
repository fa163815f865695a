"""Orbax checkpoint and resume of whole runs (DESIGN layer 9)."""

from ._manager import STATE_FLAGS as STATE_FLAGS
from ._manager import CheckpointHooks as CheckpointHooks
from ._manager import run_with_checkpoints as run_with_checkpoints
