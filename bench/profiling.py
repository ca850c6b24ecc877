"""Profile fernvault's store_secrets, get_secret_by_name, store_secret and rotate_key.

``python -m bench.profiling --db sqlite --n 10000`` fills a fresh vault with
``store_secrets``, then reads, stores and rotates. It counts the SQL
statements each operation sends and runs it under cProfile. It prints the
share of own time spent in SQLAlchemy, the database driver, Fernet
(cryptography and base64), fernvault and the rest, and writes the full
profiles (sorted by cumulative and by own time) to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import Target, Workload
from .runner import DEFAULT_PG_ADMIN_URL, REPOSITORY, Settings, fresh_target, worker_environment

CATEGORIES = ("SQLAlchemy", "driver", "Fernet", "fernvault", "other")


def _category(filename: str, function: str) -> str:
    """Name the part of the stack a profiled function belongs to."""
    place = f"{filename} {function}"
    if "/sqlalchemy/" in filename:
        return "SQLAlchemy"
    if any(name in place for name in ("sqlite3", "psycopg", "/_sqlite")):
        return "driver"
    fernet_parts = ("cryptography", "base64", "binascii", "hmac", "openssl")
    if any(part in place.lower() for part in fernet_parts):
        return "Fernet"
    if "/fernvault/" in filename:
        return "fernvault"
    return "other"


@dataclass
class StatementCounter:
    """SQL statements sent to the database driver, by their first word, and commits."""

    statements: Counter[str]
    commits: int = 0

    def reset(self) -> None:
        self.statements.clear()
        self.commits = 0

    def add(self, statement: str) -> None:
        words = statement.split(maxsplit=1)
        first = words[0].upper() if words else "?"
        if first == "COMMIT":
            self.commits += 1
        self.statements[first] += 1


def _count_driver_statements(counter: StatementCounter) -> None:
    """Count every statement at the driver, below SQLAlchemy and any shortcut around it.

    SQLite connections get a trace callback, which also sees the BEGIN and
    COMMIT that sqlite3 issues itself and each row of an executemany.
    psycopg's cursors and commits are wrapped; an executemany counts once,
    and the BEGIN psycopg sends before the first statement of a transaction
    is counted when a statement runs on an idle connection outside
    autocommit mode.
    """
    import sqlite3

    connect = sqlite3.dbapi2.connect

    def traced_connect(*arguments: Any, **options: Any) -> sqlite3.Connection:
        connection: sqlite3.Connection = connect(*arguments, **options)
        connection.set_trace_callback(counter.add)
        return connection

    sqlite3.dbapi2.connect = traced_connect  # type: ignore[assignment]

    import psycopg
    from psycopg.pq import TransactionStatus

    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        def counted(cursor: Any, query: Any, *arguments: Any, **options: Any) -> Any:
            connection = cursor.connection
            idle = connection.info.transaction_status == TransactionStatus.IDLE
            if idle and not connection.autocommit:
                counter.add("BEGIN")
            counter.add(query if isinstance(query, str) else str(getattr(query, "_obj", query)))
            return method(cursor, query, *arguments, **options)

        return counted

    psycopg.Cursor.execute = wrap(psycopg.Cursor.execute)  # type: ignore[method-assign]
    psycopg.Cursor.executemany = wrap(psycopg.Cursor.executemany)  # type: ignore[method-assign]
    commit = psycopg.Connection.commit

    def counted_commit(connection: Any) -> None:
        if connection.info.transaction_status != TransactionStatus.IDLE:
            counter.add("COMMIT")
        commit(connection)

    psycopg.Connection.commit = counted_commit  # type: ignore[method-assign,assignment]


def _profile(call: Callable[[], object], label: str, output: Path) -> dict[str, float]:
    """Run ``call`` under cProfile, write its profile, and return own time per category."""
    profiler = cProfile.Profile()
    profiler.enable()
    call()
    profiler.disable()

    with open(output / f"profile-{label}.txt", "w", encoding="utf-8") as text:
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("cumulative").print_stats(40)
        stats.sort_stats("tottime").print_stats(40)

    shares = dict.fromkeys(CATEGORIES, 0.0)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (filename, _line, function), (
        _calls,
        _primitive,
        own,
        _cumulative,
        _callers,
    ) in raw.items():
        shares[_category(filename, function)] += own
    return shares


def _describe(
    label: str, calls: int, counter: StatementCounter, shares: dict[str, float], per: int = 1
) -> str:
    """Summarize a profile: time per call, statements per ``per`` calls, own time per category."""
    total = sum(shares.values()) or 1.0
    statements = ", ".join(
        f"{count * per / calls:,.2f} {statement}"
        for statement, count in counter.statements.most_common()
    )
    split = ", ".join(f"{name} {shares[name] / total:.0%}" for name in CATEGORIES)
    unit = "call" if per == 1 else f"{per:,} calls"
    return (
        f"{label}: {total / calls * 1e6:,.1f} µs per call under the profiler\n"
        f"  statements per {unit}: {statements or 'none counted'}\n"
        f"  own time: {split}"
    )


def profile_operations(target: Target, workload: Workload, output: Path) -> list[str]:
    """Fill a vault on ``target`` and profile four operations; return summary lines."""
    from fernvault import SecretManager

    counter = StatementCounter(Counter())
    _count_driver_statements(counter)
    manager = SecretManager(key_file=target.folder / "fernvault.key", url=target.sqlalchemy_url)
    value = workload.value()
    dialect = target.dialect
    lines = []

    items = [(name, value) for name in workload.bulk_names()]
    counter.reset()
    shares = _profile(lambda: manager.store_secrets(items), f"{dialect}-bulk", output)
    lines.append(_describe("store_secrets, per secret", len(items), counter, shares, per=1000))

    names = workload.get_names()
    manager.get_secret_by_name(names[0])
    counter.reset()
    shares = _profile(
        lambda: [manager.get_secret_by_name(name) for name in names], f"{dialect}-get", output
    )
    lines.append(_describe("get_secret_by_name", len(names), counter, shares))

    stored = workload.store_names()
    counter.reset()
    shares = _profile(
        lambda: [manager.store_secret(name, value) for name in stored], f"{dialect}-store", output
    )
    lines.append(_describe("store_secret", len(stored), counter, shares))

    counter.reset()
    started = time.perf_counter()
    shares = _profile(manager.rotate_key, f"{dialect}-rotate", output)
    rows = workload.n + workload.store_count
    lines.append(_describe("rotate_key, per secret", rows, counter, shares, per=1000))
    lines.append(f"  rotation took {time.perf_counter() - started:.2f} s under the profiler")

    manager.close()
    return lines


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.profiling", description=__doc__)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--n", type=int, default=10_000, help="secrets in the vault")
    parser.add_argument("--value-size", type=int, default=64, help="value size in bytes")
    parser.add_argument("--calls", type=int, default=1000, help="get_secret_by_name calls")
    parser.add_argument("--store-count", type=int, default=200, help="store_secret calls")
    parser.add_argument("--pg-url", default=DEFAULT_PG_ADMIN_URL)
    parser.add_argument("--output", type=Path, default=REPOSITORY / "bench" / "results")
    parser.add_argument(
        "--fernvault-ref", metavar="REVISION",
        help="profile fernvault as committed at this git revision instead of the work tree",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    raw_arguments = sys.argv[1:] if argv is None else argv
    arguments = _parse(raw_arguments)
    if arguments.fernvault_ref is not None:
        _rerun_with_revision(arguments.fernvault_ref, raw_arguments)
        return

    dialect = "postgresql" if arguments.db == "postgres" else "sqlite"
    workload = Workload(arguments.n, arguments.value_size, arguments.store_count, arguments.calls)
    settings = Settings(
        databases=(dialect,),
        sizes=(workload.n,),
        value_sizes=(workload.value_size,),
        repeat=1,
        store_count=workload.store_count,
        get_count=workload.get_count,
        pg_admin_url=arguments.pg_url,
    )
    arguments.output.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="fernvault-profile-") as scratch,
        fresh_target(dialect, Path(scratch), settings) as target,
    ):
        lines = profile_operations(target, workload, arguments.output)
    print(f"{dialect}, {arguments.n:,} secrets, {arguments.value_size}-byte values")
    print("\n".join(lines))


def _rerun_with_revision(revision: str, raw_arguments: list[str]) -> None:
    """Run this command again in a child whose path starts with the revision's exported source."""
    with tempfile.TemporaryDirectory(prefix="fernvault-profile-") as scratch:
        environment = worker_environment(revision, Path(scratch))
        child_arguments = []
        skip_next = False
        for argument in raw_arguments:
            if skip_next or argument.startswith("--fernvault-ref="):
                skip_next = False
                continue
            skip_next = argument == "--fernvault-ref"
            if not skip_next:
                child_arguments.append(argument)
        command = [sys.executable, "-m", "bench.profiling", *child_arguments]
        subprocess.run(command, cwd=REPOSITORY, env=environment, check=True)


if __name__ == "__main__":
    main()
