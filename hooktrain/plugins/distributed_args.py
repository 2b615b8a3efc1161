"""Settings of multi-process training (:mod:`hooktrain.plugins.distributed`); torch-free."""

from __future__ import annotations

from hooktrain.core.settings import arg, config_group

DDP_BACKENDS = ("nccl", "gloo", "mpi")


@config_group
class DistributedArguments:
    ddp_backend: str | None = arg(
        None, "torch.distributed backend; None picks nccl on CUDA, else gloo.",
        choices=(None, *DDP_BACKENDS))
    ddp_timeout: int = arg(1800, "Seconds before collective operations time out.", gt=0)
    ddp_find_unused_parameters: bool | None = arg(
        False, "DistributedDataParallel find_unused_parameters; None means False.")
    ddp_bucket_cap_mb: int | None = arg(
        None, "DistributedDataParallel bucket_cap_mb; None uses torch's default.", ge=1)
    ddp_broadcast_buffers: bool | None = arg(
        None, "DistributedDataParallel broadcast_buffers; None uses torch's default.")
    ddp_static_graph: bool | None = arg(
        None, "DistributedDataParallel static_graph; None uses torch's default.")
    local_rank: int = arg(
        -1, "Rank of this process on its node, for launchers that pass --local_rank; the "
        "LOCAL_RANK environment variable wins.", ge=-1)
