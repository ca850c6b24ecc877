"""Command line of the benchmark: ``python -m bench [--quick | --full] [options]``.

Without options it runs the quick set (1,000 and 10,000 secrets of 64 bytes),
which took three minutes on the two-core machine of docs/benchmarks.md;
``--full`` measures 1,000, 10,000 and 100,000 secrets of 64 bytes and of
4 KiB, which took 41 minutes there. Results go to
``bench/results/``: the raw measurements as JSON (rewritten after each vault
size, so an interrupted run keeps its data), the tables as Markdown, and the
rotation plot as PNG. ``--from-json`` redraws the tables and the plot of an
earlier run without measuring again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from . import report, runner

QUICK_SIZES = "1000,10000"
QUICK_VALUE_SIZES = "64"
FULL_SIZES = "1000,10000,100000"
FULL_VALUE_SIZES = "64,4096"
DATABASE_NAMES = {"sqlite": "sqlite", "postgres": "postgresql", "postgresql": "postgresql"}


def _integers(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part.replace("_", "")) for part in text.split(",") if part)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _databases(text: str) -> tuple[str, ...]:
    names = []
    for part in text.split(","):
        if part not in DATABASE_NAMES:
            raise argparse.ArgumentTypeError(f"unknown database {part!r}; use sqlite or postgres")
        names.append(DATABASE_NAMES[part])
    return tuple(names)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure fernvault against a hand-written floor and SQLAlchemy-Utils.",
    )
    parser.add_argument(
        "--db", type=_databases, default=("sqlite", "postgresql"),
        help="databases, comma-separated: sqlite, postgres (default: both)",
    )  # fmt: skip
    parser.add_argument(
        "--n", type=_integers, default=None,
        help=f"vault sizes in secrets, comma-separated (default: {QUICK_SIZES}; "
        f"with --full: {FULL_SIZES})",
    )  # fmt: skip
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--quick", action="store_true",
        help=f"measure {QUICK_SIZES} secrets of {QUICK_VALUE_SIZES} bytes (the default)",
    )  # fmt: skip
    scope.add_argument(
        "--full", action="store_true",
        help=f"measure {FULL_SIZES} secrets of {FULL_VALUE_SIZES} bytes",
    )  # fmt: skip
    parser.add_argument(
        "--value-sizes", type=_integers, default=None,
        help=f"value sizes in bytes, comma-separated (default: {QUICK_VALUE_SIZES}; "
        f"with --full: {FULL_VALUE_SIZES})",
    )  # fmt: skip
    parser.add_argument(
        "--repeat", type=int, default=3, help="repetitions; cells are medians (default: 3)"
    )
    parser.add_argument(
        "--store-count", type=int, default=None,
        help="secrets stored one commit each, after the import, solo and again paired "
        "(default: 200; 300 with --full)",
    )  # fmt: skip
    parser.add_argument(
        "--get-count", type=int, default=2000,
        help="random names read by get_secret_by_name (default: 2000)",
    )  # fmt: skip
    parser.add_argument(
        "--pg-url", default=runner.DEFAULT_PG_ADMIN_URL,
        help="SQLAlchemy URL of a PostgreSQL maintenance database; each run creates and "
        "drops its own databases on that server (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--output", type=Path, default=runner.REPOSITORY / "bench" / "results",
        help="folder for the JSON, Markdown and PNG results (default: bench/results)",
    )  # fmt: skip
    parser.add_argument(
        "--fernvault-ref", metavar="REVISION",
        help="measure fernvault as committed at this git revision (for example HEAD) "
        "instead of the work tree",
    )  # fmt: skip
    parser.add_argument(
        "--from-json", type=Path, help="summarize an earlier run's JSON instead of measuring"
    )
    return parser


def _settings(arguments: argparse.Namespace) -> runner.Settings:
    if arguments.repeat < 1:
        raise SystemExit("--repeat must be at least 1")
    sizes = arguments.n or _integers(FULL_SIZES if arguments.full else QUICK_SIZES)
    value_sizes = arguments.value_sizes or _integers(
        FULL_VALUE_SIZES if arguments.full else QUICK_VALUE_SIZES
    )
    store_count = arguments.store_count or (300 if arguments.full else 200)
    return runner.Settings(
        databases=arguments.db,
        sizes=sizes,
        value_sizes=value_sizes,
        repeat=arguments.repeat,
        store_count=store_count,
        get_count=arguments.get_count,
        pg_admin_url=arguments.pg_url,
        fernvault_ref=arguments.fernvault_ref,
    )


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _measure(arguments: argparse.Namespace, path: Path) -> dict[str, Any]:
    """Run the benchmark and write its JSON to ``path`` after each vault size and at the end."""
    settings = _settings(arguments)
    started = time.monotonic()
    run: dict[str, Any] = {
        "settings": settings.__dict__,
        "environment": runner.environment(settings),
        "measurements": [],
    }

    def save(measurements: list[runner.Measurement]) -> None:
        run["measurements"] = measurements
        path.write_text(json.dumps(run, indent=1), encoding="utf-8")

    runner.run(settings, _log, save)
    run["environment"]["load_average_after"] = os.getloadavg()
    run["environment"]["seconds"] = round(time.monotonic() - started, 1)
    save(run["measurements"])
    return run


def main(argv: list[str] | None = None) -> None:
    arguments = _parser().parse_args(argv)
    if arguments.from_json:
        run = json.loads(arguments.from_json.read_text(encoding="utf-8"))
        stem = arguments.from_json.with_suffix("")
    else:
        arguments.output.mkdir(parents=True, exist_ok=True)
        stem = arguments.output / time.strftime("bench-%Y%m%dT%H%M%SZ", time.gmtime())
        run = _measure(arguments, stem.with_suffix(".json"))

    summaries = report.summarize(run["measurements"])
    checks = report.check_targets(summaries)
    text = "\n".join(
        [
            report.markdown_tables(summaries),
            report.noise_note(summaries),
            "",
            "Targets:",
            *(check.line() for check in checks),
            "",
        ]
    )
    stem.with_suffix(".md").write_text(text, encoding="utf-8")
    environment = run["environment"]
    title = (
        f"fernvault {environment['fernvault'][:12]}, medians of {run['settings']['repeat']}, "
        f"{environment['cpus']} CPUs, {environment['time']}"
    )
    report.plot(summaries, stem.with_suffix(".png"), title)
    print(text)
    print(f"results: {stem}.json, .md, .png", file=sys.stderr)


if __name__ == "__main__":
    main()
