"""Profile fernvault's get_secret_by_name, store_secret and rotate_key with cProfile.

``python -m bench.profiling --db sqlite --n 10000`` fills a fresh vault, then
for each operation counts the SQL statements and commits it sends and runs
it under cProfile. It prints the share of time spent in SQLAlchemy, the
database driver, cryptography, fernvault and the rest, and writes the full
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

CATEGORIES = ("SQLAlchemy", "driver", "cryptography", "fernvault", "other")


def _category(filename: str, function: str) -> str:
    """Name the part of the stack a profiled function belongs to."""
    place = f"{filename} {function}"
    if "/sqlalchemy/" in filename:
        return "SQLAlchemy"
    if any(name in place for name in ("sqlite3", "psycopg", "/_sqlite")):
        return "driver"
    if "cryptography" in place or "Fernet" in function or "openssl" in place.lower():
        return "cryptography"
    if "/fernvault/" in filename:
        return "fernvault"
    return "other"


@dataclass
class StatementCounter:
    """SQL statements and commits sent through one engine, by their first word."""

    statements: Counter[str]
    commits: int = 0

    def reset(self) -> None:
        self.statements.clear()
        self.commits = 0


def _count_statements(engine: Any) -> StatementCounter:
    from sqlalchemy import event

    counter = StatementCounter(Counter())

    def before_cursor_execute(*arguments: Any) -> None:
        statement: str = arguments[2]
        words = statement.split()
        first = words[0].upper() if words else "?"
        counter.statements[first] += 1

    def commit(_connection: Any) -> None:
        counter.commits += 1

    event.listen(engine, "before_cursor_execute", before_cursor_execute)
    event.listen(engine, "commit", commit)
    return counter


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


def _describe(label: str, calls: int, counter: StatementCounter, shares: dict[str, float]) -> str:
    total = sum(shares.values()) or 1.0
    per_call = ", ".join(
        f"{count / calls:.2f} {statement}" for statement, count in counter.statements.most_common()
    )
    split = ", ".join(f"{name} {shares[name] / total:.0%}" for name in CATEGORIES)
    return (
        f"{label}: {total / calls * 1e6:,.0f} µs per call under the profiler\n"
        f"  statements per call: {per_call}; commits per call: {counter.commits / calls:.2f}\n"
        f"  own time: {split}"
    )


def profile_operations(target: Target, workload: Workload, output: Path) -> list[str]:
    """Fill a vault on ``target`` and profile the three operations; return a summary line each."""
    from fernvault import SecretManager

    manager = SecretManager(key_file=target.folder / "fernvault.key", url=target.sqlalchemy_url)
    value = workload.value()
    manager.store_secrets([(name, value) for name in workload.bulk_names()])
    counter = _count_statements(manager._db.engine)
    dialect = target.dialect
    lines = []

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
    lines.append(_describe("rotate_key (per secret)", rows, counter, shares))
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
