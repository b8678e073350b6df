"""requirements.lock is what `make` installs: every package pinned with its hashes, torch's
CPU build among them, every range pyproject.toml declares satisfied by it, and (in the
venv `make` built) exactly the versions installed. The Dockerfile takes its versions from
it too. `make test-latest` and `make test-lowest` run the suite outside the lock
(STATPAIR_UNLOCKED=1), where only the installed-versions check does not apply."""

from __future__ import annotations

import os
import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"


def locked() -> dict[str, tuple[Version, int]]:
    """Each locked package's version and how many hashes it carries."""
    pins: dict[str, tuple[Version, int]] = {}
    name = ""
    for line in LOCK.read_text().splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.startswith("--hash=sha256:"):
            version, hashes = pins[name]
            pins[name] = (version, hashes + 1)
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)( ; [^\\]+)?( \\)?", text)
        assert match, f"requirements.lock: not a pinned requirement: {line!r}"
        name = canonicalize_name(match.group(1))
        pins[name] = (Version(match.group(2)), 0)
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = [*project["project"]["dependencies"], *project["build-system"]["requires"]]
    for extra in project["project"]["optional-dependencies"].values():
        reqs += extra
    return [Requirement(r) for r in reqs]


def test_every_package_is_pinned_with_its_hashes_and_torch_is_the_cpu_build() -> None:
    pins = locked()
    assert len(pins) > 50
    assert [n for n, (_, hashes) in pins.items() if hashes == 0] == []
    assert pins["torch"][0] == Version("2.13.0+cpu")  # never PyPI's CUDA build
    assert {"pip", "setuptools"} <= set(pins)  # the installers are locked too


def test_the_lock_satisfies_every_declared_range() -> None:
    pins = locked()
    for req in declared():
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is declared in pyproject.toml but not locked: run make lock"
        version = pins[name][0]
        # a local version (+cpu) satisfies ==2.13.0 as pip takes it (PEP 440)
        assert req.specifier.contains(version, prereleases=True) or req.specifier.contains(
            Version(version.public), prereleases=True
        ), f"requirements.lock has {name}=={version}, outside {req}: run make lock"


@pytest.mark.skipif(
    os.environ.get("STATPAIR_UNLOCKED") == "1", reason="make test-latest/test-lowest: outside the lock"
)
def test_the_venv_holds_exactly_the_lock() -> None:
    wrong = []
    for name, (version, _) in locked().items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            wrong.append(f"{name}: not installed, {version} locked")
            continue
        if installed != version:
            wrong.append(f"{name}: {installed} installed, {version} locked")
    assert wrong == [], "the venv is not the lock (make install reinstalls it): " + "; ".join(wrong)


def test_make_and_the_images_install_from_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet --require-hashes --no-deps $(INDEX) -r $(LOCK)" in makefile
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.count("requirements.lock > /tmp/constraints.txt") == 2  # both images
    assert not re.search(r"pip install [^\n]*==", dockerfile), "a version pinned outside the lock"


def test_the_compose_mlflow_image_is_tagged_with_the_locked_version() -> None:
    compose = (ROOT / "compose.yaml").read_text()
    assert f"image: statpair-mlflow:{locked()['mlflow'][0]}" in compose
