"""Run every phase of every implementation in its own worker process and collect the results."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import PAIRED_PHASES, PHASES, Target, Workload
from .worker import IMPLEMENTATIONS, PhaseRequest

REPOSITORY = Path(__file__).resolve().parents[1]

DEFAULT_PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True)
class Settings:
    """Settings of one benchmark run: databases, sizes and repetitions."""

    databases: tuple[str, ...]  # "sqlite", "postgresql"
    sizes: tuple[int, ...]
    value_sizes: tuple[int, ...]
    repeat: int
    store_count: int
    get_count: int
    pg_admin_url: str = DEFAULT_PG_ADMIN_URL
    fernvault_ref: str | None = None  # a git revision to measure instead of the work tree


Measurement = dict[str, Any]
Log = Callable[[str], None]
Save = Callable[[list[Measurement]], None]


def run(settings: Settings, log: Log, save: Save) -> list[Measurement]:
    """Measure every combination ``settings.repeat`` times; return one record per measurement.

    The repetition loop is the outermost, so a burst of load from other
    processes on the machine spreads over sizes instead of spoiling one.
    The order of implementations turns each repetition, so none always runs
    first on a cold page cache. ``save`` receives the records so far after
    each vault size, so an interrupted run keeps what it measured.
    """
    measurements: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="fernvault-bench-") as scratch:
        environment = worker_environment(settings.fernvault_ref, Path(scratch))
        for repetition in range(settings.repeat):
            shift = repetition % len(IMPLEMENTATIONS)
            order = IMPLEMENTATIONS[shift:] + IMPLEMENTATIONS[:shift]
            for database in settings.databases:
                for value_size in settings.value_sizes:
                    for n in settings.sizes:
                        workload = Workload(n, value_size, settings.store_count, settings.get_count)
                        with contextlib.ExitStack() as stack:
                            targets = {
                                name: stack.enter_context(
                                    fresh_target(database, Path(scratch), settings)
                                )
                                for name in order
                            }
                            records = _run_size(targets, workload, environment)
                        for record in records:
                            record["repetition"] = repetition
                        measurements.extend(records)
                        save(measurements)
                        log(_progress_line(repetition, records))
    return measurements


def _run_size(
    targets: dict[str, Target], workload: Workload, environment: dict[str, str]
) -> list[Measurement]:
    """Run every phase of every implementation, each on its own target, and the paired phases.

    The paired phases run after the solo ones, so every vault is filled
    when they start, and before the rotation, so it rotates their rows too.
    """
    records = []
    for phase in PHASES[:-1]:
        for name, target in targets.items():
            request = PhaseRequest(name, phase, target, workload)
            result = _run_worker({"mode": "solo", "request": request.to_json()}, environment)
            records.append(_record(request, "solo", result))
    for phase in PAIRED_PHASES:
        requests = [PhaseRequest(name, phase, target, workload) for name, target in targets.items()]
        request_json = {
            "mode": "paired",
            "phase": phase,
            "requests": [request.to_json() for request in requests],
        }
        results = _run_worker(request_json, environment)
        records.extend(_record(r, "paired", results[r.implementation]) for r in requests)
    for name, target in targets.items():
        request = PhaseRequest(name, PHASES[-1], target, workload)
        result = _run_worker({"mode": "solo", "request": request.to_json()}, environment)
        records.append(_record(request, "solo", result))
    return records


def _record(request: PhaseRequest, mode: str, result: dict[str, Any]) -> Measurement:
    return {
        "database": request.target.dialect,
        "value_size": request.workload.value_size,
        "n": request.workload.n,
        "implementation": request.implementation,
        "phase": request.phase,
        "mode": mode,
        **result,
        "us_per_secret": result["seconds"] / result["count"] * 1e6,
    }


def worker_environment(fernvault_ref: str | None, scratch: Path) -> dict[str, str]:
    """Return the workers' environment; with a revision, put its exported source first on the path.

    Measuring a committed revision keeps a run consistent while someone edits
    the work tree, whose half-saved changes would otherwise reach some workers.
    """
    environment = dict(os.environ)
    if fernvault_ref is None:
        return environment
    source = scratch / "fernvault-source"
    source.mkdir()
    archive = subprocess.run(
        ["git", "archive", "--format=tar", fernvault_ref, "src/fernvault", "migrations"],
        cwd=REPOSITORY, capture_output=True, check=True,
    )  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
    environment["PYTHONPATH"] = str(source / "src")
    return environment


def fernvault_revision(fernvault_ref: str | None) -> str:
    """Describe the fernvault code a run measures: a commit id, marked when the tree has edits."""
    revision = fernvault_ref or "HEAD"
    commit = _git("rev-parse", revision)
    if fernvault_ref is not None:
        return commit
    edited = _git("status", "--porcelain", "--", "src/fernvault", "migrations")
    return f"{commit} with uncommitted edits" if edited else commit


def _git(*arguments: str) -> str:
    completed = subprocess.run(
        ["git", *arguments], cwd=REPOSITORY, capture_output=True, text=True, check=True
    )
    return completed.stdout.strip()


def _run_worker(request: dict[str, Any], environment: dict[str, str]) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.worker", json.dumps(request)]
    completed = subprocess.run(
        command, cwd=REPOSITORY, env=environment, capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        error = completed.stderr.strip().splitlines()[-1:] or ["no error output"]
        described = request.get("request") or request["requests"][0]
        raise RuntimeError(
            f"{request['mode']} worker for {described['implementation']} {described['phase']} "
            f"on {described['target']['dialect']} (n={described['workload']['n']}, "
            f"value size {described['workload']['value_size']}) failed: {error[0]}"
        )
    result: dict[str, Any] = json.loads(completed.stdout)
    return result


def _progress_line(repetition: int, records: list[Measurement]) -> str:
    first = records[0]
    fernvault = {
        f"{r['phase']}{' paired' if r['mode'] == 'paired' else ''}": r["us_per_secret"]
        for r in records
        if r["implementation"] == "fernvault"
    }
    phases = ", ".join(f"{phase} {us:.0f}" for phase, us in fernvault.items())
    return (
        f"repetition {repetition + 1}: {first['database']}, {first['value_size']}-byte values, "
        f"{first['n']:,} secrets; fernvault µs per secret: {phases}"
    )


@contextlib.contextmanager
def fresh_target(database: str, scratch: Path, settings: Settings) -> Iterator[Target]:
    """Yield an empty database of kind ``database`` with a private folder; drop both afterwards."""
    folder = Path(tempfile.mkdtemp(dir=scratch))
    try:
        if database == "sqlite":
            yield Target("sqlite", f"sqlite:///{folder / 'vault.db'}", folder)
        else:
            with _postgresql_database(settings.pg_admin_url) as url:
                yield Target("postgresql", url, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _postgresql_database(admin_url: str) -> Iterator[str]:
    import psycopg

    name = f"fernvault_bench_{secrets.token_hex(6)}"
    conninfo = admin_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{admin_url.rpartition('/')[0]}/{name}"
    finally:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def environment(settings: Settings) -> dict[str, Any]:
    """Describe the machine and the library versions behind a run."""
    import platform
    import sqlite3

    import cryptography
    import sqlalchemy
    import sqlalchemy_utils  # type: ignore[import-untyped]

    described: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "sqlite": sqlite3.sqlite_version,
        "sqlalchemy": sqlalchemy.__version__,
        "sqlalchemy_utils": sqlalchemy_utils.__version__,
        "cryptography": cryptography.__version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "fernvault": fernvault_revision(settings.fernvault_ref),
    }
    if "postgresql" in settings.databases:
        import psycopg

        conninfo = settings.pg_admin_url.replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(conninfo, connect_timeout=10) as connection:
            row = connection.execute("SHOW server_version").fetchone()
        described["psycopg"] = psycopg.__version__
        described["postgresql"] = row[0] if row else "unknown"
    return described
