"""The built wheel installs into a fresh environment, carries the migrations and runs the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_and_runs(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(dist),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    wheel = next(dist.glob("fernvault-*.whl"))

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    python = env_dir / "bin" / "python"
    # A real install with the declared dependencies (served from pip's cache
    # after `make venv`), so a dependency missing from pyproject.toml fails here.
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", f"{wheel}[postgres]"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    target_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()

    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FERNVAULT_", "PYTHONPATH"))}
    env["HOME"] = str(tmp_path / "home")
    fernvault = [str(python), "-m", "fernvault", "--key-file", str(work / "w.key")]

    def run(*args: str, stdin: str | None = None) -> str:
        result = subprocess.run(
            [*fernvault, *args],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=work,
            env=env,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    location = subprocess.run(
        [str(python), "-c", "import fernvault.schema as s; print(s.migrations_path())"],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        check=True,
    ).stdout.strip()
    assert location.startswith(target_site), location

    run("db", "upgrade")
    run("init")
    run("put", "token", stdin="from-the-wheel")
    assert run("get", "token") == "from-the-wheel\n"
