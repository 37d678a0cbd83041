"""Task secrets (``secrets: {"name": "value"}`` on start): values an agent types without ever seeing them.

The instruction, a script or a model's answer names a secret as ``{{name}}``; the worker puts the value in its place
only when it types (``worker/secrets.py``), and puts the placeholder back wherever a value shows up in what the
agent reads (the page's text, its title, its URL) or in what the task records (step results, errors). Values are
sealed by the API with Fernet (AES-128-CBC and HMAC-SHA256, from the ``cryptography`` library) under
``LODESTAR_SECRETS_KEY`` before they are stored, kept in the task's record only while it runs, and dropped by the
write that ends it.

A Fernet key is 32 random bytes, URL-safe base64: ``python -c "from cryptography.fernet import Fernet;
print(Fernet.generate_key().decode())"``. The API and every worker must have the same one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
"""What a secret's name may be (it is written ``{{name}}``)."""
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]{0,63})\s*\}\}")


class SecretsError(Exception):
    """Secrets could not be sealed or opened (no key, a malformed key, a key other than the one that sealed them)."""


def _fernet(key: str) -> Fernet:
    if not key:
        raise SecretsError("LODESTAR_SECRETS_KEY is not set")
    try:
        return Fernet(key.encode())
    except ValueError as exc:
        raise SecretsError(f"LODESTAR_SECRETS_KEY is not a Fernet key ({exc})") from None


def check_key(key: str) -> None:
    """Raise :class:`SecretsError` unless ``key`` is empty or a valid Fernet key (checked at start-up)."""
    if key:
        _fernet(key)


def seal(values: Mapping[str, str], key: str) -> dict[str, str]:
    """``{name: Fernet token}`` of ``values``. Raises :class:`SecretsError` without a usable key."""
    fernet = _fernet(key)
    return {name: fernet.encrypt(value.encode()).decode() for name, value in values.items()}


def unseal(sealed: Mapping[str, str], key: str) -> dict[str, str]:
    """The values of :func:`seal`'s tokens. Raises :class:`SecretsError` when ``key`` did not seal them."""
    fernet = _fernet(key)
    try:
        return {name: fernet.decrypt(token.encode()).decode() for name, token in sealed.items()}
    except InvalidToken:
        raise SecretsError("the task's secrets were sealed with another LODESTAR_SECRETS_KEY") from None


def substitute(text: str, values: Mapping[str, str]) -> str:
    """``text`` with each ``{{name}}`` of a known secret replaced by its value (unknown names are left as they are)."""
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def redact_value(value: Any, values: Mapping[str, str]) -> Any:
    """:func:`redact` through a JSON value (a structured result): every string in it, keys included."""
    if isinstance(value, str):
        return redact(value, values)
    if isinstance(value, list):
        return [redact_value(v, values) for v in value]
    if isinstance(value, dict):
        return {redact(k, values): redact_value(v, values) for k, v in value.items()}
    return value


def redact(text: str, values: Mapping[str, str]) -> str:
    """``text`` with every occurrence of a secret's value replaced by its ``{{name}}`` (longest values first)."""
    for name, value in sorted(values.items(), key=lambda item: -len(item[1])):
        if value:
            text = text.replace(value, "{{" + name + "}}")
    return text
