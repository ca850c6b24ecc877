"""The ``fernvault`` command line.

Values are read from standard input or a hidden prompt, never from
arguments, and only ``get`` writes a value to standard output. Errors are one
line on standard error with exit status 1; usage errors exit with 2.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click
from dotenv.parser import parse_stream

from . import __version__, schema
from . import keys as keyfile
from . import repository as repo
from .database import URL_ENV, Database
from .errors import (
    FernvaultError,
    InvalidInputError,
    KeyFileError,
    SchemaError,
    SecretExistsError,
    SecretNotFoundError,
)
from .manager import ProgressCallback, SecretManager
from .vaultkeys import private_sqlite_url

logger = logging.getLogger(__name__)


class Settings:
    def __init__(self, url: str | None, key_file: str | None, auto_upgrade: bool) -> None:
        self.url = url
        self.key_file = key_file
        self.auto_upgrade = auto_upgrade

    def open(self) -> SecretManager:
        return SecretManager(self.key_file, self.url, auto_upgrade=self.auto_upgrade)

    def database(self) -> Database:
        key_file = Path(self.key_file).expanduser() if self.key_file else keyfile.default_key_file()
        return Database(self.url or os.environ.get(URL_ENV) or private_sqlite_url(key_file))


def _fail(message: str) -> NoReturn:
    click.echo(f"fernvault: error: {message}", err=True)
    sys.exit(1)


class _Group(click.Group):
    """A group that turns fernvault's errors into one line on stderr and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FernvaultError as exc:
            _fail(str(exc))
        except OSError as exc:  # for example stdout on a full disk or a closed pipe
            where = f": {exc.filename}" if exc.filename else ""
            _fail(f"{exc.strerror or type(exc).__name__}{where}")
        except KeyboardInterrupt:
            _fail("interrupted")


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="fernvault")
@click.option(
    "--url",
    envvar=URL_ENV,
    help="Database URL [env FERNVAULT_URL; default: SQLite file beside the key file].",
)
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False),
    help="Master key file [env FERNVAULT_KEY_FILE; default ~/.codomyrmex/secrets.key].",
)
@click.option(
    "--auto-upgrade", is_flag=True, help="Upgrade an out-of-date schema instead of failing."
)
@click.option("-v", "--verbose", count=True, help="Log to stderr (-v INFO, -vv DEBUG).")
@click.pass_context
def cli(
    ctx: click.Context, url: str | None, key_file: str | None, auto_upgrade: bool, verbose: int
) -> None:
    """Keep secrets encrypted in a SQL database."""
    if verbose:
        logging.basicConfig(
            level=logging.DEBUG if verbose > 1 else logging.INFO,
            format="%(levelname)s %(name)s: %(message)s",
        )
    ctx.obj = Settings(url, key_file, auto_upgrade)


pass_settings = click.make_pass_decorator(Settings)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_settings
def init(settings: Settings, as_json: bool) -> None:
    """Create the key file and the database if they do not exist."""
    with settings.open() as vault:
        count = len(vault.list_secrets())
        info = {"key_file": str(vault.key_file), "url": vault.url, "secrets": count}
    if as_json:
        _echo_json(info)
    else:
        click.echo(
            f"vault ready: {info['url']} ({count} secrets), master key in {info['key_file']}"
        )


def _read_value(name: str, keep_newline: bool, allow_empty: bool) -> str:
    """Read a value from a hidden prompt on a terminal, else from all of stdin."""
    if sys.stdin is None:
        raise InvalidInputError("no standard input to read the value from")
    if sys.stdin.isatty():
        value: str = click.prompt(
            f"Value for {name}",
            hide_input=True,
            confirmation_prompt=True,
            default="" if allow_empty else None,
            show_default=False,
        )
    else:
        try:
            value = sys.stdin.buffer.read().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInputError(
                f"the value on standard input is not UTF-8 (invalid byte at offset {exc.start})"
            ) from None
        if not keep_newline:
            value = value.removesuffix("\n").removesuffix("\r")
    if not value and not allow_empty:
        # An empty read is more often a missing pipe than an intended value.
        raise InvalidInputError(
            f"empty value for {name}; pipe the value on stdin, or pass --allow-empty"
        )
    return value


def _parse_meta(pairs: tuple[str, ...]) -> dict[str, str] | None:
    if not pairs:
        return None
    metadata: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--meta")
        metadata[key] = value
    return metadata


@cli.command()
@click.argument("name")
@click.option("--meta", multiple=True, metavar="KEY=VALUE", help="Metadata entry; repeatable.")
@click.option(
    "--update", is_flag=True, help="Replace the value of an existing secret, keeping its id."
)
@click.option("--keep-newline", is_flag=True, help="Keep a trailing newline read from stdin.")
@click.option("--allow-empty", is_flag=True, help="Accept an empty value.")
@pass_settings
def put(
    settings: Settings,
    name: str,
    meta: tuple[str, ...],
    update: bool,
    keep_newline: bool,
    allow_empty: bool,
) -> None:
    """Store the value read from stdin (or a hidden prompt) as secret NAME."""
    metadata = _parse_meta(meta)
    value = _read_value(name, keep_newline, allow_empty)
    with settings.open() as vault:
        if update:
            secret_id = vault.update_secret_by_name(name, value, metadata)
            click.echo(f"updated {name} ({secret_id})", err=True)
        else:
            secret_id = vault.store_secret(name, value, metadata)
            click.echo(f"stored {name} ({secret_id})", err=True)


@cli.command()
@click.argument("name")
@click.option("-n", "--no-newline", is_flag=True, help="Do not print a newline after the value.")
@pass_settings
def get(settings: Settings, name: str, no_newline: bool) -> None:
    """Print the value of secret NAME to stdout."""
    with settings.open() as vault:
        value = vault.get_secret_by_name(name)
    if value is None:
        raise SecretNotFoundError(f"secret named {name!r} not found")
    # The bytes as stored: click.echo would strip ANSI escape sequences from a
    # value when stdout is not a terminal, and the locale's encoding may not be UTF-8.
    sys.stdout.buffer.write(value.encode("utf-8") + (b"" if no_newline else b"\n"))
    sys.stdout.buffer.flush()


@cli.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@pass_settings
def list_command(settings: Settings, as_json: bool) -> None:
    """List secrets: id, name, timestamps and metadata, never values."""
    with settings.open() as vault:
        listing = vault.list_secrets()
    if as_json:
        _echo_json(listing)
        return
    for entry in listing:
        meta = json.dumps(entry["metadata"], ensure_ascii=False) if entry["metadata"] else ""
        click.echo(f"{entry['id']}  {entry['updated_at'][:19]}  {entry['name']}  {meta}".rstrip())


@cli.command()
@click.argument("name")
@pass_settings
def rm(settings: Settings, name: str) -> None:
    """Delete secret NAME."""
    with settings.open() as vault:
        if not vault.delete_secret_by_name(name):
            raise SecretNotFoundError(f"secret named {name!r} not found")
    click.echo(f"deleted {name}", err=True)


@contextmanager
def _progress(label: str, enabled: bool) -> Iterator[ProgressCallback | None]:
    """Yield a progress callback that draws on a terminal, or None elsewhere."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    started = time.monotonic()

    def draw(done: int, total: int) -> None:
        rate = done / max(time.monotonic() - started, 1e-9)
        click.echo(f"\r{label}: {done} of {total} secrets ({rate:,.0f}/s)", nl=False, err=True)

    try:
        yield draw
    finally:
        click.echo("", err=True)


@cli.command()
@click.option("--master", is_flag=True, help="Rotate the master key instead of the data key.")
@click.option(
    "--keep-old", is_flag=True, help="With --master: keep the old master keys in the key file."
)
@click.option(
    "--use-primary",
    is_flag=True,
    help="With --master: re-wrap under the key file's first key instead of a new key.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@pass_settings
def rotate(
    settings: Settings, master: bool, keep_old: bool, use_primary: bool, as_json: bool
) -> None:
    """Re-encrypt every secret under a new data key, in one transaction.

    With --master, re-wrap the data keys under a new master key instead.
    """
    if (keep_old or use_primary) and not master:
        raise click.UsageError("--keep-old and --use-primary go with --master")
    with settings.open() as vault:
        if master:
            started = time.monotonic()
            key_id = vault.rotate_master_key(generate=not use_primary, prune=not keep_old)
            summary: dict[str, Any] = {
                "master_key_id": key_id,
                "seconds": round(time.monotonic() - started, 3),
            }
        else:
            with _progress("rotating", not as_json) as progress:
                result = vault.rotate_data_key(progress)
            summary = {
                "key_id": result.key_id,
                "secrets": result.secrets,
                "seconds": round(result.seconds, 3),
            }
    if as_json:
        _echo_json(summary)
    elif master:
        click.echo(f"master key rotated: data keys now wrapped by {summary['master_key_id']}")
    else:
        click.echo(
            f"rotated: {summary['secrets']} {_plural(summary['secrets'], 'secret')} "
            "re-encrypted under data key "
            f"{summary['key_id']} in {summary['seconds']:.2f} s"
        )


@cli.group()
def key() -> None:
    """Manage the master keys of the key file without re-wrapping data keys.

    Hosts that share one vault use these commands to add a new master key
    everywhere before ``rotate --master --use-primary`` re-wraps the data
    keys under it, and to remove the old key everywhere afterwards.
    """


def _key_file_path(settings: Settings) -> Path:
    """Return the key file that the key commands read and edit.

    Raises InvalidInputError when the master keys come from FERNVAULT_MASTER_KEY.
    """
    if settings.key_file is None and os.environ.get(keyfile.MASTER_KEY_ENV):
        raise InvalidInputError(
            f"the master keys come from {keyfile.MASTER_KEY_ENV}, not a key file: change "
            "that variable (keys separated by commas, primary first), or pass --key-file"
        )
    return Path(settings.key_file).expanduser() if settings.key_file else keyfile.default_key_file()


@contextmanager
def _edited_key_file(settings: Settings) -> Iterator[tuple[keyfile.MasterKeyRing, Path]]:
    """Lock the key file, then yield its keys as read under the lock, and its path."""
    path = _key_file_path(settings)
    with keyfile.key_file_lock(path):
        yield keyfile.read_key_file(path), path


def _master_key_ids_in_use(settings: Settings) -> dict[str, str]:
    """Return ``{data key id: id of the master key that wraps it}`` from the database."""
    database = settings.database()
    try:
        current = database.run("schema check", schema.current_revision, write=False)
        if current != schema.head_revision():
            raise SchemaError(
                f"{database.display_url} is at schema revision {current or 'empty'}; "
                "run: fernvault db upgrade"
            )
        rows = database.run("data key listing", repo.all_data_keys, write=False)
    finally:
        database.dispose()
    return {row.id: row.master_key_id for row in rows}


@key.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print the listing as JSON.")
@pass_settings
def key_list(settings: Settings, as_json: bool) -> None:
    """List the master key ids of the key file and the data keys each one wraps."""
    ring = keyfile.read_key_file(_key_file_path(settings))
    in_use = _master_key_ids_in_use(settings)
    listing: list[dict[str, Any]] = [
        {
            "master_key_id": master_key.key_id,
            "primary": index == 0,
            "data_keys": sorted(d for d, m in in_use.items() if m == master_key.key_id),
        }
        for index, master_key in enumerate(ring.keys)
    ]
    missing = sorted(set(in_use.values()) - {master_key.key_id for master_key in ring.keys})
    if as_json:
        _echo_json({"key_file": ring.source, "keys": listing, "missing": missing})
        return
    for entry in listing:
        role = "primary" if entry["primary"] else "standby"
        click.echo(f"{entry['master_key_id']}  {role}  wraps {len(entry['data_keys'])} data keys")
    for master_key_id in missing:
        click.echo(f"{master_key_id}  MISSING  wraps data keys but is not in {ring.source}")


def _read_master_key() -> keyfile.MasterKey:
    if sys.stdin is None or sys.stdin.isatty():
        text: str = click.prompt("Master key", hide_input=True)
    else:
        text = sys.stdin.read()
    keys = keyfile.parse_keys(text, "standard input")
    if len(keys) != 1:
        raise InvalidInputError(f"expected one master key on standard input, got {len(keys)}")
    return keys[0]


@key.command("add")
@click.option(
    "--generate", is_flag=True, help="Add a new random key instead of reading one from stdin."
)
@click.option(
    "--primary",
    is_flag=True,
    help="Make the key the first line, which wraps new data keys (default: a later line).",
)
@pass_settings
def key_add(settings: Settings, generate: bool, primary: bool) -> None:
    """Add a master key to the key file, read from stdin (or a hidden prompt).

    The data keys are not re-wrapped. Without --primary the key is only tried
    for unwrapping, so it can be added on every host before any host uses it.
    """
    added = keyfile.MasterKey.generate() if generate else _read_master_key()
    with _edited_key_file(settings) as (ring, path):
        others = [master_key for master_key in ring.keys if master_key.key_id != added.key_id]
        if primary:
            ordered = [added, *others]
        elif len(others) < len(ring.keys):
            ordered = list(ring.keys)  # already in the file: it keeps its place
        else:
            ordered = [*ring.keys, added]
        keyfile.replace_key_file(path, ordered)
    role = "primary" if ordered[0].key_id == added.key_id else "standby"
    click.echo(f"master key {added.key_id} is {role} in {ring.source}")


@key.command("promote")
@click.argument("master_key_id")
@pass_settings
def key_promote(settings: Settings, master_key_id: str) -> None:
    """Make MASTER_KEY_ID the first line of the key file, without re-wrapping data keys."""
    with _edited_key_file(settings) as (ring, path):
        chosen = [master_key for master_key in ring.keys if master_key.key_id == master_key_id]
        if not chosen:
            known = ", ".join(master_key.key_id for master_key in ring.keys)
            raise InvalidInputError(
                f"master key {master_key_id} is not in {ring.source} (it contains {known})"
            )
        others = [master_key for master_key in ring.keys if master_key.key_id != master_key_id]
        keyfile.replace_key_file(path, [chosen[0], *others])
    click.echo(f"master key {master_key_id} is primary in {ring.source}")


@key.command("prune")
@pass_settings
def key_prune(settings: Settings) -> None:
    """Remove the master keys that wrap no data key; the primary key always stays."""
    with _edited_key_file(settings) as (ring, path):
        needed = set(_master_key_ids_in_use(settings).values())
        missing = needed - {master_key.key_id for master_key in ring.keys}
        if missing:
            raise KeyFileError(
                f"data keys are wrapped by master keys {', '.join(sorted(missing))}, which are "
                f"not in {ring.source}; nothing was removed"
            )
        kept = [ring.primary, *(k for k in ring.keys[1:] if k.key_id in needed)]
        removed = [k.key_id for k in ring.keys if k not in kept]
        if removed:
            keyfile.replace_key_file(path, kept)
    click.echo(f"removed {len(removed)} master keys from {ring.source}, kept {len(kept)}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_settings
def verify(settings: Settings, as_json: bool) -> None:
    """Decrypt every secret; exit 1 if any fails."""
    with settings.open() as vault, _progress("verifying", not as_json) as progress:
        report = vault.verify(progress)
    if as_json:
        _echo_json({"total": report.total, "per_key": report.per_key, "failures": report.failures})
    else:
        for key_id, count in sorted(report.per_key.items()):
            click.echo(f"data key {key_id}: {count} secrets decrypt")
        for failure in report.failures:
            click.echo(f"FAILED {failure['id']} ({failure['name']}): {failure['error']}")
        click.echo(f"{report.total} secrets checked, {len(report.failures)} failed")
    if not report.ok:
        sys.exit(1)


@cli.command("import")
@click.argument("dotenv_file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--prefix", default="", help="Prepend this to every variable name.")
@click.option(
    "--skip-existing", is_flag=True, help="Import the other variables when some names exist."
)
@click.option(
    "--meta", multiple=True, metavar="KEY=VALUE", help="Metadata for every imported secret."
)
@pass_settings
def import_command(
    settings: Settings, dotenv_file: str, prefix: str, skip_existing: bool, meta: tuple[str, ...]
) -> None:
    """Store every variable of a dotenv file as a secret, in one transaction."""
    items = [(prefix + name, value) for name, value in _read_dotenv(dotenv_file)]
    with settings.open() as vault:
        try:
            stored = vault.store_secrets(items, _parse_meta(meta), skip_existing=skip_existing)
        except SecretExistsError as exc:
            raise SecretExistsError(f"{exc}, or import with --skip-existing") from None
    skipped = [name for name, _ in items if name not in stored]
    for name in skipped:
        click.echo(f"skipped {name}: a secret with this name exists", err=True)
    click.echo(f"imported {len(stored)} secrets from {dotenv_file}, skipped {len(skipped)}")


def _read_dotenv(source: str) -> list[tuple[str, str]]:
    """Parse a dotenv file ("-" for stdin) with python-dotenv's parser.

    Unlike ``dotenv_values``, which logs and skips a line it cannot parse,
    any such line, a name without "=", or a name given twice rejects the
    whole file, so an import never silently drops a secret. Messages give
    line numbers only: a malformed line may hold a value.
    """
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError(f"{source} is not a UTF-8 text file") from None
    except OSError as exc:
        raise InvalidInputError(f"cannot read {source}: {exc.strerror}") from None

    items: list[tuple[str, str]] = []
    problems: list[str] = []
    first_line: dict[str, int] = {}
    for binding in parse_stream(io.StringIO(text)):
        line = binding.original.line
        if binding.error:
            problems.append(f"line {line} cannot be parsed")
        elif binding.key is None:
            continue  # a comment or a blank line
        elif binding.value is None:
            problems.append(f"line {line} has no '=' after the name")
        elif binding.key in first_line:
            problems.append(f"line {line} repeats the name on line {first_line[binding.key]}")
        else:
            first_line[binding.key] = line
            items.append((binding.key, binding.value))
    if problems:
        raise InvalidInputError(f"{source}: " + "; ".join(problems) + "; nothing was imported")
    return items


@cli.group()
def db() -> None:
    """Manage the database schema."""


def _with_database(settings: Settings, action: Callable[[Database], None]) -> None:
    database = settings.database()
    try:
        action(database)
    finally:
        database.dispose()


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@pass_settings
def db_upgrade(settings: Settings, revision: str) -> None:
    """Upgrade the schema (create it in an empty database)."""

    def run(database: Database) -> None:
        before, after = schema.upgrade(database, revision)
        click.echo(f"{database.display_url}: schema {before or 'empty'} -> {after}")

    _with_database(settings, run)


@db.command("current")
@pass_settings
def db_current(settings: Settings) -> None:
    """Print the schema revision of the database and the one this version needs."""

    def run(database: Database) -> None:
        current = database.run("schema check", schema.current_revision, write=False)
        head = schema.head_revision()
        state = "up to date" if current == head else "run: fernvault db upgrade"
        click.echo(f"{database.display_url}: {current or 'empty'} (head {head}, {state})")

    _with_database(settings, run)


def _one_line_warning(
    message: Warning | str, category: type[Warning], *_args: object, **_kwargs: object
) -> str:
    return f"fernvault: warning: {message}\n"


def main() -> None:
    # A warning, such as a key file readable by others, is one line on stderr
    # like the errors, without Python's source line.
    warnings.formatwarning = _one_line_warning
    cli(prog_name="fernvault")


def _plural(count: int, noun: str) -> str:
    """Return ``noun`` for a count of one, else its plural."""
    return noun if count == 1 else f"{noun}s"
