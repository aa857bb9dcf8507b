"""cnndsl: a declarative language for convolutional networks, and its compiler.

>>> import cnndsl
>>> net = cnndsl.loads("network t: input 3x32x32  conv5-10(p=2)")
>>> net.params, net.graph.node("conv1").shape
(760, (10, 32, 32))
"""

from .api import build, load, loads
from .errors import CnnDslError, CnnDslWarning
from .network import Network

__all__ = ["CnnDslError", "CnnDslWarning", "Network", "build", "load", "loads"]
__version__ = "0.1.0"
