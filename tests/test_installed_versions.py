"""`make setup` installs exactly the versions locked in constraints.txt."""

from importlib import metadata
from pathlib import Path

import pytest

LOCK = Path(__file__).resolve().parents[1] / "constraints.txt"


def locked_versions() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


# Extras that only show loss curves (runtime.logger): no result depends on their versions, and
# make setup does not install them.
UNLOCKED_EXTRAS = ("tensorboard", "mlflow")


def test_every_dependency_of_ssl3d_is_locked():
    requirements = [
        requirement
        for requirement in metadata.requires("ssl3d") or []
        if not any(f'extra == "{extra}"' in requirement for extra in UNLOCKED_EXTRAS)
    ]
    names = {
        requirement.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip()
        for requirement in requirements
    }
    missing = sorted(n for n in names if n.lower().replace("_", "-") not in locked_versions())
    assert not missing, f"not in constraints.txt: {missing}"


@pytest.mark.parametrize("name, version", sorted(locked_versions().items()))
def test_the_installed_version_is_the_locked_one(name, version):
    try:
        installed = metadata.version(name)
    except metadata.PackageNotFoundError:
        pytest.skip(f"{name} is an optional dependency not installed here")
    assert installed == version
