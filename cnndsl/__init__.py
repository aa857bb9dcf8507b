"""cnndsl: a declarative language for convolutional networks, and its compiler.

>>> import cnndsl
>>> net = cnndsl.loads("network t: input 3x32x32  conv5-10(p=2)")
>>> net.params, net.graph.node("conv1").shape
(760, (10, 32, 32))
"""

from cnndsl.api import (
    build,
    build_flax,
    build_jax,
    build_supernet,
    build_torch,
    compile,
    jax_to_torch,
    load,
    loads,
    torch_to_jax,
)
from cnndsl.errors import CnnDslError, CnnDslWarning
from cnndsl.ir.network import Network
from cnndsl.passes.limits import SizeLimits
from cnndsl.report import graphviz, summary  # noqa: F401 - they register Network's tables and pictures (Network.summary())
from cnndsl.search.study import search
from cnndsl.search.variants import Space, Variant, variants
from cnndsl.version import __version__ as __version__

__all__ = ["CnnDslError", "CnnDslWarning", "Network", "SizeLimits", "Space", "Variant", "build", "build_flax", "build_jax", "build_supernet", "build_torch", "compile",
           "jax_to_torch", "load", "loads", "search", "torch_to_jax", "variants"]
