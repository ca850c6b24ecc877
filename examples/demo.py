"""Walk through fernvault on the example files, in a throwaway folder.

Runs the real command line for each step and prints what it shows:
import a dotenv file, move the credentials of a JSON configuration into the
vault, list, rotate the data key, verify, and read values back.
Run it with `make demo`, or `python examples/demo.py [--url URL]` to use a
PostgreSQL database instead of the SQLite file beside the key.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from fernvault import SecretManager, decrypt_configuration, encrypt_configuration

EXAMPLES = Path(__file__).resolve().parent
CONFIG_SECRETS = [
    "database.password",
    "payments.api_key",
    "replicas.0.password",
    "replicas.1.password",
]


def step(title: str) -> None:
    print(f"\n== {title}")


def fernvault(key_file: Path, url: str | None, *args: str, show: bool = True) -> str:
    global_options = ["--key-file", str(key_file)] + (["--url", url] if url else [])
    shown = " ".join(shlex.quote(arg) for arg in ["fernvault", *args])
    print(f"$ {shown}")
    result = subprocess.run(
        [sys.executable, "-m", "fernvault", *global_options, *args],
        capture_output=True,
        text=True,
        check=False,
    )
    output = result.stdout + result.stderr
    print(output.rstrip() if show else "(output not shown)")
    if result.returncode != 0:
        raise SystemExit(f"demo step failed with exit status {result.returncode}")
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="database URL (default: SQLite beside the key file)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fernvault-demo-") as folder:
        key_file = Path(folder) / "vault" / "demo.key"
        os.environ.pop("FERNVAULT_MASTER_KEY", None)
        print(f"throwaway vault in {key_file.parent}")

        step("create the vault")
        fernvault(key_file, args.url, "init")

        step("import a dotenv file")
        fernvault(key_file, args.url, "import", str(EXAMPLES / "webapp.env"))

        step("move the credentials of a JSON configuration into the vault")
        config = json.loads((EXAMPLES / "service-config.json").read_text())
        with SecretManager(key_file, args.url) as vault:
            encrypted = encrypt_configuration(config, CONFIG_SECRETS, manager=vault)
            print(json.dumps(encrypted, indent=2))
            restored = decrypt_configuration(encrypted, manager=vault)
        print(f"decrypt_configuration restores the original: {restored == config}")

        step("list (names and metadata only, never values)")
        fernvault(key_file, args.url, "ls")

        step("rotate the data key: every secret re-encrypted in one transaction")
        fernvault(key_file, args.url, "rotate")

        step("verify that every secret decrypts")
        fernvault(key_file, args.url, "verify")

        step("read values back")
        fernvault(key_file, args.url, "get", "DATABASE_URL")
        pem = fernvault(key_file, args.url, "get", "JWT_SIGNING_KEY", show=False).splitlines()
        print(f"the multi-line PEM key came back whole: {len(pem)} lines, {pem[0]} ... {pem[-1]}")


if __name__ == "__main__":
    main()
