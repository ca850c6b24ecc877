"""The built wheel carries the migrations and runs the CLI from a fresh environment."""

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
    venv.EnvBuilder(with_pip=False, system_site_packages=False).create(env_dir)
    python = env_dir / "bin" / "python"
    # Reuse this environment's dependencies; install only the wheel itself.
    site = subprocess.run(
        [sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    target_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(target_site, "deps.pth").write_text(site + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", target_site, str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )

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
