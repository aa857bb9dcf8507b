"""ONNX export: every zoo network's file passes onnx.checker and onnxruntime reproduces PyTorch's outputs.

onnxruntime is the outside judge here: it runs the exported graph with its own kernels, and its outputs
are compared with the generated PyTorch model's (same weights, eval mode) to 1e-4 of the output's scale.

The default run exports a handful of networks that between them use every op the zoo uses, at their
own input size or a smaller one where the network allows it (a global-average-pooled head, a fully
convolutional U-Net); the rest of the zoo is marked slow (``--runslow``), at a smaller input where
the network allows it.
"""

from __future__ import annotations

import numpy as np
import pytest

from cnndsl.front.loader import zoo_index

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import cnndsl
from cnndsl.tools.cli import main
from cnndsl.tools.onnx_export import INPUT_NAME, OUTPUT_NAME, export_onnx, to_onnx

RTOL = 1e-4

# The default run: together these use every op of the zoo but softmax (conv, fc, bn, relu, tanh, lrn, max/avg/
# adaptive/global pooling, concat, add, the CIFAR ResNets' zero-padding shortcut, deconv, crop, dropout);
# softmax heads (googlenet, inception_resnet_v1) are in the slow run.
FAST = {
    "lenet5": None,
    "resnet20": None,
    "resnet18": (3, 64, 64),
    "googlenet_torchvision": (3, 64, 64),
    "alexnet": (3, 96, 96),
    "unet": (1, 188, 188),
}
# Smaller inputs for the slow run where the network allows them (the rest keep their own size; VGG's head
# pools adaptively to 7x7, which ONNX can express only from a map whose side is a multiple of 7).
REDUCED = {name: (3, 64, 64) for name in ("resnet", "resnet34", "resnet50", "resnet50_v1", "resnet101", "resnet152")}
REDUCED.update({"inception_v4": (3, 96, 96), "inception_resnet_v1": (3, 96, 96), "inception_resnet_v2": (3, 96, 96),
                "zfnet": (3, 96, 96)})

MEASURED: dict[str, float] = {}


def _case(name: str):
    if name in FAST:
        return pytest.param(name, FAST[name], id=name)
    return pytest.param(name, REDUCED.get(name), id=name, marks=pytest.mark.slow)


def _session(data: bytes):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _reference(net, seed: int = 0):
    """The generated PyTorch model in eval mode with weights drawn under ``seed``, and its state_dict."""
    torch.manual_seed(seed)
    model = cnndsl.build_torch(net).eval()
    return model, model.state_dict()


def _assert_close(got: np.ndarray, want: np.ndarray) -> float:
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * scale)
    return float(np.abs(got - want).max()) / scale


@pytest.mark.parametrize(("name", "shape"), [_case(n) for n in sorted(zoo_index())])
def test_zoo_export_matches_pytorch_in_onnxruntime(name, shape):
    net = cnndsl.load(name, input_shape=shape)
    model, weights = _reference(net)
    data = to_onnx(net, state_dict=weights)
    proto = onnx.load_from_string(data)
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == [INPUT_NAME]
    assert [o.name for o in proto.graph.output] == [OUTPUT_NAME]
    x = torch.randn(2, *net.input_shape, generator=torch.Generator().manual_seed(1))  # batch 2: the axis is dynamic
    with torch.no_grad():
        want = model(x).numpy()
    (got,) = _session(data).run(None, {INPUT_NAME: x.numpy()})
    assert got.shape == (2, *net.output_shapes[0])
    MEASURED[name] = _assert_close(got, want)


def test_export_is_deterministic_and_names_its_producer():
    first, second = to_onnx("lenet5"), to_onnx("lenet5")
    assert first == second
    proto = onnx.load_from_string(first)
    assert proto.producer_name == "cnndsl"
    assert "lenet5" in proto.doc_string and "61,706 parameters" in proto.doc_string


def test_inference_export_folds_batch_norm_and_keeps_the_outputs():
    net = cnndsl.load("resnet20")
    model, weights = _reference(net, seed=3)
    gen = torch.Generator().manual_seed(4)
    for key, value in weights.items():  # batch-norm statistics and affine parameters away from the identity
        if key.endswith(("running_mean", "bias")):
            value.copy_(0.1 * torch.randn(value.shape, generator=gen))
        elif key.endswith("running_var"):
            value.copy_(torch.rand(value.shape, generator=gen) + 0.5)
    model.load_state_dict(weights)
    data = to_onnx(net, inference=True, state_dict=weights)
    ops = {n.op_type for n in onnx.load_from_string(data).graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops
    x = torch.randn(3, *net.input_shape, generator=gen)
    with torch.no_grad():
        want = model(x).numpy()
    (got,) = _session(data).run(None, {INPUT_NAME: x.numpy()})
    _assert_close(got, want)


def test_cli_export_writes_a_checked_runnable_file(tmp_path, capsys):
    out = tmp_path / "lenet.onnx"
    assert main(["export", "lenet5", "--onnx", str(out), "-p", "classes=7"]) == 0
    assert f"wrote {out}" in capsys.readouterr().err
    onnx.checker.check_model(str(out))
    (got,) = _session(out.read_bytes()).run(None, {INPUT_NAME: np.zeros((4, 1, 32, 32), np.float32)})
    assert got.shape == (4, 7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lenet.onnx"]


def test_cli_input_override_changes_the_traced_size(tmp_path):
    out = tmp_path / "r.onnx"
    assert main(["export", "resnet20", "--onnx", str(out), "--input", "3x48x48"]) == 0
    dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, 48, 48]


def test_failed_export_is_a_clean_error_and_leaves_no_file(tmp_path, capfd):
    # torchvision's AlexNet head pools to 6x6; from a 2x2 map that is not an ONNX pooling
    out = tmp_path / "alexnet.onnx"
    out.write_bytes(b"an older export")
    assert main(["export", "alexnet_torchvision", "--onnx", str(out), "--input", "3x100x100"]) == 1
    captured = capfd.readouterr()
    assert "error: cannot export 'alexnet_torchvision' to ONNX" in captured.err
    assert "adaptive_avg_pool2d" in captured.err
    assert "alexnet.cnn:" in captured.err  # points at the network
    assert "Traceback" not in captured.err and "Torch IR graph" not in captured.out + captured.err
    assert out.read_bytes() == b"an older export"  # untouched, and no temporary file left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alexnet.onnx"]


def test_bad_opset_and_bad_paths_are_clean_errors(tmp_path, capsys):
    assert main(["export", "lenet5", "--onnx", str(tmp_path / "l.onnx"), "--opset", "3"]) == 1
    assert "opsets 7 to 20" in capsys.readouterr().err
    assert main(["export", "lenet5", "--onnx", str(tmp_path / "missing" / "l.onnx")]) == 1
    assert "no folder" in capsys.readouterr().err
    assert main(["export", "lenet5", "--onnx", str(tmp_path)]) == 1
    assert "is a directory" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_export_onnx_replaces_an_existing_file(tmp_path):
    out = tmp_path / "l.onnx"
    out.write_bytes(b"stale")
    assert export_onnx("lenet5", out) == out
    onnx.checker.check_model(str(out))
