"""The one work engine for all long work of the mesh: durable items in each service's own database, claimed
under leases by the workers of any replica, with one status vocabulary, one retry policy, stop, resume and
delete, and bounded queues (items.py: the rows; queue.py: every change of a row; workers.py: running them)."""

from services.common.work.items import FINISHED, WorkItem, WorkItemColumns, WorkStatus
from services.common.work.queue import QueueFull, WorkQueue, replica_name
from services.common.work.workers import Failed, Retry, Stopped, WorkContext, WorkerPool, WorkKind, describe_failure

__all__ = [
    "FINISHED",
    "Failed",
    "QueueFull",
    "Retry",
    "Stopped",
    "WorkContext",
    "WorkItem",
    "WorkItemColumns",
    "WorkKind",
    "WorkQueue",
    "WorkStatus",
    "WorkerPool",
    "describe_failure",
    "replica_name",
]
