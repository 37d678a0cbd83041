"""The ``heuristic`` offline agent: a rule-based reader of plain-English instructions, grounded in the ARIA snapshot.

An honest baseline, not AI. Its modules, each importing only modules listed before it:

- ``aria.py``: Playwright's ARIA snapshot parsed into an outline of nodes, and queries on it;
- ``instructions.py``: the grammar: plain English -> intents (click X, type V into F, select items, focus, keys);
- ``reading.py``: values read off the outline (a word of a paragraph, a field's text, a table's cell);
- ``widgets.py``: widgets operated as a user does (date and time fields, spinners, list boxes, date pickers);
- ``grounding.py``: intents -> ``Action`` s with ``Target`` s on the current outline;
- ``miniwob.py``: what only MiniWoB++ pages need (the START cover, the shown reward, the instruction on the page);
- ``policy.py``: :class:`HeuristicPolicy`, the agent that uses them step by step.

Which ARIA roles are clickable or fields is the table in ``worker/computer.py``, shared with the browser.
"""

from __future__ import annotations

from worker.heuristic.policy import HeuristicPolicy

__all__ = ["HeuristicPolicy"]
