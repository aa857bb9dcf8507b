"""cnndsl: a declarative language for convolutional networks, and its compiler.

>>> import cnndsl
>>> net = cnndsl.loads("network t: input 3x32x32  conv5-10(p=2)")
>>> net.params, net.graph.node("conv1").shape
(760, (10, 32, 32))
"""

from . import graphviz, summary  # noqa: F401 - they register Network's tables and pictures (Network.summary())
from .api import build, build_flax, build_jax, build_torch, compile, jax_to_torch, load, loads, torch_to_jax
from .errors import CnnDslError, CnnDslWarning
from .network import Network
from .passes.limits import SizeLimits
from .search import search
from .variants import Space, Variant, variants
from .version import __version__ as __version__

__all__ = ["CnnDslError", "CnnDslWarning", "Network", "SizeLimits", "Space", "Variant", "build", "build_flax", "build_jax", "build_torch", "compile",
           "jax_to_torch", "load", "loads", "search", "torch_to_jax", "variants"]
