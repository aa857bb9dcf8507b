import pytest

from cnndsl.loader import zoo_index


def zoo_names() -> list[str]:
    return sorted(zoo_index())


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
