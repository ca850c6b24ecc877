"""Parts every implementation shares: the workload, the phases and memory probes."""

from __future__ import annotations

import os
import random
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

PHASES = ("bulk", "store", "get", "rotate")
"""Phases in the order they run against one database.

``bulk`` imports the ``n`` secrets in one transaction, ``store`` adds more
secrets one commit each, ``get`` reads random names, ``rotate`` re-encrypts
every secret under a new key.
"""

PAIRED_PHASES = ("store", "get")
"""Phases timed a second time with all implementations in one process, in alternating blocks.

A single store or get takes micro- to milliseconds, so a burst of load
from another process (a commit's fsync on a shared disk varies fivefold)
would favor whichever implementation ran at a quiet moment. Alternating
blocks of calls exposes every implementation to the same bursts.
"""

PAIRED_BLOCK = 20  # calls per implementation before the next one takes its turn

WARMUP_CALLS = 10
"""Calls made before timing ``store`` and ``get``, so caches and compiled statements are warm."""

SQLITE_BUSY_TIMEOUT_MS = 30_000  # fernvault's default busy timeout, 30 s


@dataclass(frozen=True)
class Workload:
    """The secrets of one measurement: ``n`` imported, then ``store_count`` stored singly."""

    n: int
    value_size: int
    store_count: int
    get_count: int
    seed: int = 20261204

    def value(self) -> str:
        """Return the value every secret gets: ``value_size`` random ASCII letters.

        One value for all secrets keeps the inputs small in memory; every
        token still differs, because Fernet draws a fresh IV per encryption.
        """
        generator = random.Random(self.seed + self.value_size)
        return "".join(generator.choices(string.ascii_letters, k=self.value_size))

    def bulk_names(self) -> list[str]:
        return [f"bulk-{index:07d}" for index in range(self.n)]

    def store_names(self, prefix: str = "single") -> list[str]:
        return [f"{prefix}-{index:07d}" for index in range(self.store_count)]

    def warmup_names(self, prefix: str = "warmup") -> list[str]:
        return [f"{prefix}-{index:03d}" for index in range(WARMUP_CALLS)]

    def get_names(self) -> list[str]:
        """Return ``get_count`` names drawn at random, with repeats, from the imported ones."""
        generator = random.Random(self.seed)
        return [f"bulk-{generator.randrange(self.n):07d}" for _ in range(self.get_count)]

    def rotated_rows(self) -> int:
        """Return how many secrets the vault holds when ``rotate`` runs.

        Those are the imported ones plus the stored ones and their warm-up,
        once in the solo ``store`` phase and once in the paired one.
        """
        return self.n + 2 * (self.store_count + WARMUP_CALLS)


class Implementation(Protocol):
    """One way of doing the four phases; each method returns how many secrets it handled."""

    def bulk(self, names: Sequence[str], value: str) -> int: ...

    def store(self, names: Sequence[str], value: str) -> int: ...

    def get(self, names: Sequence[str]) -> int: ...

    def rotate(self) -> int: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Target:
    """Storage of one implementation: a database URL and a private folder for keys."""

    dialect: str  # "sqlite" or "postgresql"
    sqlalchemy_url: str
    folder: Path

    @property
    def sqlite_path(self) -> str:
        return self.sqlalchemy_url.removeprefix("sqlite:///")

    @property
    def libpq_url(self) -> str:
        return self.sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://", 1)


def read_key(path: Path) -> bytes:
    return path.read_bytes().strip()


def write_key(path: Path, key: bytes) -> None:
    """Write a benchmark key file, private to the user, replacing it atomically."""
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(key)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def memory_kib() -> dict[str, int]:
    """Return this process's resident set size and its peak (VmRSS, VmHWM) in KiB."""
    values: dict[str, int] = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            field, _, rest = line.partition(":")
            if field in ("VmRSS", "VmHWM"):
                values[field] = int(rest.split()[0])
    return values


def reset_peak_memory() -> bool:
    """Lower VmHWM to the current VmRSS; return False when the kernel does not allow it.

    Writing 5 to /proc/self/clear_refs resets the peak (Linux 4.0 and later).
    Without it a phase's growth is measured against the older, higher peak
    and can read too low.
    """
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True
