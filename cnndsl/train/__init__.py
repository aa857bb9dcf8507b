"""Training a built network on a shipped dataset, in PyTorch (torch_loop) and JAX (jax_loop), over shared data (data)."""
