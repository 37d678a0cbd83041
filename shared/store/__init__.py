"""The task store: the only code that talks to Redis for task state.

- ``core.py``      ``TaskStore``: records, guarded status changes, events, screenshots, inbox, leases
- ``keys.py``      every key and channel name
- ``lua/``         the atomic scripts (status changes, claims, control), loaded once by ``scripts.py``
- ``listing.py``   listing a tenant's tasks from its indexes; batch summaries
- ``submit.py``    idempotency keys; records and their Celery messages in one MULTI/EXEC
- ``tenants.py``   stored API keys and tenant settings
- ``recovery.py``  requeues (a lost worker, a hand-back), resumes, the dispatch outbox, the reaper lock
- ``deliveries.py`` the webhook outbox
- ``budgets.py``   what model calls cost as they return; task, batch and daily budgets
- ``ratelimits.py`` model providers' rpm / tpm windows and retry-after blocks, shared by every worker
- ``queueinfo.py`` queue positions, wait reasons, workers' heartbeats by kind
- ``takeover.py``  human actions for the workers of paused tasks (the console's takeover)
- ``artifacts.py`` the Redis backend of the artifact store (``shared/artifacts.py``) and the choice of backend
- ``environments.py`` saved environments of ``persistent`` tasks (records here, blobs in the artifact store)
"""

from shared.store.budgets import BudgetState
from shared.store.core import ApplyResult, LeaseLost, TaskStore, new_id, new_task_id, now, now_ms
from shared.store.deliveries import Delivery
from shared.store.listing import TaskFilter
from shared.store.recovery import Requeue
from shared.store.submit import IN_PROGRESS, InProgress

__all__ = ["IN_PROGRESS", "ApplyResult", "BudgetState", "Delivery", "InProgress", "LeaseLost", "Requeue",
           "TaskFilter", "TaskStore", "new_id", "new_task_id", "now", "now_ms"]
