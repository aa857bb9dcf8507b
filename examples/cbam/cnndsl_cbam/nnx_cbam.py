"""CBAM for Flax NNX. The generated Flax file imports this module (``module=``): it runs where this package is
installed."""

import jax
import jax.numpy as jnp
from flax import nnx


class CBAM(nnx.Module):
    """CBAM on an NHWC batch; its parameters are the JAX backend's leaves, as attributes."""

    def __init__(self, *, in_channels: int, reduction: int, k: int, rngs: nnx.Rngs) -> None:
        hidden = max(1, in_channels // reduction)
        self.k = k

        def uniform(shape, fan_in):
            bound = 1.0 / fan_in ** 0.5
            return nnx.Param(jax.random.uniform(rngs.params(), shape, jnp.float32, -bound, bound))

        self.fc1_kernel = uniform((in_channels, hidden), in_channels)
        self.fc1_bias = uniform((hidden,), in_channels)
        self.fc2_kernel = uniform((hidden, in_channels), hidden)
        self.fc2_bias = uniform((in_channels,), hidden)
        self.spatial_kernel = uniform((k, k, 2, 1), 2 * k * k)

    def __call__(self, x: jax.Array) -> jax.Array:
        def mlp(v):
            h = jax.nn.relu(v @ self.fc1_kernel[...] + self.fc1_bias[...])
            return h @ self.fc2_kernel[...] + self.fc2_bias[...]

        x = x * jax.nn.sigmoid(mlp(x.mean((1, 2))) + mlp(x.max((1, 2))))[:, None, None, :]
        pooled = jnp.stack([x.mean(-1), x.max(-1)], -1)
        pad = self.k // 2
        s = jax.lax.conv_general_dilated(pooled, self.spatial_kernel[...], (1, 1), [(pad, pad)] * 2,
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return x * jax.nn.sigmoid(s)
