"""Small shared utilities (the layer below models/tuners/engines: it imports none of them)."""

from __future__ import annotations

from medsam_peft.utils.atomic_io import (
    atomic_torch_save,
    atomic_write_bytes,
    remove_stale_temporaries,
    write_json_atomic,
)
from medsam_peft.utils.cpu_allocator import CPU_ALLOCATORS, configure_cpu_allocator, keep_freed_cpu_memory
from medsam_peft.utils.distributed import (
    close_distributed,
    init_distributed,
    is_main_process,
    local_device,
    main_process_first,
    rank,
    seed_this_rank,
    world_size,
)
from medsam_peft.utils.precision import PRECISIONS, resolve_precision
from medsam_peft.utils.run_lock import lock_output_dir, release_output_dir

__all__ = [
    "CPU_ALLOCATORS", "PRECISIONS", "atomic_torch_save", "atomic_write_bytes", "close_distributed", "configure_cpu_allocator",
    "init_distributed", "is_main_process", "keep_freed_cpu_memory", "local_device", "main_process_first", "rank",
    "seed_this_rank", "world_size", "lock_output_dir", "release_output_dir", "remove_stale_temporaries", "resolve_precision", "write_json_atomic",
]
