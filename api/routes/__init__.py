"""The API's routes, one blueprint per concern; each authenticates its requests (``api/auth.py``).

- ``tasks.py``    start, start_stream, batch, batch summary, retrieve_status, list, wait
- ``control.py``  pause, resume, cancel (one or many), inject_message
- ``events.py``   events over SSE and WebSocket
- ``artifacts.py`` step screenshots, by bearer key or signed URL
- ``tenant.py``   the caller's tenant, webhook attempts and redelivery
- ``metrics.py``  the fleet's Prometheus figures (no API key; ``LODESTAR_METRICS_TOKEN`` when set)
- ``environments.py`` the tenant's saved environments (persistent tasks): list, read, delete
- ``takeover.py`` human actions in a paused task (takeover), share links
- ``console.py``  the web console's pages (``/console``, ``/console/tasks/{id}``)
- ``trajectory.py`` a task's trajectory (the episode as one JSON record: ``shared/trajectory.py``)
"""

from __future__ import annotations

from api.routes import artifacts, console, control, environments, events, metrics, takeover, tasks, tenant, trajectory

BLUEPRINTS = (tasks.bp, control.bp, events.bp, artifacts.bp, tenant.bp, environments.bp, metrics.bp, takeover.bp,
              console.bp, trajectory.bp)
sock = events.sock
