"""Build the wheel and the sdist, install each into a fresh virtual environment,
and use it there: import the package, check py.typed shipped, run the CLI.

    python scripts/check_package.py WORKDIR     (tox -e package)
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECK = (
    "import importlib.resources, onconflict, onconflict.sync;"
    "assert importlib.resources.files('onconflict').joinpath('py.typed').is_file();"
    "print(onconflict.__version__)"
)


def run(*args: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


def main(work: Path) -> None:
    dist = work / "dist"
    run(sys.executable, "-m", "build", "--outdir", dist, ROOT)
    artifacts = sorted(dist.glob("onconflict-*.whl")) + sorted(dist.glob("onconflict-*.tar.gz"))
    assert len(artifacts) == 2, artifacts
    for artifact in artifacts:
        env = work / f"venv-{artifact.suffix.strip('.')}"
        venv.EnvBuilder(with_pip=True, clear=True).create(env)
        python = env / "bin" / "python"
        run(
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            f"onconflict[cli] @ {artifact.resolve().as_uri()}",
        )
        version = run(python, "-c", CHECK, cwd=work)  # not from the source tree
        cli = run(env / "bin" / "onconflict", "--version", cwd=work)
        assert version in cli, (version, cli)
        print(f"{artifact.name}: installs, imports, ships py.typed; {cli}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
