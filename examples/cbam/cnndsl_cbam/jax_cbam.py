"""CBAM for the JAX backend: ``init_cbam`` makes one layer's parameters, ``cbam`` runs it on an NHWC batch. Both
are copied into every generated JAX file that uses the op (``source=``), so they use only ``jax`` and ``jnp``."""

import jax
import jax.numpy as jnp


def init_cbam(key, *, in_channels, reduction, k, dtype):
    """Parameters of one CBAM layer, drawn as PyTorch's default initialises its convolutions: U(+-1/sqrt(fan_in))."""
    hidden = max(1, in_channels // reduction)
    keys = jax.random.split(key, 5)

    def uniform(key, shape, fan_in):
        bound = 1.0 / fan_in ** 0.5
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return {"fc1_kernel": uniform(keys[0], (in_channels, hidden), in_channels),
            "fc1_bias": uniform(keys[1], (hidden,), in_channels),
            "fc2_kernel": uniform(keys[2], (hidden, in_channels), hidden),
            "fc2_bias": uniform(keys[3], (in_channels,), hidden),
            "spatial_kernel": uniform(keys[4], (k, k, 2, 1), 2 * k * k)}


def cbam(params, x, *, in_channels, reduction, k):
    """CBAM on an NHWC batch (the channel gate, then the spatial gate)."""
    del in_channels, reduction  # the parameters' shapes hold them

    def mlp(v):
        h = jax.nn.relu(v @ params["fc1_kernel"] + params["fc1_bias"])
        return h @ params["fc2_kernel"] + params["fc2_bias"]

    gate = jax.nn.sigmoid(mlp(x.mean((1, 2))) + mlp(x.max((1, 2))))
    x = x * gate[:, None, None, :]
    pooled = jnp.stack([x.mean(-1), x.max(-1)], -1)
    kernel = params["spatial_kernel"].astype(jnp.result_type(x, params["spatial_kernel"]))
    s = jax.lax.conv_general_dilated(pooled, kernel, (1, 1), [(k // 2, k // 2)] * 2,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return x * jax.nn.sigmoid(s)
