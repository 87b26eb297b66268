"""Dataset-scale runs: sharded across `torchrun` processes, resumable from chunk files."""

from rrm_plugin.runs.chunks import ChunkStore, run_key
from rrm_plugin.runs.distributed import Distributed, init_distributed, shutdown_distributed
from rrm_plugin.runs.sharded import ShardedRun, active_run, concat, map_batches, sharded

__all__ = [
    "ChunkStore", "Distributed", "ShardedRun", "active_run", "concat", "init_distributed",
    "map_batches", "run_key", "sharded", "shutdown_distributed",
]
