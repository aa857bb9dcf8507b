"""``cnndsl train --device``: the CPU path, the clean error for CUDA on a machine without it, the process group
backend a device takes, and one SGD step of a ``torch.compile``d generated model against eager PyTorch.

The references: the recipe re-implemented in test_train_cli (``reference_weights``), torch.distributed's rule
that nccl works on CUDA tensors with one GPU a process, and eager PyTorch for the compiled step.
"""

from __future__ import annotations

import json
import os

import pytest
from test_cli_edges import run_main

import cnndsl

pytest.importorskip("sklearn")
torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


@pytest.fixture
def tiny(tmp_path) -> str:
    from test_train_cli import TINY

    path = tmp_path / "tiny.cnn"
    path.write_text(TINY)
    return str(path)


def test_device_cpu_trains_the_recipe(capsys, tmp_path, tiny):
    """``--device cpu``: the run of the recipe as test_train_cli re-implements it, and the device recorded."""
    from test_train_cli import TINY, reference_weights, saved

    rc, _, err = run_main(capsys, "train", tiny, "--device", "cpu", "--epochs", "1", "--out", str(tmp_path / "run"))
    assert rc == 0, err
    want, got = reference_weights(TINY, lr=0.05, batch_size=32, seed=0, epochs=1), saved(tmp_path / "run", TINY)
    for k in want:  # summed-then-divided loss against the mean: rounding apart
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-5)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["settings"]["device"] == "cpu"


@no_cuda
def test_device_cuda_without_cuda_is_a_clean_error(capsys, tiny):
    rc, out, err = run_main(capsys, "train", tiny, "--device", "cuda")
    assert rc == 1 and "error: --device cuda: this PyTorch sees no CUDA device" in err
    assert "--device cpu" in err and "Traceback" not in err and "epoch" not in out  # refused before any training
    rc, _, err = run_main(capsys, "train", tiny, "--device", "gpu")
    assert rc == 2 and "invalid choice: 'gpu'" in err
    rc, _, err = run_main(capsys, "train", tiny, "--backend", "jax", "--device", "cpu")
    assert rc == 1 and "error: --device cpu chooses the torch backend's device" in err and "Traceback" not in err


def test_auto_takes_cuda_where_it_is_and_checks_a_gpu_a_process(monkeypatch):
    from cnndsl.train.torch_loop import pick_device

    assert pick_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu") and pick_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("auto") == pick_device("cuda", 2) == "cuda"
    with pytest.raises(cnndsl.CnnDslError, match="--nproc 3 on CUDA needs a GPU a process, and there are 2"):
        pick_device("auto", 3)


@pytest.mark.parametrize(("device", "backend"), [("cuda", "nccl"), ("cpu", "gloo")])
def test_a_process_joins_nccl_on_its_gpu_and_gloo_on_the_cpu(monkeypatch, device, backend):
    """A data-parallel process on CUDA takes GPU ``LOCAL_RANK`` before it joins an nccl group (nccl needs one GPU
    a process); on the CPU it joins gloo. Recorded at torch.distributed's door, which then refuses."""
    import torch.distributed as dist

    from cnndsl.train import torch_loop

    seen = []

    def init(name, *args, **kwargs):
        seen.append(("init", name))
        raise RuntimeError("stop here")

    monkeypatch.setattr(dist, "init_process_group", init)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: seen.append(("gpu", i)))
    monkeypatch.setitem(os.environ, "LOCAL_RANK", "1")
    with pytest.raises(RuntimeError, match="stop here"):
        torch_loop._worker(None, None, None, [], {"device": device})
    assert seen == ([("gpu", 1)] if device == "cuda" else []) + [("init", backend)]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lenet5", "resnet20"])
def test_a_compiled_sgd_step_is_the_eager_one(name):
    """One SGD step (momentum, weight decay) of ``torch.compile(model)`` against the same step of the eager model
    from the same weights: the loss, every gradient and every updated weight agree. Inductor fuses and reorders
    float32 arithmetic (a conv's reduction, batch norm's mean and variance), so they agree to rounding, not
    bitwise: relative 1e-4 (about 1,000 float32 ulps; torch's own compile tests allow 1e-4 on float32 training)
    with an absolute floor of 1e-5 for gradients near zero. Measured: the same loss, gradients at most 7e-7 apart
    (1.8e-5 of a tensor's largest entry) for resnet20 and 1.6e-8 for lenet5."""
    import copy

    import torch.nn.functional as F

    shape = {"lenet5": (1, 32, 32), "resnet20": (3, 32, 32)}[name]
    torch.manual_seed(0)
    eager = cnndsl.build_torch(name).train()
    compiled_model, start = copy.deepcopy(eager), copy.deepcopy(eager.state_dict())
    compiled = torch.compile(compiled_model)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, *shape, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    results = []
    for model, run in ((eager, eager), (compiled_model, compiled)):
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        loss = F.cross_entropy(run(x), y)
        opt.zero_grad()
        loss.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters()}
        opt.step()
        results.append((loss.detach(), grads, {k: v.clone() for k, v in model.state_dict().items()}))
    (loss_e, grads_e, state_e), (loss_c, grads_c, state_c) = results
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-4, atol=1e-5)
    assert grads_c.keys() == grads_e.keys()
    for k in grads_e:
        torch.testing.assert_close(grads_c[k], grads_e[k], rtol=1e-4, atol=1e-5, msg=k)
    for k in state_e:  # the weights after the step, and batch norm's running statistics
        torch.testing.assert_close(state_c[k], state_e[k], rtol=1e-4, atol=1e-5, msg=k)
    assert all(not torch.equal(state_e[k], start[k]) for k, _ in eager.named_parameters())  # the step moved them
