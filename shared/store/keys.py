"""Every Redis key and channel name Lodestar uses, built in one place (as rq's ``keys.py`` does).

``P`` is ``Settings.key_prefix`` ("lodestar" by default), so several deployments can share one server::

    P:task:{id}              hash    the task record (``shared.task.Task``; its id is the end of the key), plus
                                     ``msgkey:<sha256>`` fields: the event seq of each message injected with an
                                     ``Idempotency-Key`` (``message_key_field``)
    P:task:{id}:events       stream  the event log; entry ids are "0-<seq>", seq = 1, 2, 3 ... Each entry is also
                             published on the pub/sub channel of the same name as "<seq> <json>" (``api/fanout.py``)
    P:task:{id}:inbox        list    injected messages, JSON {"content", "ts"}, oldest first
    P:task:{id}:actions      list    human actions for the worker of a paused task, JSON {"id", "action"}
                                     (``shared/store/takeover.py``)
    P:task:{id}:shots        hash    the task's artifacts in Redis (``shared/store/artifacts.py``): step number -> JPEG
                                     bytes, other artifacts by name (empty with an S3 artifact store); a saved
                                     environment's blob is in P:task:{environment id}:shots the same way
    P:task:{id}:lease        string  id of the worker holding the task (PX = lease_ttl)
    P:task:{id}:webhooks     list    webhook delivery attempts, JSON, oldest first
    P:t:{tenant}:status:{s}  zset    the tenant's task ids in status s, scored by created_at; likewise
                                     :meta:{key}={value} and :batch:{id} (list indexes; expired ids pruned lazily)
    P:t:{tenant}:deferred    list    queued task ids waiting for the tenant's running limit
    P:t:{tenant}:environments zset   the tenant's saved environments, scored by their last save or take (epoch s)
    P:env:{id}               hash    a saved environment (``shared/store/environments.py``): tenant, kind, times,
                                     size_bytes, source_task_id, artifact (its blob's name in the artifact store,
                                     owner: the environment's id), in_use_by / in_use_since (the task holding it)
    P:tenant:{tenant}        hash    tenant settings (name, max_queued, max_running, rate_limit, webhook_secret...)
    P:apikey:{sha256}        hash    a stored API key (tenant, name, key_id, created_at, revoked)
    P:apikeys                set     the digests of every stored key
    P:idempotency:{tenant}:{sha256 of the key}  string  the task id an idempotency key created (TTL: the window)
    P:ratelimit              prefix  the ``limits`` library's moving windows
    P:leases                 zset    task id -> expiry of its worker's lease (ms since the epoch): what the reaper
                                     looks through for tasks whose worker was lost
    P:dispatch               zset    task id -> when (ms) a run message for it is due: the outbox of queued tasks
                                     whose message has not been sent yet (requeued, resumed, released)
    P:deliveries             zset    delivery id -> when (ms) the webhook delivery is due (or its sender's claim ends)
    P:delivery:{id}          hash    one webhook delivery: task_id, tenant, event, attempt (the next one)
    P:reaper                 string  the reaper lock: id of the worker running reaper rounds (PX)
    P:deferring              set     tenants that have deferred tasks (the reaper releases them)
    P:queue:{kind}           zset    queued task ids of a kind in the order they start (the broker's: priority,
                                     then created_at; ``queueinfo.queue_score``), deferred tasks left out: what
                                     ``queue_position`` is read from
    P:alive:{kind}           string  a worker of that kind answered recently (set by every worker's reaper thread)
    P:batch:{id}             hash    a batch's budget: max_cost_usd, spent (USD)
    P:t:{tenant}:spent:{day} string  USD the tenant's model calls cost on that UTC day ("2026-11-28")
    P:limit:{scope}:blocked  string  ms since the epoch until which a provider asked (retry-after) not to be called
    P:limit                  prefix  the ``limits`` library's windows of the providers' rpm / tpm
    P:url_signing_key        string  the URL signing key generated when ``LODESTAR_URL_SIGNING_KEY`` is unset
    P:metrics                hash    the fleet-wide counters (``shared/store/metrics.py``): field = a counter's name
                                     and its label values joined by byte 31, value = its count (USD for cost)
    P:control:{id}           pub/sub notices {"command", "task_id"} for the task's worker
    P:ended                  pub/sub the id of every task that ends (long-poll waiters)
    P:hub:{host}:{pid}:{n}   pub/sub wake-ups of one API process's event hub

The Lua scripts (``shared/store/lua/``) receive the prefix and build the per-tenant names the same way
(``common.lua``); a test checks that both spell them alike.
"""

from __future__ import annotations

import hashlib


class Keys:
    """Key and channel names under one prefix. Cheap to copy; no I/O."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.ended = f"{prefix}:ended"
        self.apikeys = f"{prefix}:apikeys"
        self.ratelimit = f"{prefix}:ratelimit"
        self.leases = f"{prefix}:leases"
        self.dispatch = f"{prefix}:dispatch"
        self.deliveries = f"{prefix}:deliveries"
        self.reaper = f"{prefix}:reaper"
        self.deferring = f"{prefix}:deferring"
        self.limit_prefix = f"{prefix}:limit"
        self.url_signing_key = f"{prefix}:url_signing_key"
        self.metrics = f"{prefix}:metrics"

    # -- one task --------------------------------------------------------------------------------------------------
    def task(self, task_id: str) -> str:
        return f"{self.prefix}:task:{task_id}"

    def events(self, task_id: str) -> str:
        """The event stream, which is also the pub/sub channel of its live events."""
        return f"{self.prefix}:task:{task_id}:events"

    def inbox(self, task_id: str) -> str:
        return f"{self.prefix}:task:{task_id}:inbox"

    def actions(self, task_id: str) -> str:
        """Human actions waiting for the worker of a paused task (``shared/store/takeover.py``)."""
        return f"{self.prefix}:task:{task_id}:actions"

    def shots(self, task_id: str) -> str:
        return f"{self.prefix}:task:{task_id}:shots"

    def lease(self, task_id: str) -> str:
        return f"{self.prefix}:task:{task_id}:lease"

    def webhooks(self, task_id: str) -> str:
        return f"{self.prefix}:task:{task_id}:webhooks"

    def task_keys(self, task_id: str) -> list[str]:
        """The keys a task's scripts touch, in the order ``apply.lua`` expects: record, events, inbox, shots,
        lease, webhooks."""
        return [self.task(task_id), self.events(task_id), self.inbox(task_id), self.shots(task_id),
                self.lease(task_id), self.webhooks(task_id)]

    def delivery(self, delivery_id: str) -> str:
        return f"{self.prefix}:delivery:{delivery_id}"
    @staticmethod
    def message_key_field(key: str) -> str:
        """The field of a task's record that remembers a message injected with ``Idempotency-Key: key`` (the key is
        hashed: it is the client's string)."""
        return "msgkey:" + hashlib.sha256(key.encode()).hexdigest()

    def control(self, task_id: str) -> str:
        return f"{self.prefix}:control:{task_id}"

    # -- tenants ---------------------------------------------------------------------------------------------------
    def index(self, tenant: str, name: str, value: str | None = None) -> str:
        """A tenant's sorted set of task ids by ``created_at``: ``name`` "status" (value: the status), "batch"
        (value: the batch id) or "meta" (value: "key=value")."""
        base = f"{self.prefix}:t:{tenant}:{name}"
        return base if value is None else f"{base}:{value}"

    def environment(self, env_id: str) -> str:
        """A saved environment's record (a hash)."""
        return f"{self.prefix}:env:{env_id}"

    def environments(self, tenant: str) -> str:
        """The tenant's environments by their last save or take (a sorted set)."""
        return f"{self.prefix}:t:{tenant}:environments"

    def deferred(self, tenant: str) -> str:
        return f"{self.prefix}:t:{tenant}:deferred"

    def spent(self, tenant: str, day: str) -> str:
        """USD the tenant's model calls cost on UTC ``day`` ("YYYY-MM-DD")."""
        return f"{self.prefix}:t:{tenant}:spent:{day}"

    # -- queues, batches, providers -----------------------------------------------------------------------------------
    def queue(self, kind: str) -> str:
        return f"{self.prefix}:queue:{kind}"

    def alive(self, kind: str) -> str:
        return f"{self.prefix}:alive:{kind}"

    def batch(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}"

    def blocked(self, scope: str) -> str:
        return f"{self.prefix}:limit:{scope}:blocked"

    def tenant(self, tenant: str) -> str:
        return f"{self.prefix}:tenant:{tenant}"

    def apikey(self, digest: str) -> str:
        return f"{self.prefix}:apikey:{digest}"

    def idempotency(self, tenant: str, key: str) -> str:
        """Where an idempotency key's task id is kept (the key itself is hashed: it is the client's string)."""
        return f"{self.prefix}:idempotency:{tenant}:{hashlib.sha256(key.encode()).hexdigest()}"

    def hub(self, name: str) -> str:
        return f"{self.prefix}:hub:{name}"
