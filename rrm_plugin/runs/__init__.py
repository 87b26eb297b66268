"""Dataset-scale runs: sharded across `torchrun` processes, resumable from chunk files.

Names load on first use, so the light `rrm_plugin.runs.lock` imports no torch. The context
manager `sharded` is imported from its module, `rrm_plugin.runs.sharded` (once that module is
loaded, the package attribute of the same name is the module).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ChunkStore": "chunks", "run_key": "chunks",
    "Distributed": "distributed", "init_distributed": "distributed",
    "shutdown_distributed": "distributed",
    "ShardedRun": "sharded", "active_run": "sharded", "concat": "sharded",
    "map_batches": "sharded",
    "OutputInUseError": "lock", "output_lock": "lock",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
