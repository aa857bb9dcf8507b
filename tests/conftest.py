"""Shared fixtures and checks, and the collection of the package's doctests.

Golden files (``tests/golden/<backend>/<net>.py``) hold the code each backend generates for a few
networks; a missing or different one fails. After a deliberate change to the generated code, rewrite
them with ``CNNDSL_REGEN_GOLDEN=1 python -m pytest tests/test_torch_backend.py tests/test_jax_backend.py``
and review the diff.

The default run (``python -m pytest``, whose ``testpaths`` include ``cnndsl`` and ``backends``) also
runs every docstring example of the package. Each module is imported under its installed name
(``backends/jax.py`` as ``cnndsl.backends.jax``, as the package-dir mapping and the editable install
lay it out), never as a second copy under a name made from its path (``backends.jax``); ``__main__``
modules are left alone, and a module whose optional dependency is missing is skipped, not an error.
With an explicit ``--doctest-modules`` pytest's own collection takes over (and names modules by path).
"""

import functools
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

import pytest
from _pytest.doctest import DoctestModule  # private, but the one way to collect doctests like pytest does

import cnndsl
from cnndsl.front.loader import zoo_index

#: Set to 1 to (re)write the golden files instead of comparing with them; one name for every backend.
REGEN_GOLDEN = "CNNDSL_REGEN_GOLDEN"

#: The ruff rules every backend's generated code passes: pycodestyle errors and warnings (E501, lines
#: of at most 120 characters, included), pyflakes, isort, bugbear and pyupgrade.
GENERATED_CODE_RUFF = ("--isolated", "--no-cache", "--select", "E,F,W,I,B,UP", "--line-length", "120")

#: The zoo networks whose generated code :func:`assert_ruff_clean` checks, for every backend: plain
#: stacks, residual and inception blocks, aux heads, an encoder-decoder, the longest names in the zoo.
RUFF_NETS = ("lenet5", "alexnet", "vgg16", "resnet18", "resnet50", "googlenet_torchvision", "inception_v4",
             "inception_resnet_v2", "unet")


def zoo_names() -> list[str]:
    return sorted(zoo_index())


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run the tests marked slow (big networks)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a long test (big networks), run with --runslow")
    # A plugin, not a hook of this conftest: conftest hooks see only the files under tests/.
    if not config.pluginmanager.has_plugin("cnndsl-package-doctests"):
        config.pluginmanager.register(PackageDoctests(), "cnndsl-package-doctests")


@functools.cache
def package_dirs() -> dict[Path, str]:
    """Each folder of the package -> its name (``.../backends`` -> ``cnndsl.backends``): the packages that
    pyproject.toml lists, where the import system finds them (pkgutil does not see the package-dir mapping)."""
    config = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    found = {}
    for name in config["tool"]["setuptools"]["packages"]:
        for folder in importlib.import_module(name).__path__:
            found[Path(folder).resolve()] = name
    return found


class RealNameDoctestModule(DoctestModule):
    """A module's doctests, the module imported by its package name rather than by its path."""

    def _getobj(self):
        name = self.module_name
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and e.name.partition(".")[0] != "cnndsl":  # an optional dependency (pygments, ...)
                pytest.skip(f"{name} needs {e.name.partition('.')[0]}, which is not installed")
            raise

    @property
    def module_name(self) -> str:
        package = package_dirs()[self.path.parent.resolve()]
        return package if self.path.stem == "__init__" else f"{package}.{self.path.stem}"


class PackageDoctests:
    """Collects the doctests of the package's own modules (see the module docstring)."""

    def pytest_collect_file(self, file_path: Path, parent):
        if parent.config.getoption("doctestmodules", False):  # pytest's own doctest collection does it
            return None
        if file_path.suffix != ".py" or file_path.stem == "__main__":  # running __main__ runs the CLI
            return None
        if file_path.parent.resolve() not in package_dirs():
            return None
        return RealNameDoctestModule.from_parent(parent, path=file_path)


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def zoo():
    """Every shipped network, loaded once per test session."""
    import cnndsl

    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = cnndsl.load(name)
        return cache[name]

    return get


PEER_FIXTURES = Path(__file__).parent / "peers" / "fixtures"


def peer_fixture(peer: str) -> dict:
    """A torchvision/timm peer's recorded state_dict and counts (tests/peers/make_fixtures.py wrote them)."""
    path = PEER_FIXTURES / f"{peer}.json"
    if not path.exists():
        pytest.skip(f"no peer fixture {path.name} (written by tests/peers/make_fixtures.py)")
    return json.loads(path.read_text())


def check_golden(backend: str, name: str, source: str) -> None:
    """``source`` equals ``tests/golden/<backend>/<name>.py``, which must exist; with
    ``CNNDSL_REGEN_GOLDEN=1`` the file is (re)written first (then review the diff)."""
    path = Path(__file__).parent / "golden" / backend / f"{name}.py"
    if os.environ.get(REGEN_GOLDEN) == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    assert path.exists(), f"no golden file {path}: run with {REGEN_GOLDEN}=1 to create it, and review it"
    assert source == path.read_text(encoding="utf-8"), (
        f"the {backend} code generated for {name} changed; review the diff, then rerun with {REGEN_GOLDEN}=1")


def assert_ruff_clean(backend: str, tmp_path: Path, names=RUFF_NETS) -> dict[str, str]:
    """Compile each network with ``backend``, check the files with :data:`GENERATED_CODE_RUFF` (one ruff
    run for all) and return the sources by network name."""
    sources = {}
    for name in names:
        sources[name] = cnndsl.compile(name, backend=backend)
        (tmp_path / f"{name}.py").write_text(sources[name], encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "ruff", "check", *GENERATED_CODE_RUFF, str(tmp_path)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return sources
