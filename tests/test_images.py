"""The images' inputs, offline: what the Python-only image leaves out is never imported by
the processes it runs, and the host's pip settings reach a build only as files outside the
repository. `make images` / `make pod-test` build and run the images themselves.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "scripts" / "image-requirements"
PIP_CONFIG = ROOT / "scripts" / "pip-build-config"
# What each image's extras leave out (scripts/image-requirements), as the modules the
# left-out distributions provide.
PYTHON_LEFT_OUT = ["rpy2", "cachetools", "matplotlib", "tqdm", "msgspec"]
SCORER_LEFT_OUT = [
    "kubernetes_asyncio",
    "matplotlib",
    "tqdm",
    "msgspec",
    "aiohttp",
    "jwt",
    "yaml",
]


def _image_requirement_names(role: str) -> set[str]:
    """The distribution names scripts/image-requirements lists for `role`'s image."""
    result = subprocess.run(
        [sys.executable, str(REQUIREMENTS), role],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return {line.split(">")[0].split("=")[0].split("<")[0] for line in result.stdout.split()}


def test_the_python_image_carries_no_r() -> None:
    names = _image_requirement_names("python")
    assert "rpy2" not in names
    assert {"aiohttp", "prometheus-client", "kubernetes-asyncio", "PyJWT"} <= names


# What each image's processes import to start, with what that image leaves out made
# unimportable (module names, not distribution names). The scorer's R side is run for
# real by `make pod-test`; here its modules are imported without starting R.
@pytest.mark.parametrize(
    ("left_out", "module", "commands"),
    [
        (PYTHON_LEFT_OUT, module, ("sidecar", "autoscaler", "activator"))
        for module in (
            "rscore.sidecar.app",
            "rscore.autoscaler.serve",
            "rscore.activator.serve",
            "rscore.r_scorer.pool",
        )
    ]
    + [
        (SCORER_LEFT_OUT, module, ("scorer", "scorer-live"))
        for module in (
            "rscore.r_scorer.supervisor",
            "rscore.r_scorer.worker",
            "rscore.r_scorer.liveness",
        )
    ],
)
def test_each_images_processes_start_without_what_it_leaves_out(
    left_out: list[str], module: str, commands: tuple[str, ...]
) -> None:
    code = (
        "import sys\n"
        f"for name in {left_out!r}: sys.modules[name] = None\n"
        f"import {module}\n"
        "from click.testing import CliRunner\n"
        "from rscore.cli.main import cli\n"
        f"for command in {commands!r}:\n"
        "    result = CliRunner().invoke(cli, [command, '--help'])\n"
        "    assert result.exit_code == 0, (command, result.output, result.exception)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_the_scorer_image_carries_no_autoscaler_client() -> None:
    names = _image_requirement_names("scorer")
    assert "kubernetes-asyncio" not in names
    assert {"rpy2", "cachetools", "orjson"} <= names
    assert not {"aiohttp", "matplotlib", "msgspec"} & names


def test_a_missing_extra_is_an_error(tmp_path: Path) -> None:
    # The script reads pyproject.toml beside it: a copy without the `serve` extra is refused.
    (tmp_path / "scripts").mkdir()
    script = tmp_path / "scripts" / "image-requirements"
    script.write_text(REQUIREMENTS.read_text())
    pyproject = (ROOT / "pyproject.toml").read_text()
    (tmp_path / "pyproject.toml").write_text(pyproject.replace("\nserve = [", "\nserved = ["))
    result = subprocess.run(
        [sys.executable, str(script), "python"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "no such extra in pyproject.toml: ['serve']" in result.stderr


def test_each_image_installs_its_extras_and_every_core_dependency() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {r.split(">")[0].split("=")[0] for r in project["dependencies"]}
    assert core <= _image_requirement_names("python")
    assert core <= _image_requirement_names("scorer")


def test_pip_settings_go_to_files_outside_the_repository(tmp_path: Path) -> None:
    pip = tmp_path / "pip"
    # A pip whose `config list` shows a local index, a find-links folder and an env value.
    index, wheels = tmp_path / "pypi", tmp_path / "wheels"
    (index / "simple").mkdir(parents=True)
    wheels.mkdir()
    pip.write_text(
        "#!/bin/sh\n"
        f"echo \"global.extra-index-url='file://{index}/simple'\"\n"
        f"echo \"global.find-links='{wheels}'\"\n"
        "echo \"global.constraint='/etc/xdg/pip/constraints.txt'\"\n"
        "echo \":env:.default-timeout='180'\"\n"
    )
    pip.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run(
        [sys.executable, str(PIP_CONFIG), str(pip), str(out)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert sorted(result.stdout.split()) == sorted(
        [f"--volume={index}:{index}:ro", f"--volume={wheels}:{wheels}:ro"]
    )
    conf = (out / "pip.conf").read_text().splitlines()
    assert conf == [
        "[global]",
        f"extra-index-url = file://{index}/simple",
        f"find-links = {wheels}",
        "default-timeout = 180",
        "cert = /etc/pip-ca.crt",
    ]  # the host's constraints file is not the image's business
    assert (out / "pip-ca.crt").stat().st_size > 0
