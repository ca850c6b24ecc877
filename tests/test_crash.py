"""SIGKILL a process in the middle of ``rotate_key`` and check that nothing is lost.

Each trial clones one seeded vault of 5,000 secrets and starts a child that
rotates it page by page and reports each page over a pipe. The test kills
the child with SIGKILL at a planned moment: just after it starts, after some
page, right after the last page (while it deletes the old data key and
commits), or after ``rotate_key`` returned. Hooks on SQLAlchemy's commit and
pool check-in events also kill it just before and just after the COMMIT. A
fresh process then opens every clone, reads every secret and rotates once
more.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event
from sqlalchemy.pool import Pool

from fernvault import SecretManager

from .conftest import create_pg_database, drop_pg_database
from .dbutil import fetch
from .vaultcopy import clone_vault, drop_clone, seed_values, seed_vault

SECRETS = 5000
TRIALS = 20
BATCH_SIZE = 100  # 50 pages, so kills land between many different pages
CHILD_TIMEOUT = 60.0

SPAWN = multiprocessing.get_context("spawn")


@dataclass(frozen=True)
class KillPlan:
    """A kill moment: ``delay`` seconds after the ``count``-th ``event`` from the child.

    The events "before_commit" and "after_commit" are hooks instead: the child
    kills itself just before the rotation's COMMIT is sent, or when its
    connection returns to the pool after the COMMIT.
    """

    event: str  # "ready", "page", "last_page", "done", "before_commit" or "after_commit"
    count: int = 1
    delay: float = 0.0

    @property
    def hook(self) -> str | None:
        return self.event if self.event.endswith("_commit") else None


def _kill_plans(rng: random.Random) -> list[KillPlan]:
    pages = SECRETS // BATCH_SIZE
    plans = [KillPlan("ready", 1, rng.uniform(0.0, 0.005)) for _ in range(3)]
    plans += [
        KillPlan("page", rng.randint(1, pages - 1), rng.uniform(0.0, 0.003)) for _ in range(7)
    ]
    plans += [KillPlan("last_page", 1, rng.uniform(0.0, 0.02)) for _ in range(4)]
    plans += [KillPlan("done", 1, rng.uniform(0.0, 0.01)) for _ in range(2)]
    plans += [KillPlan("before_commit"), KillPlan("before_commit")]
    plans += [KillPlan("after_commit"), KillPlan("after_commit")]
    assert len(plans) == TRIALS
    rng.shuffle(plans)
    return plans


def _die(*_: Any) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _rotate_and_report(key_file: str, url: str, hook: str | None, pipe: Connection) -> None:
    total_pages = SECRETS // BATCH_SIZE
    pages = 0

    def progress(done: int, total: int) -> None:
        nonlocal pages
        pages += 1
        pipe.send(("last_page" if pages == total_pages else "page", done))

    with SecretManager(key_file, url, batch_size=BATCH_SIZE) as vault:
        # Armed after opening, so the first COMMIT or pool check-in is the rotation's.
        if hook == "before_commit":
            event.listen(Engine, "commit", _die)
        elif hook == "after_commit":
            event.listen(Pool, "checkin", _die)
        pipe.send(("ready", 0))
        key_id = vault.rotate_key(progress)
        pipe.send(("done", key_id))
        time.sleep(CHILD_TIMEOUT)  # wait to be killed


def _wait_for_event(pipe: Connection, plan: KillPlan) -> str:
    """Read the child's events until the planned one; return the last event read."""
    seen: dict[str, int] = {}
    last_event = "none"
    deadline = time.monotonic() + CHILD_TIMEOUT
    while time.monotonic() < deadline:
        if not pipe.poll(deadline - time.monotonic()):
            break
        try:
            name, _ = pipe.recv()
        except EOFError:  # a hook plan: the child killed itself
            return last_event
        last_event = name
        seen[name] = seen.get(name, 0) + 1
        if name == plan.event and seen[name] == plan.count:
            time.sleep(plan.delay)
            return last_event
    pytest.fail(f"rotation child reached no {plan.event} event within {CHILD_TIMEOUT} s")


def _run_trial(key_file: Path, url: str, plan: KillPlan) -> str:
    """Run one child to its planned moment, SIGKILL it, and return the last event it sent."""
    parent_end, child_end = SPAWN.Pipe(duplex=False)
    child = SPAWN.Process(
        target=_rotate_and_report, args=(str(key_file), url, plan.hook, child_end)
    )
    child.start()
    child_end.close()
    try:
        last_event = _wait_for_event(parent_end, plan)
        if plan.hook is None:
            child.kill()
        child.join(timeout=CHILD_TIMEOUT)
        assert child.exitcode == -signal.SIGKILL, f"{plan}: child ended with {child.exitcode}"
    finally:
        if child.is_alive():
            child.kill()
            child.join(timeout=10)
        parent_end.close()
    return last_event


def _inspect_after_crash(key_file: str, urls: list[str]) -> list[dict[str, Any]]:
    """Open each vault in this fresh process, read everything, then rotate once more."""
    results = []
    for url in urls:
        with SecretManager(key_file, url) as vault:
            values = {entry["id"]: vault.get_secret(entry["id"]) for entry in vault.list_secrets()}
            report = vault.verify()
            state = {
                "values": values,
                "failures": report.failures,
                "per_key": report.per_key,
                "data_keys": [row[0] for row in fetch(url, "SELECT id FROM fernvault_data_keys")],
            }
            try:
                state["second_rotation"] = vault.rotate_data_key().key_id
            except Exception as exc:  # reported to the parent, which fails the test
                state["second_rotation_error"] = repr(exc)
            state["after_second"] = vault.verify().per_key
        results.append(state)
    return results


def _inspect_in_fresh_processes(key_file: Path, urls: list[str]) -> list[dict[str, Any]]:
    """Inspect the clones in two new processes, one half each, to halve the wall time."""
    halves = [urls[: len(urls) // 2], urls[len(urls) // 2 :]]
    with SPAWN.Pool(2) as pool:
        pending = [pool.apply_async(_inspect_after_crash, (str(key_file), half)) for half in halves]
        return [state for result in pending for state in result.get(timeout=300)]


@pytest.fixture
def seeded(backend: str, tmp_path: Path, key_file: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A vault of SECRETS secrets to clone: its URL and ``{secret id: value}``."""
    url = f"sqlite:///{tmp_path / 'template.db'}" if backend == "sqlite" else create_pg_database()
    try:
        yield url, seed_vault(key_file, url, seed_values(SECRETS))
    finally:
        if backend != "sqlite":
            drop_pg_database(url)


@pytest.mark.slow
def test_sigkill_during_rotation_loses_nothing(
    seeded: tuple[str, dict[str, str]], key_file: Path, tmp_path: Path
) -> None:
    template_url, expected = seeded
    (old_key,) = fetch(template_url, "SELECT id FROM fernvault_data_keys")[0]
    seed = random.randrange(2**32)
    plans = _kill_plans(random.Random(seed))
    urls = [clone_vault(template_url, tmp_path, f"trial{i}") for i in range(TRIALS)]
    try:
        last_events = [
            _run_trial(key_file, url, plan) for url, plan in zip(urls, plans, strict=True)
        ]
        results = _inspect_in_fresh_processes(key_file, urls)
    finally:
        for url in urls:
            drop_clone(url)

    outcomes = []
    for plan, last_event, state in zip(plans, last_events, results, strict=True):
        trial = f"{plan} (last event {last_event}, seed {seed})"
        assert state["values"] == expected, trial
        assert state["failures"] == [], trial
        assert len(state["data_keys"]) == 1, trial
        assert state["per_key"] == {state["data_keys"][0]: SECRETS}, trial
        assert "second_rotation_error" not in state, trial
        assert state["after_second"] == {state["second_rotation"]: SECRETS}, trial
        outcomes.append("old" if state["data_keys"] == [old_key] else "new")
        if last_event == "done" or plan.event == "after_commit":
            assert outcomes[-1] == "new", f"a committed rotation was undone: {trial}"
        if plan.event == "before_commit":
            assert outcomes[-1] == "old", f"an uncommitted rotation took effect: {trial}"
    # Both outcomes occur, so the trials did kill on both sides of the commit.
    assert "old" in outcomes
    assert "new" in outcomes
