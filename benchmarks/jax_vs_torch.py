"""The generated JAX and Flax NNX models, jitted, against the generated PyTorch model (eager): same work, same
threads, same weights (the PyTorch model's, converted with ``cnndsl.torch_to_jax`` and ``torch_to_flax``).

JAX's CPU thread pool is set through XLA_FLAGS before jax is imported
(``--xla_cpu_multi_thread_eigen`` with ``intra_op_parallelism_threads``), to
match torch.set_num_threads. Also: jit compile time for the deepest networks.

Rows: JAX (``jax.jit`` of ``apply``) inference at batch 1 and 8 and a training step; Flax NNX
(``cnndsl.build_flax``, ``nnx.jit``) inference at batch 1 and 8; jit compile time of the deepest networks.

Speed ratio = PyTorch time / JAX (Flax) time.
"""

from __future__ import annotations

import os
import sys
import time

from .common import QUICK, THREADS, Row, ms, side_by_side, table

MODEL, SIZE = "resnet18", 224
DEEP = ("resnet152", "inception_resnet_v2")


def run() -> list[Row]:
    os.environ.setdefault("XLA_FLAGS", f"--xla_cpu_multi_thread_eigen=true "
                                       f"intra_op_parallelism_threads={THREADS}")
    try:
        import jax
        import jax.numpy as jnp
        import torch
    except ImportError as e:
        return [Row("JAX", "all", "-", "-", None, f"skipped: {e.name} is not installed (pip install jax torch)")]
    import cnndsl
    from cnndsl import api

    torch.set_num_threads(THREADS)
    reps = 3 if QUICK else 5
    rows = []
    from cnndsl.backends.jax_weights import torch_to_jax

    net = cnndsl.load(MODEL)
    torch.manual_seed(0)
    tm = api.build_torch(net).eval()
    jm = api.build_jax(net)
    variables = torch_to_jax(net, tm.state_dict())
    infer = jax.jit(lambda v, x: jm.apply(v, x, train=False))
    for batch in (1, 8):
        xt = torch.randn(batch, 3, SIZE, SIZE)
        xj = jnp.asarray(xt.permute(0, 2, 3, 1).numpy())
        infer(variables, xj).block_until_ready()
        with torch.inference_mode():
            t = side_by_side({"ours": lambda xj=xj: infer(variables, xj).block_until_ready(),
                                 "theirs": lambda xt=xt: tm(xt)},
                             reps if batch == 1 else reps - 2)
        rows.append(Row("JAX", f"{MODEL} inference batch {batch}: jax.jit vs PyTorch eager", ms(t["ours"]),
                        ms(t["theirs"]), t["theirs"] / t["ours"], "cnndsl = JAX, reference = generated PyTorch"))
    rows += flax_rows(net, tm, reps)

    batch = 4
    xt = torch.randn(batch, 3, SIZE, SIZE)
    yt = torch.randint(0, 1000, (batch,))
    xj, yj = jnp.asarray(xt.permute(0, 2, 3, 1).numpy()), jnp.asarray(yt.numpy())

    def loss_fn(params, stats, x, y):
        out, new_stats = jm.apply({"params": params, "batch_stats": stats}, x, train=True,
                                  rng=jax.random.PRNGKey(1))
        outs = out if isinstance(out, tuple) else (out,)
        loss = sum(-jnp.take_along_axis(jax.nn.log_softmax(o), y[:, None], 1).mean() for o in outs)
        return loss, new_stats

    @jax.jit
    def jstep(params, stats, x, y):
        (_, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, x, y)
        return jax.tree_util.tree_map(lambda p, g: p - 1e-3 * g, params, grads), new_stats

    state = [variables["params"], variables.get("batch_stats", {})]

    def jax_step():
        state[0], state[1] = jstep(state[0], state[1], xj, yj)
        jax.block_until_ready(state[0])

    tm.train()
    opt = torch.optim.SGD(tm.parameters(), lr=1e-3)

    def torch_step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(tm(xt), yt).backward()
        opt.step()

    t0 = time.perf_counter()
    jax_step()
    compile_s = time.perf_counter() - t0
    t = side_by_side({"ours": jax_step, "theirs": torch_step}, reps - 2)
    rows.append(Row("JAX", f"{MODEL} training step batch {batch}: jax.jit vs PyTorch eager", ms(t["ours"]),
                    ms(t["theirs"]), t["theirs"] / t["ours"], f"jit compile of the step {compile_s:.1f} s excluded"))
    for name in DEEP:
        m = api.build_jax(name)
        v = m.init(jax.random.PRNGKey(0))
        c, h, w = cnndsl.load(name).input_shape
        x = jnp.zeros((1, h, w, c), jnp.float32)
        t0 = time.perf_counter()
        jax.jit(lambda v, x, m=m: m.apply(v, x, train=False)).lower(v, x).compile()
        rows.append(Row("JAX", f"{name} jax.jit compile time (inference, batch 1)", f"{time.perf_counter() - t0:.1f} s",
                        "-", None, ""))
    return rows


def flax_rows(net, tm, reps: int) -> list[Row]:
    """Flax NNX inference under ``nnx.jit`` (batch 1 and 8) against the PyTorch model ``tm`` (eager), the Flax
    model holding ``tm``'s weights."""
    import jax.numpy as jnp
    import torch

    try:
        from flax import nnx
    except ImportError:
        return [Row("Flax NNX", "all", "-", "-", None, "skipped: flax is not installed (pip install flax)")]
    from cnndsl.backends.flax import torch_to_flax

    fm = torch_to_flax(net, tm.state_dict())
    fm.eval()
    infer = nnx.jit(lambda m, x: m(x))
    rows = []
    for batch in (1, 8):
        xt = torch.randn(batch, *net.input_shape)
        xj = jnp.asarray(xt.permute(0, 2, 3, 1).numpy())
        with torch.inference_mode():
            want = tm(xt).numpy()
        got = infer(fm, xj)
        err = float(jnp.abs(got - want).max() / abs(want).max())  # same weights: the outputs agree
        with torch.inference_mode():
            t = side_by_side({"ours": lambda xj=xj: infer(fm, xj).block_until_ready(), "theirs": lambda xt=xt: tm(xt)},
                             reps if batch == 1 else reps - 2)
        rows.append(Row("Flax NNX", f"{MODEL} inference batch {batch}: nnx.jit vs PyTorch eager", ms(t["ours"]),
                        ms(t["theirs"]), t["theirs"] / t["ours"],
                        f"cnndsl = Flax NNX, reference = generated PyTorch; max rel. diff {err:.1e}"))
    return rows


if __name__ == "__main__":
    print(table(run()))
    sys.exit(0)
