"""The task store: the only code that talks to Redis for task state.

- ``core.py``      ``TaskStore``: records, guarded status changes, events, screenshots, inbox, leases
- ``keys.py``      every key and channel name
- ``lua/``         the atomic scripts (status changes, claims, control), loaded once by ``scripts.py``
- ``listing.py``   listing a tenant's tasks from its indexes; batch summaries
- ``submit.py``    idempotency keys; records and their Celery messages in one MULTI/EXEC
- ``tenants.py``   stored API keys and tenant settings
"""

from shared.store.core import ApplyResult, TaskStore, new_id, new_task_id, now
from shared.store.listing import TaskFilter
from shared.store.submit import IN_PROGRESS, InProgress

__all__ = ["IN_PROGRESS", "ApplyResult", "InProgress", "TaskFilter", "TaskStore", "new_id", "new_task_id", "now"]
