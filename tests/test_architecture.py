"""The shape of the code, checked on every run: the layers, the size of modules, no import cycles, the store as the
only door to Redis, the Lua in ``.lua`` files. Read from the source with ``ast``; nothing is imported."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("api", "worker", "shared")
MAX_LINES = 500


def modules(*packages: str) -> Iterator[tuple[str, Path]]:
    """``(dotted module name, path)`` of every module of ``packages``."""
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            yield name, path


def imports_of(name: str, path: Path) -> set[str]:
    """Project modules ``name`` imports at module level or inside functions (``from x import y`` counts as x.y
    when x.y is a module, else as x)."""
    known = {n for n, _ in modules(*PACKAGES, "lodestar", "bench")}
    out: set[str] = set()
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                prefix = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{prefix}.{base}" if base else prefix
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        out |= {t for t in targets if t in known and t != name}
    return out


def test_no_module_of_the_packages_is_over_500_lines() -> None:
    long = {str(path.relative_to(ROOT)): n for _, path in modules(*PACKAGES)
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines: {long}"


def test_worker_never_imports_api_and_shared_imports_neither() -> None:
    for name, path in modules("worker", "shared"):
        wrong = {m for m in imports_of(name, path) if m.split(".")[0] in ("api", "lodestar", "bench")}
        if name.startswith("shared"):
            wrong |= {m for m in imports_of(name, path) if m.startswith("worker")}
        assert not wrong, f"{name} imports {sorted(wrong)}"


def test_there_is_no_import_cycle() -> None:
    graph = {name: imports_of(name, path) for name, path in modules(*PACKAGES)}
    # a package's __init__ that only re-exports its submodules is not part of a cycle through them
    for name in graph:
        if (ROOT / name.replace(".", "/")).is_dir():
            graph[name] = {m for m in graph[name] if not m.startswith(name + ".")}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert cycles == [], f"import cycles: {cycles}"


def test_only_the_store_talks_to_redis() -> None:
    """Outside ``shared/store`` no code reaches a Redis client (``.redis``, ``redis.Redis``, pipelines, scripts);
    importing redis-py's exception classes to handle them is fine."""
    offenders = []
    for name, path in modules(*PACKAGES):
        if name.startswith("shared.store"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("redis", "register_script", "pipeline"):
                offenders.append(f"{name}: .{node.attr}")
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "redis"
                    and not node.attr.endswith("Error")):
                offenders.append(f"{name}: redis.{node.attr}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("redis") \
                    and node.module != "redis.exceptions":
                offenders.append(f"{name}: from {node.module} import ...")
    assert offenders == []


def test_the_lua_lives_in_lua_files() -> None:
    lua = sorted(p.name for p in (ROOT / "shared" / "store" / "lua").glob("*.lua"))
    assert {"apply.lua", "claim.lua", "common.lua"} <= set(lua)
    for _, path in modules(*PACKAGES, "lodestar", "bench"):
        assert "redis.call(" not in path.read_text(), f"Lua source in {path}"
