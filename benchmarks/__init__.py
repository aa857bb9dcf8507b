"""Benchmarks of cnndsl: generated models against torchvision's, the inference build, JAX, the compiler.

``python -m benchmarks`` runs them all and prints one table (also written to
``benchmarks/RESULTS.md``); each module also runs alone (``python -m
benchmarks.vs_torchvision``). Every ratio is measured side by side in one run:
the two contenders alternate within each repetition and the ratio is of the
medians, with the same number of threads (``torch.set_num_threads``, 2 by
default, ``CNNDSL_BENCH_THREADS`` to change it).
"""
