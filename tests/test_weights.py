"""Weights files (cnndsl.weights): one safetensors file that every backend reads and writes.

The judges are outside the code under test: the PyTorch model the weights came from (its own outputs),
onnxruntime running an exported file, safetensors' own readers, and torch's ``load_state_dict``.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
from torch_helpers import randomise_batch_norms

import cnndsl
from cnndsl.errors import CnnDslError
from cnndsl.tools.cli import main
from cnndsl.weights import (
    ARCH_HASH,
    NETWORK,
    convert_checkpoint,
    load_weights,
    read_metadata,
    save_flax,
    save_jax,
    save_weights,
    weight_keys,
    weight_shapes,
)

RTOL = 1e-4  # relative to the output's largest magnitude, as the cross-backend tests compare
# a conv stack with batch norms, a residual, and an fc after a flatten: the JAX layout reorders that fc's rows
SOURCE = ("network small(classes=5): input 3x8x8\n"
          "    conv3-4 bn relu residual< conv3-4 bn relu > maxpool2 flatten bn fc-{classes}\n")


def _net(tmp_path, **params):
    path = tmp_path / "small.cnn"
    path.write_text(SOURCE)
    return path, cnndsl.load(str(path), **params)


def _randomised(model, seed: int = 0):
    """``model`` with non-trivial batch norm statistics and affine terms (as training leaves them), so that every
    tensor of a file matters to the output."""
    randomise_batch_norms(model, seed)
    return model


def _trained_like(net, seed: int = 0):
    """The torch model of ``net`` in eval mode, its weights drawn under ``seed``, its batch norms randomised."""
    torch.manual_seed(seed)
    return _randomised(cnndsl.build_torch(net).eval(), seed + 1)


def _x(net, batch: int = 3) -> np.ndarray:
    return np.random.RandomState(7).randn(batch, *net.input_shape).astype(np.float32)


def _torch_out(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _close(got, want) -> None:
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL, atol=RTOL * scale)


def test_torch_save_then_build_torch_with_weights_gives_equal_outputs(tmp_path):
    path, net = _net(tmp_path)
    model = _trained_like(net)
    file = save_weights(tmp_path / "w.safetensors", net, model.state_dict())
    x = _x(net)
    again = cnndsl.build_torch(str(path), weights=file).eval()
    np.testing.assert_array_equal(_torch_out(again, x), _torch_out(model, x))
    # the inference build folds the file's batch norms into the convolutions: the same function
    _close(_torch_out(cnndsl.build_torch(str(path), weights=file, inference=True), x), _torch_out(model, x))
    # safetensors' own reader sees the state_dict and the metadata that ties it to the network
    raw = safetensors_torch.load_file(str(file))
    assert raw.keys() == model.state_dict().keys()
    assert all(torch.equal(raw[k], v) for k, v in model.state_dict().items())
    meta = read_metadata(file)
    assert meta[NETWORK] == "small" and meta["format"] == "pt"


def test_the_same_file_into_jax_and_flax_gives_the_torch_outputs(tmp_path):
    pytest.importorskip("jax")
    pytest.importorskip("flax")
    path, net = _net(tmp_path)
    model = _trained_like(net)
    file = save_weights(tmp_path / "w.safetensors", net, model.state_dict())
    x = _x(net)
    want = _torch_out(model, x)
    jm = cnndsl.build_jax(str(path), weights=file)
    _close(jm.apply(jm.variables, x.transpose(0, 2, 3, 1)), want)
    fm = cnndsl.build_flax(str(path), weights=file)
    fm.eval()
    _close(fm(x.transpose(0, 2, 3, 1)), want)


def test_jax_and_flax_write_the_file_torch_writes(tmp_path):
    """Flattened to the state_dict's keys and layouts, the JAX and Flax trees are the same file, byte for byte
    (an untrained model: its batch norms' counters are 0, as the JAX side writes them)."""
    pytest.importorskip("flax")
    _, net = _net(tmp_path)
    torch.manual_seed(3)
    state = cnndsl.build_torch(net).state_dict()
    want = save_weights(tmp_path / "torch.safetensors", net, state).read_bytes()
    variables = cnndsl.torch_to_jax(net, state)
    assert save_jax(tmp_path / "jax.safetensors", net, variables).read_bytes() == want
    from cnndsl.backends.flax import torch_to_flax

    assert save_flax(tmp_path / "flax.safetensors", net, torch_to_flax(net, state)).read_bytes() == want


def test_files_are_byte_identical_in_another_process_and_without_torch(tmp_path):
    """safetensors writes its metadata map in hash order, which changes from process to process; the file's is
    sorted. The other process has no torch (numpy arrays in, the keys checked from the ops alone) and writes the
    same bytes."""
    path, net = _net(tmp_path)
    torch.manual_seed(0)
    state = cnndsl.build_torch(net).state_dict()
    meta = {k: k.upper() for k in ("epochs", "lr", "seed", "data", "batch", "optimiser")}
    want = save_weights(tmp_path / "here.safetensors", net, state, extra_metadata=meta).read_bytes()
    np.savez(tmp_path / "state.npz", **{k: v.numpy() for k, v in state.items()})
    script = ("import sys, numpy as np\n"
              "sys.modules['torch'] = None  # no torch in this process\n"
              "import cnndsl\n"
              "from cnndsl.weights import save_weights\n"
              "state = dict(np.load(sys.argv[2]))\n"
              f"save_weights(sys.argv[3], cnndsl.load(sys.argv[1]), state, extra_metadata={meta!r})\n"
              "assert 'torch' not in {m.split('.')[0] for m in sys.modules if sys.modules[m] is not None}\n")
    other = tmp_path / "there.safetensors"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / "state.npz"), str(other)], check=True,
                   env=env, timeout=120)
    assert other.read_bytes() == want
    (n,) = struct.unpack("<Q", want[:8])
    header = json.loads(want[8:8 + n])
    assert n % 8 == 0 and list(header["__metadata__"]) == sorted(header["__metadata__"])
    assert header["__metadata__"]["optimiser"] == "OPTIMISER"


def test_weight_keys_from_the_ops_are_torchs_state_dict_keys():
    """The IR's weight facts (each op's declared tensors) name exactly what the torch model's state_dict holds."""
    for name in ("resnet18", "googlenet_torchvision", "densenet121", "convnext_tiny"):
        net = cnndsl.load(name)
        keys, shapes = weight_keys(net), weight_shapes(net)
        assert len(set(keys)) == len(keys) and sorted(keys) == sorted(shapes), name
        if name == "googlenet_torchvision":  # the meta build's shapes are the real model's
            assert shapes == {k: tuple(v.shape) for k, v in cnndsl.build_torch(net).state_dict().items()}


def test_export_onnx_with_weights_runs_the_weights_in_onnxruntime(tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    path, net = _net(tmp_path)
    model = _trained_like(net, seed=5)
    file = save_weights(tmp_path / "w.safetensors", net, model.state_dict())
    x = _x(net)
    want = _torch_out(model, x)
    for extra in ([], ["--inference"]):
        out = tmp_path / "small.onnx"
        assert main(["export", str(path), "--onnx", str(out), "--weights", str(file), *extra]) == 0
        (got,) = ort.InferenceSession(out.read_bytes(), providers=["CPUExecutionProvider"]).run(None, {"input": x})
        _close(got, want)
    # without --weights the export has PyTorch's seed-0 initialisation: other numbers
    assert main(["export", str(path), "--onnx", str(out)]) == 0
    (initial,) = ort.InferenceSession(out.read_bytes(), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    assert np.abs(initial - want).max() > 10 * RTOL * np.abs(want).max()
    capsys.readouterr()


def test_convert_a_torch_save_checkpoint_of_resnet18(tmp_path, capsys):
    """As a torchvision checkpoint of its era: a torch.save'd state_dict without the batch norms' counters,
    saved by a DDP trainer (``module.`` before every key, wrapped with the epoch)."""
    net = cnndsl.load("resnet18")
    torch.manual_seed(0)
    model = cnndsl.build_torch(net).eval()
    state = {f"module.{k}": v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    ckpt = tmp_path / "resnet18.pth"
    torch.save({"epoch": 90, "state_dict": state}, ckpt)
    out = tmp_path / "resnet18.safetensors"
    assert main(["weights", "convert", str(ckpt), "resnet18", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "set 20 missing num_batches_tracked counters to 0" in err and f"wrote {out}" in err
    x = np.random.RandomState(0).randn(1, 3, 32, 32).astype(np.float32)
    np.testing.assert_array_equal(_torch_out(cnndsl.build_torch("resnet18", weights=out).eval(), x),
                                  _torch_out(model, x))
    assert read_metadata(out)["cnndsl.converted_from"] == "resnet18.pth"
    assert main(["weights", "info", str(out)]) == 0
    numbers = sum(v.numel() for v in model.state_dict().values())
    assert f"{len(model.state_dict())} tensors, {numbers:,} numbers" in capsys.readouterr().out


def test_convert_a_safetensors_checkpoint_of_a_compiled_model(tmp_path):
    """A .safetensors checkpoint (as timm's hub files are) converts as a torch.save'd one does; the prefix that
    torch.compile puts on every key goes."""
    path, net = _net(tmp_path)
    state = _trained_like(net).state_dict()
    ckpt = tmp_path / "hub.safetensors"
    safetensors_torch.save_file({f"_orig_mod.{k}": v for k, v in state.items()}, str(ckpt))
    out, notes = convert_checkpoint(ckpt, str(path), tmp_path / "w.safetensors")
    got = load_weights(out, net)
    assert notes == [] and got.keys() == state.keys() and all(torch.equal(got[k], v) for k, v in state.items())


def test_a_bfloat16_file_reads_as_numpy_exactly_as_torch_widens_it(tmp_path):
    """NumPy has no bfloat16: ``numpy=True`` (the JAX and Flax path) widens it to float32, as torch's .float()."""
    _, net = _net(tmp_path)
    state = _trained_like(net).state_dict()
    half = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}
    safetensors_torch.save_file(half, str(tmp_path / "bf16.safetensors"))
    got = load_weights(tmp_path / "bf16.safetensors", net, numpy=True)
    for k, v in half.items():
        want = v.float().numpy() if v.is_floating_point() else v.numpy()
        np.testing.assert_array_equal(got[k], want)
        assert got[k].dtype == want.dtype and got[k].shape == tuple(v.shape)


def test_bad_files_are_clean_errors_with_exit_1(tmp_path, capsys):
    path, net = _net(tmp_path)
    state = _trained_like(net).state_dict()
    file = save_weights(tmp_path / "w.safetensors", net, state)
    out = str(tmp_path / "o.onnx")

    def fails(*argv) -> str:
        assert main(list(argv)) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err and "error:" in err
        return err

    text = tmp_path / "notes.txt"
    text.write_text("not a weights file\n")
    assert "is not a safetensors file" in fails("export", str(path), "--onnx", out, "--weights", str(text))
    assert "is not a safetensors file" in fails("weights", "info", str(text))
    assert "no weights file" in fails("export", str(path), "--onnx", out, "--weights", str(tmp_path / "none"))
    assert "neither a safetensors file nor a torch.save" in fails("weights", "convert", str(text), str(path),
                                                                  "-o", str(tmp_path / "c.safetensors"))
    # another network: refused by its architecture hash, whatever its name
    err = fails("export", str(path), "--onnx", out, "--weights", str(file), "-p", "classes=7")
    assert "holds the weights of 'small'" in err and "other parameters" in err
    err = fails("export", "lenet5", "--onnx", out, "--weights", str(file))
    assert "not of 'lenet5'" in err
    # the hash check off, the shapes are still checked
    with pytest.raises(CnnDslError, match=r"2 keys mis-shaped \(fc1.weight is 5x64 not 7x64, fc1.bias is 5 not 7\)"):
        load_weights(file, cnndsl.load(str(path), classes=7), check_arch=False)
    # a file without cnndsl's metadata (another tool's) is checked by keys and shapes
    missing = dict(state)
    del missing["fc1.weight"]
    safetensors_torch.save_file(missing, str(tmp_path / "missing.safetensors"))
    err = fails("export", str(path), "--onnx", out, "--weights", str(tmp_path / "missing.safetensors"))
    assert "1 key missing (fc1.weight)" in err
    safetensors_torch.save_file({**state, "head.weight": torch.zeros(2)}, str(tmp_path / "extra.safetensors"))
    assert "1 key unexpected (head.weight)" in fails("weights", "convert", str(tmp_path / "extra.safetensors"),
                                                 str(path), "-o", str(tmp_path / "c.safetensors"))
    assert not (tmp_path / "c.safetensors").exists() and not os.path.exists(out)
    assert ARCH_HASH not in read_metadata(tmp_path / "extra.safetensors")
    # a trainer's checkpoint that pickles its settings: not unpickled (that would run code), and said so
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=0.1)}, tmp_path / "trainer.pth")
    err = fails("weights", "convert", str(tmp_path / "trainer.pth"), str(path), "-o", str(tmp_path / "c.safetensors"))
    assert "holds Python objects besides its tensors (argparse.Namespace)" in err
    torch.save({"epoch": 3, "state_dict": state}, tmp_path / "fine.pth")  # plain containers are fine
    assert main(["weights", "convert", str(tmp_path / "fine.pth"), str(path), "-o", str(tmp_path / "c.safetensors")]) == 0
    with pytest.raises(CnnDslError, match="strings to strings"):
        save_weights(tmp_path / "m.safetensors", net, state, extra_metadata={"epochs": 3})
    with pytest.raises(CnnDslError, match="written by cnndsl itself"):
        save_weights(tmp_path / "m.safetensors", net, state, extra_metadata={NETWORK: "other"})


@pytest.mark.parametrize("peer", ["torchvision", "timm"])
def test_convert_a_peers_checkpoint_and_compute_what_the_peer_computes(tmp_path, peer):
    """The peers' own resnet18 (a torch.save'd state_dict of torchvision's or timm's model, batch norms
    randomised): converted, it gives the peer's outputs. Skips where the peer is not installed (README, "The
    zoo": the second environment)."""
    if peer == "torchvision":
        model = pytest.importorskip("torchvision.models").resnet18()
    else:
        model = pytest.importorskip("timm").create_model("resnet18", pretrained=False)
    model = _randomised(model.eval())
    ckpt = tmp_path / f"{peer}.pth"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "resnet18.safetensors"
    path, notes = convert_checkpoint(ckpt, "resnet18", out)
    assert notes == []
    x = np.random.RandomState(0).randn(2, 3, 64, 64).astype(np.float32)
    _close(_torch_out(cnndsl.build_torch("resnet18", weights=path).eval(), x), _torch_out(model, x))


def test_strict_false_fine_tunes_a_new_head_from_a_related_networks_weights(tmp_path):
    """timm's ``pretrained=True, num_classes=5``: a 10-class resnet18's file into a 5-class build loads every tensor
    but the head (compared tensor by tensor with the file), the head keeps a fresh initialisation of the new
    shape, a warning names it, and the features before the head are the 10-class model's."""
    import torch

    torch.manual_seed(0)
    ten = cnndsl.load("resnet18", classes=10)
    source = cnndsl.build_torch(ten).eval()
    randomise_batch_norms(source)
    path = save_weights(tmp_path / "r18.safetensors", ten, source.state_dict())
    with pytest.raises(CnnDslError):  # strict (the default): another architecture is refused
        cnndsl.build_torch("resnet18", num_classes=5, weights=path)
    with pytest.warns(UserWarning, match=r"2 keep their initialisation: fc\.weight, fc\.bias"):
        five = cnndsl.build_torch("resnet18", num_classes=5, weights=path, strict=False).eval()
    saved = source.state_dict()
    for k, v in five.state_dict().items():
        if k.startswith("fc."):
            assert v.shape[0] == 5
        else:
            assert torch.equal(v, saved[k]), k
    x = torch.randn(2, 3, 64, 64)

    def body(m):  # everything before fc
        return torch.nn.Sequential(*list(m.children())[:-1])

    with torch.no_grad():
        assert torch.equal(body(five)(x), body(source)(x))
    with pytest.raises(CnnDslError, match="inference build"):
        cnndsl.build_torch("resnet18", num_classes=5, weights=path, strict=False, inference=True)


def test_a_file_saved_with_the_hash_before_series_pieces_still_loads(tmp_path):
    """Files written before issue 15 carry the whole-graph hash; resnet18's was 4c264fa9405185b29496145b (computed
    by the 0.1 code, commit 9ac2225). Such a file loads; a file claiming another architecture is still refused."""
    import torch
    from safetensors.torch import save_file

    net = cnndsl.load("resnet18")
    state = cnndsl.build_torch(net).state_dict()
    tensors = {k: v.contiguous() for k, v in state.items()}
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), metadata={ARCH_HASH: "4c264fa9405185b29496145b", NETWORK: "resnet18"})
    loaded = load_weights(old, net)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    other = tmp_path / "other.safetensors"
    save_file(tensors, str(other), metadata={ARCH_HASH: "ccdd19aba630c859e8944fd2", NETWORK: "lenet5"})  # lenet5's
    with pytest.raises(CnnDslError, match="holds the weights of 'lenet5'"):
        load_weights(other, net)
