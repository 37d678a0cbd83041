"""Saved environments in the store (``shared/store/environments.py``, ``lua/environment.lua``) on both artifact
backends (Redis, and a real S3 endpoint): holds for one persistent task at a time, saves that replace the blob,
tenants kept apart, listing, retention and deletion; and a desktop HOME packed and unpacked
(``worker/desktop/homes.py``)."""

from __future__ import annotations

import dataclasses
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.settings import Settings
from shared.states import TERMINAL, Status
from shared.store import TaskStore, now
from shared.store.environments import HOLD_GRACE_MS
from tests.conftest import make_task

pytestmark = pytest.mark.redis

TENANT = "t_test"


@pytest.fixture(params=["redis", "s3"])
def any_store(request: pytest.FixtureRequest, settings: Settings) -> Iterator[TaskStore]:
    """A TaskStore whose artifacts (and so environments' blobs) live in Redis, or in a fresh S3 bucket."""
    url = request.getfixturevalue("s3_url") if request.param == "s3" else ""
    store = TaskStore.from_settings(dataclasses.replace(settings, artifacts_url=url, environment_max_bytes=1000))
    yield store
    store.close()


def new_env(store: TaskStore, kind: str = "browser") -> tuple[str, str]:
    """A running persistent task of TENANT and the environment made for it at its submit: (env id, task id)."""
    task_id = make_task(store, Status.RUNNING, kind=kind, persistent=True)
    env_id = f"env_{task_id[5:]}"
    assert store.environments.take(env_id, TENANT, kind, task_id, create=True).ok
    return env_id, task_id


def end(store: TaskStore, task_id: str) -> None:
    store.redis.hset(store.keys.task(task_id), "status", "completed")


def test_the_script_knows_the_terminal_statuses() -> None:
    lua = (Path(__file__).parents[2] / "shared/store/lua/environment.lua").read_text()
    for status in TERMINAL:
        assert f"{status} = true" in lua


def test_a_persistent_task_holds_its_environment_until_it_ends(any_store: TaskStore) -> None:
    store = any_store
    # Given an environment made for a running persistent task
    env_id, first = new_env(store)
    env = store.environments.get(TENANT, env_id)
    assert env is not None and (env.kind, env.in_use_by, env.saves, env.artifact, env.saved_at) == (
        "browser", first, 0, "", None)
    assert store.environments.holders([env]) == [first]
    # When a second persistent task asks for it while the first runs, then it is refused, naming the holder
    second = make_task(store, Status.QUEUED, persistent=True)
    assert (store.environments.take(env_id, TENANT, "browser", second).outcome,
            store.environments.take(env_id, TENANT, "browser", second).detail) == ("busy", first)
    # And the holder itself may take it again (a retried submit, a requeued attempt)
    assert store.environments.take(env_id, TENANT, "browser", first).ok
    # When the first ends, nothing needs to let go: the second takes it
    end(store, first)
    assert store.environments.holders([store.environments.get(TENANT, env_id)]) == [None]  # type: ignore[list-item]
    assert store.environments.take(env_id, TENANT, "browser", second).ok
    assert store.environments.get(TENANT, env_id).in_use_by == second  # type: ignore[union-attr]


def test_other_tenants_and_kinds_and_unknown_ids_are_refused(store: TaskStore) -> None:
    env_id, _ = new_env(store)
    other = make_task(store, tenant="t_other", persistent=True)
    assert store.environments.take(env_id, "t_other", "browser", other).outcome == "missing"
    assert store.environments.get("t_other", env_id) is None
    assert store.environments.delete("t_other", env_id).outcome == "missing"
    assert store.environments.take(env_id, TENANT, "desktop", other).outcome == "kind"
    assert store.environments.take(env_id, TENANT, "desktop", other).detail == "browser"
    assert store.environments.take("env_nope", TENANT, "browser", other).outcome == "missing"
    assert store.environments.get(TENANT, "env_nope") is None


def test_a_holder_still_being_stored_holds_only_within_the_grace(store: TaskStore) -> None:
    # Given an environment taken for a task whose record is not there (its submit is storing it)
    env_id = "env_grace"
    assert store.environments.take(env_id, TENANT, "browser", "task_unstored", create=True).ok
    later = make_task(store, persistent=True)
    assert store.environments.take(env_id, TENANT, "browser", later).outcome == "busy"
    # When the grace has passed (the submit failed and nobody let go), it is free
    since = int(store.redis.hget(store.keys.environment(env_id), "in_use_since") or 0)
    store.redis.hset(store.keys.environment(env_id), "in_use_since", since - HOLD_GRACE_MS - 1)
    assert store.environments.take(env_id, TENANT, "browser", later).ok


def test_letting_go_of_an_environment_made_for_a_task_that_was_not_stored_deletes_it(store: TaskStore) -> None:
    env_id, task_id = new_env(store)
    assert not store.environments.release(env_id, TENANT, "task_someone_else")
    assert store.environments.release(env_id, TENANT, task_id)
    assert store.environments.get(TENANT, env_id) is None
    assert store.environments.of_tenant(TENANT) == ([], False)


def test_a_save_replaces_the_state_and_its_blob(any_store: TaskStore) -> None:
    store = any_store
    env_id, first = new_env(store)
    env = store.environments.get(TENANT, env_id)
    assert env is not None and store.environments.state(env) is None  # nothing saved yet: a fresh start
    # When the task saves its state
    assert store.environments.save(env_id, TENANT, first, b'{"cookies": [1]}') is None
    env = store.environments.get(TENANT, env_id)
    assert env is not None and store.environments.state(env) == b'{"cookies": [1]}'
    assert (env.size_bytes, env.saves, env.source_task_id, env.artifact) == (
        16, 1, first, f"environment/state-{first}.json")
    assert env.saved_at is not None and env.expires_at is not None
    # And a later task saves over it: the record names the new blob, the old blob is gone
    end(store, first)
    second = make_task(store, Status.RUNNING, persistent=True)
    assert store.environments.take(env_id, TENANT, "browser", second).ok
    assert store.environments.save(env_id, TENANT, second, b'{"cookies": [2]}') is None
    env = store.environments.get(TENANT, env_id)
    assert env is not None and store.environments.state(env) == b'{"cookies": [2]}' and env.saves == 2
    assert store.artifacts.get(env_id, f"environment/state-{first}.json") is None


def test_a_save_is_refused_when_too_large_deleted_or_held_by_another(any_store: TaskStore) -> None:
    store = any_store
    env_id, first = new_env(store, kind="desktop")
    assert "over LODESTAR_ENVIRONMENT_MAX_BYTES (1000)" in (store.environments.save(env_id, TENANT, first,
                                                                                    b"x" * 1001) or "")
    # Another task holds it now (the first's hold ended): the first's late save writes nothing
    end(store, first)
    second = make_task(store, Status.RUNNING, kind="desktop", persistent=True)
    assert store.environments.take(env_id, TENANT, "desktop", second).ok
    assert store.environments.save(env_id, TENANT, first, b"late") == f"task {second} holds the environment now"
    assert store.artifacts.get(env_id, f"environment/home-{first}.tar.gz") is None
    # Deleted while its task ran
    store.redis.delete(store.keys.environment(env_id))
    assert store.environments.save(env_id, TENANT, second, b"x") == "the environment was deleted while the task ran"


def test_the_redis_blob_lives_as_long_as_the_record(settings: Settings) -> None:
    store = TaskStore.from_settings(dataclasses.replace(settings, environment_retention=5000))
    env_id, task_id = new_env(store)
    assert store.environments.save(env_id, TENANT, task_id, b"{}") is None
    assert 4990 <= store.redis.ttl(store.keys.environment(env_id)) <= 5000
    assert 4990 <= store.redis.ttl(store.keys.shots(env_id)) <= 5000
    # A persistent task that takes it later keeps both (it may fail and save nothing)
    store.redis.expire(store.keys.environment(env_id), 100)
    store.redis.expire(store.keys.shots(env_id), 100)
    end(store, task_id)
    later = make_task(store, Status.QUEUED, persistent=True)
    assert store.environments.take(env_id, TENANT, "browser", later).ok
    assert 4990 <= store.redis.ttl(store.keys.environment(env_id)) <= 5000
    assert 4990 <= store.redis.ttl(store.keys.shots(env_id)) <= 5000
    store.close()


def test_listing_is_per_tenant_newest_first_and_prunes_what_expired(store: TaskStore) -> None:
    # Given two browser environments and a desktop one of the tenant, and one of another tenant
    older, _ = new_env(store)
    desktop, _ = new_env(store, kind="desktop")
    newer, newer_task = new_env(store)
    store.environments.save(newer, TENANT, newer_task, b"{}")
    other = make_task(store, tenant="t_other", persistent=True)
    assert store.environments.take("env_theirs", "t_other", "browser", other, create=True).ok
    # Then the tenant sees its own, last saved or used first, filtered by kind and paged by limit
    envs, more = store.environments.of_tenant(TENANT)
    assert envs[0].environment_id == newer and {e.environment_id for e in envs} == {
        older, desktop, newer} and not more
    assert [e.environment_id for e in store.environments.of_tenant(TENANT, kind="desktop")[0]] == [desktop]
    page, more = store.environments.of_tenant(TENANT, limit=2)
    assert len(page) == 2 and more
    # And an environment whose record expired, or whose last use is older than the retention, leaves the index
    store.redis.delete(store.keys.environment(older))
    store.redis.zadd(store.keys.environments(TENANT), {desktop: now() - store.environments.retention - 10})
    assert [e.environment_id for e in store.environments.of_tenant(TENANT)[0]] == [newer]
    assert store.redis.zcard(store.keys.environments(TENANT)) == 1


def test_delete_removes_record_and_blob_unless_in_use(any_store: TaskStore) -> None:
    store = any_store
    env_id, task_id = new_env(store)
    store.environments.save(env_id, TENANT, task_id, b"{}")
    # While its persistent task runs it cannot be deleted
    busy = store.environments.delete(TENANT, env_id)
    assert (busy.outcome, busy.detail) == ("busy", task_id)
    # Once it ended, the record, its index entry and its blob go at once
    end(store, task_id)
    assert store.environments.delete(TENANT, env_id).ok
    assert store.environments.get(TENANT, env_id) is None
    assert store.artifacts.get(env_id, f"environment/state-{task_id}.json") is None
    assert store.environments.of_tenant(TENANT) == ([], False)
    assert store.environments.delete(TENANT, env_id).outcome == "missing"


# --- a desktop HOME ---------------------------------------------------------------------------------------------
def test_a_home_folder_round_trips_without_caches_sockets_or_links_out(tmp_path: Path) -> None:
    from worker.desktop.homes import pack_home, unpack_home

    # Given a HOME with files, a program's settings, caches, a socket and links in and out of it
    home = tmp_path / "home"
    (home / ".config/app").mkdir(parents=True)
    (home / "notes.txt").write_text("note 1")
    (home / ".config/app/settings.ini").write_text("[ui]\ntheme=dark\n")
    os.chmod(home / "notes.txt", 0o600)
    (home / ".cache/big").mkdir(parents=True)
    (home / ".cache/big/blob").write_bytes(b"x" * 1000)
    (home / ".config/lodestar-chromium/Default/Cache").mkdir(parents=True)
    (home / ".config/lodestar-chromium/Default/Cache/data_0").write_bytes(b"cache")
    (home / ".config/lodestar-chromium/Default/Cookies").write_bytes(b"cookies db")
    (home / ".config/lodestar-chromium/SingletonLock").symlink_to("host-123")
    (home / "link-in").symlink_to("notes.txt")
    (home / "link-out").symlink_to("/etc/passwd")
    import socket

    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(home / "app.sock"))
    # When it is packed and unpacked into a new HOME
    data = pack_home(home)
    sock.close()
    restored = tmp_path / "restored"
    restored.mkdir()
    unpack_home(restored, data)
    # Then the files, settings and the link inside are there, with their modes; caches, the socket and the links
    # out are not
    assert (restored / "notes.txt").read_text() == "note 1"
    assert (restored / "notes.txt").stat().st_mode & 0o777 == 0o600
    assert (restored / ".config/app/settings.ini").read_text() == "[ui]\ntheme=dark\n"
    assert (restored / ".config/lodestar-chromium/Default/Cookies").read_bytes() == b"cookies db"
    assert os.readlink(restored / "link-in") == "notes.txt"
    for gone in (".cache", ".config/lodestar-chromium/Default/Cache", ".config/lodestar-chromium/SingletonLock",
                 "link-out", "app.sock"):
        assert not os.path.lexists(restored / gone), gone


def test_an_archive_that_escapes_its_home_is_refused(tmp_path: Path) -> None:
    from worker.desktop.homes import unpack_home

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    home = tmp_path / "home"
    home.mkdir()
    with pytest.raises(tarfile.TarError):
        unpack_home(home, buf.getvalue())
    assert not (tmp_path / "escaped.txt").exists()
