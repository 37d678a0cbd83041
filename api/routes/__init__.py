"""The API's routes, one blueprint per concern; each authenticates its requests (``api/auth.py``).

- ``tasks.py``    start, start_stream, batch, batch summary, retrieve_status, list, wait
- ``control.py``  pause, resume, cancel (one or many), inject_message
- ``events.py``   events over SSE and WebSocket
- ``artifacts.py`` step screenshots, by bearer key or signed URL
- ``tenant.py``   the caller's tenant, webhook attempts and redelivery
- ``trajectory.py`` a task's trajectory (the episode as one JSON record: ``shared/trajectory.py``)
"""

from __future__ import annotations

from api.routes import artifacts, control, events, tasks, tenant, trajectory

BLUEPRINTS = (tasks.bp, control.bp, events.bp, artifacts.bp, tenant.bp, trajectory.bp)
sock = events.sock
