"""The fuzz harness for cnndsl (see :mod:`fuzz.harness`); run it with ``python -m fuzz``."""
