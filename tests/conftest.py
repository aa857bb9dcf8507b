import json
from pathlib import Path

import pytest

from cnndsl.loader import zoo_index


def zoo_names() -> list[str]:
    return sorted(zoo_index())


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run the tests marked slow (big networks)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a long test (big networks), run with --runslow")


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
