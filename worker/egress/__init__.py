"""The egress filter: every request of an agent's browser, and of a desktop's programs, goes through a proxy in the
worker process that checks it and connects to the address it checked.

- ``rules.py``   what may go out: the deployment's :class:`EgressPolicy`, a task's :class:`EgressRules`, refusals
- ``gate.py``    :class:`Gate`: one port of the proxy with the rules in force for it, switched per task
- ``server.py``  :class:`EgressProxy`: proxy.py's HTTP proxy in this process, with the plugin that applies a gate's
                 rules; the Chromium flags and environment variables that point programs at a gate
"""

from worker.egress.gate import Gate
from worker.egress.rules import EgressPolicy, EgressRules, Refusal, Verdict, rules_for
from worker.egress.server import EgressProxy, chromium_proxy_args, process_proxy, proxy_env

__all__ = ["EgressPolicy", "EgressProxy", "EgressRules", "Gate", "Refusal", "Verdict", "chromium_proxy_args",
           "process_proxy", "proxy_env", "rules_for"]
