"""Run one phase of one implementation in this process and print its measurement as JSON.

The runner starts a fresh ``python -m bench.worker`` for every phase, so
each phase's peak memory is its own. The worker opens the implementation,
builds the inputs and warms up before it reads the baseline, so the
measured growth is the phase's alone. Output names no value and no key.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .common import (
    WARMUP_CALLS,
    Implementation,
    Target,
    Workload,
    memory_kib,
    reset_peak_memory,
)

IMPLEMENTATIONS = ("floor", "database", "crypto", "fernvault", "peer")
"""``database`` and ``crypto`` are the floor's two parts: its SQL alone, its Fernet calls alone."""


@dataclass(frozen=True)
class PhaseRequest:
    implementation: str
    phase: str
    target: Target
    workload: Workload

    def arguments(self) -> list[str]:
        """Return the command line arguments that make a worker run this request."""
        workload = self.workload
        return [
            "--implementation", self.implementation,
            "--phase", self.phase,
            "--dialect", self.target.dialect,
            "--url", self.target.sqlalchemy_url,
            "--folder", str(self.target.folder),
            "--n", str(workload.n),
            "--value-size", str(workload.value_size),
            "--store-count", str(workload.store_count),
            "--get-count", str(workload.get_count),
        ]  # fmt: skip


def open_implementation(request: PhaseRequest) -> Implementation:
    create = request.phase == "bulk"
    name = request.implementation
    if name in ("floor", "database"):
        from .floor import Floor

        return Floor(request.target, create=create, prepared=name == "database")
    if name == "crypto":
        from .floor import CryptoAlone

        return CryptoAlone(request.workload)
    if name == "fernvault":
        from .fernvault_phases import FernvaultPhases

        return FernvaultPhases(request.target)
    if name == "peer":
        from .peer import PeerPhases

        return PeerPhases(request.target, create=create)
    raise ValueError(f"unknown implementation {name!r}; expected one of {IMPLEMENTATIONS}")


def measure(request: PhaseRequest) -> dict[str, float | int | bool]:
    """Run the requested phase once; return its duration, secret count and memory growth."""
    implementation = open_implementation(request)
    workload = request.workload
    value = workload.value()
    try:
        run = _prepare(implementation, request.phase, workload, value)

        before = memory_kib()
        exact = reset_peak_memory()
        baseline = memory_kib()["VmHWM"] if exact else before["VmHWM"]
        started = time.perf_counter()
        count = run()
        seconds = time.perf_counter() - started
        after = memory_kib()
    finally:
        implementation.close()

    return {
        "seconds": seconds,
        "count": count,
        "rss_before_kib": before["VmRSS"],
        "peak_growth_kib": max(0, after["VmHWM"] - baseline),
        "peak_reset": exact,
    }


def _prepare(
    implementation: Implementation, phase: str, workload: Workload, value: str
) -> Callable[[], int]:
    """Build the inputs of ``phase``, warm up, and return the call to time."""
    if phase == "bulk":
        names = workload.bulk_names()
        return lambda: implementation.bulk(names, value)
    if phase == "store":
        implementation.store(workload.warmup_names(), value)
        names = workload.store_names()
        return lambda: implementation.store(names, value)
    if phase == "get":
        implementation.get(workload.get_names()[:WARMUP_CALLS])
        names = workload.get_names()
        return lambda: implementation.get(names)
    if phase == "rotate":
        return implementation.rotate
    raise ValueError(f"unknown phase {phase!r}")


def _parse(argv: list[str]) -> PhaseRequest:
    parser = argparse.ArgumentParser(prog="python -m bench.worker")
    parser.add_argument("--implementation", choices=IMPLEMENTATIONS, required=True)
    parser.add_argument("--phase", required=True)
    parser.add_argument("--dialect", choices=("sqlite", "postgresql"), required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--value-size", type=int, required=True)
    parser.add_argument("--store-count", type=int, required=True)
    parser.add_argument("--get-count", type=int, required=True)
    arguments = parser.parse_args(argv)
    return PhaseRequest(
        implementation=arguments.implementation,
        phase=arguments.phase,
        target=Target(arguments.dialect, arguments.url, arguments.folder),
        workload=Workload(
            n=arguments.n,
            value_size=arguments.value_size,
            store_count=arguments.store_count,
            get_count=arguments.get_count,
        ),
    )


def main(argv: list[str] | None = None) -> None:
    request = _parse(sys.argv[1:] if argv is None else argv)
    json.dump(measure(request), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
