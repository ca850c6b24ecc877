"""Run one measurement in this process and print its result as JSON.

The runner starts a fresh ``python -m bench.worker REQUEST`` for every
measurement, where REQUEST is a JSON object. A solo measurement runs one
phase of one implementation, so the phase's peak memory is its own: the
worker opens the implementation, builds the inputs and warms up before it
reads the baseline. A paired measurement opens several implementations and
times their store or get calls in alternating blocks (see
``common.PAIRED_PHASES``). Output names no value and no key.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .common import (
    PAIRED_BLOCK,
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

    def to_json(self) -> dict[str, Any]:
        fields = asdict(self)
        fields["target"]["folder"] = str(self.target.folder)
        return fields

    @classmethod
    def from_json(cls, fields: dict[str, Any]) -> PhaseRequest:
        target = fields["target"]
        return cls(
            implementation=fields["implementation"],
            phase=fields["phase"],
            target=Target(target["dialect"], target["sqlalchemy_url"], Path(target["folder"])),
            workload=Workload(**fields["workload"]),
        )


def open_implementation(request: PhaseRequest, *, create: bool) -> Implementation:
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


def measure(request: PhaseRequest) -> dict[str, Any]:
    """Run the requested phase once; return its duration, secret count and memory growth."""
    implementation = open_implementation(request, create=request.phase == "bulk")
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


def measure_paired(requests: Sequence[PhaseRequest], phase: str) -> dict[str, dict[str, Any]]:
    """Time ``phase`` of several implementations in alternating blocks; return seconds per name.

    The implementation that goes first changes from one block to the next.
    """
    implementations = {r.implementation: open_implementation(r, create=False) for r in requests}
    workload = requests[0].workload
    value = workload.value()
    try:
        calls = {
            name: _paired_call(implementation, phase, workload, value)
            for name, implementation in implementations.items()
        }
        names = workload.store_names("paired") if phase == "store" else workload.get_names()
        seconds = dict.fromkeys(implementations, 0.0)
        order = list(implementations)
        for start in range(0, len(names), PAIRED_BLOCK):
            block = names[start : start + PAIRED_BLOCK]
            for name in order:
                started = time.perf_counter()
                calls[name](block)
                seconds[name] += time.perf_counter() - started
            order = order[1:] + order[:1]
    finally:
        for implementation in implementations.values():
            implementation.close()
    return {name: {"seconds": seconds[name], "count": len(names)} for name in implementations}


def _paired_call(
    implementation: Implementation, phase: str, workload: Workload, value: str
) -> Callable[[Sequence[str]], int]:
    """Warm ``implementation`` up for ``phase`` and return the call that takes a block of names."""
    if phase == "store":
        implementation.store(workload.warmup_names("paired-warmup"), value)
        return lambda names: implementation.store(names, value)
    if phase == "get":
        implementation.get(workload.get_names()[:WARMUP_CALLS])
        return implementation.get
    raise ValueError(f"phase {phase!r} cannot be paired")


def main(argv: list[str] | None = None) -> None:
    arguments = sys.argv[1:] if argv is None else argv
    if len(arguments) != 1:
        raise SystemExit("usage: python -m bench.worker REQUEST (a JSON object)")
    request = json.loads(arguments[0])
    if request["mode"] == "solo":
        result: Any = measure(PhaseRequest.from_json(request["request"]))
    else:
        requests = [PhaseRequest.from_json(fields) for fields in request["requests"]]
        result = measure_paired(requests, request["phase"])
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
