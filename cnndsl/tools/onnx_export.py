"""Export a network to ONNX, through the PyTorch model the torch backend generates.

The model is built with :func:`cnndsl.build_torch`, put in eval mode (dropout
off, batch norm on its running statistics, auxiliary heads not run) and traced
by ``torch.onnx.export``. The file has one input, ``input`` (batch x C x H x W,
the batch dimension dynamic unless asked otherwise), and one output, ``output``.

Which exporter: PyTorch 2.9 and later default to the ``torch.export``-based
exporter (``dynamo=True``), which needs the ``onnxscript`` package. This module
asks for the TorchScript-based one (``dynamo=False``): it needs only torch and
onnx, works offline, and handles every op the torch backend emits (the test
suite checks the whole zoo against onnxruntime). Should a future torch drop it,
the export falls back to the ``torch.export`` exporter when onnxscript is
installed, and says what to install when it is not.

The file is written atomically: the model goes to a temporary file in the
output's folder, is checked with ``onnx.checker``, and only then replaces the
output, so a failed export never leaves a partial or stale-looking file.
"""

from __future__ import annotations

import io
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cnndsl.backends.torch import build as build_torch
from cnndsl.errors import CnnDslError
from cnndsl.files import check_writable, write_atomic
from cnndsl.ir.network import Network
from cnndsl.passes.pipeline import inference_network, load
from cnndsl.version import __version__
from cnndsl.weights import load_weights

DEFAULT_OPSET = 17  # supported by the TorchScript exporter and by onnxruntime 1.16 and later
INPUT_NAME, OUTPUT_NAME = "input", "output"


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        extra = "torch" if module == "torch" else "onnx"
        raise CnnDslError(f"exporting to ONNX needs the '{module}' package", None,
                          f"pip install 'cnndsl[{extra}]'") from None


def to_onnx(net: str | Network, *, input_shape: tuple[int, ...] | None = None, batch: int = 1,
            dynamic_batch: bool = True, opset: int = DEFAULT_OPSET, inference: bool = False,
            state_dict: dict | None = None, weights: str | os.PathLike | None = None, seed: int = 0,
            **params: Any) -> bytes:
    """The ONNX model of ``net`` (a zoo name, a .cnn path or a :class:`Network`), serialised and checked.

    ``input_shape`` overrides the network's input (C x H x W); ``params`` set network parameters.
    The weights are ``state_dict`` when given, else PyTorch's initialisation under ``seed`` (so the
    same arguments give the same bytes); ``weights`` is a weights file (:mod:`cnndsl.weights`) to load instead,
    checked against the network first. ``inference=True`` exports the inference build (batch norms
    folded into the convolutions, see :func:`cnndsl.passes.pipeline.inference_network`). ``batch`` is the batch
    size of the example traced; with ``dynamic_batch`` the file accepts any batch size.
    Raises :class:`cnndsl.CnnDslError` when the network is wrong or cannot be exported.
    """
    torch = _require("torch")
    onnx = _require("onnx")
    if isinstance(net, Network) and (input_shape is not None or params):
        raise TypeError("input_shape and params apply to a network given by name, not to a Network")
    network = net if isinstance(net, Network) else load(str(net), input_shape=input_shape, **params)
    if weights is not None:
        if state_dict is not None:
            raise TypeError("give weights= (a file) or state_dict=, not both")
        state_dict = load_weights(weights, network)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_torch(inference_network(network) if inference else network, inference=inference,
                            state_dict=state_dict)
    model.eval()
    example = torch.zeros(batch, *network.input_shape)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            # the TorchScript exporter's deprecation notice and tracer remarks are not the user's business
            warnings.simplefilter("ignore")
            with _exporter_log_muted(torch):
                _export(torch, model, example, buffer, opset, dynamic_batch)
    except CnnDslError:
        raise
    except Exception as e:  # the exporters raise many types (UnsupportedOperatorError, RuntimeError, ...)
        message = _first_line(e)
        hint = ("the TorchScript exporter writes opsets 7 to 20" if "opset_version" in message else
                f"PyTorch's ONNX exporter cannot translate this network at opset {opset}")
        raise CnnDslError(f"cannot export '{network.name}' to ONNX: {message}", _span(network), hint) from e
    model_proto = onnx.load_from_string(buffer.getvalue())
    model_proto.producer_name = "cnndsl"
    model_proto.producer_version = __version__
    model_proto.doc_string = f"{network.name}: {'x'.join(map(str, network.input_shape))} input, " \
                             f"{network.params:,} parameters"
    try:
        onnx.checker.check_model(model_proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise CnnDslError(f"the ONNX model of '{network.name}' fails onnx.checker: {_first_line(e)}",
                          _span(network)) from e
    return model_proto.SerializeToString()


def export_onnx(net: str | Network, path: str | os.PathLike, **kwargs: Any) -> Path:
    """Write the ONNX model of ``net`` to ``path`` (replaced only by a complete, checked file); return the path.

    Keyword arguments are those of :func:`to_onnx`.
    """
    path = check_writable(path)  # found out before the export, which can take a while
    return write_atomic(path, to_onnx(net, **kwargs))


def _export(torch, model, example, f, opset: int, dynamic_batch: bool) -> None:
    """Run ``torch.onnx.export`` with the TorchScript exporter, or the torch.export one where that is all there is."""
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    common = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": opset}
    try:
        torch.onnx.export(model, (example,), f, dynamo=False, dynamic_axes=axes, do_constant_folding=True,
                          **common)
        return
    except TypeError as e:  # a torch without the TorchScript exporter: no ``dynamo`` switch, or it refuses False
        if "dynamo" not in str(e):
            raise
    try:
        import onnxscript  # noqa: F401  (the torch.export-based exporter's requirement)
    except ImportError:
        raise CnnDslError("this torch has only the torch.export-based ONNX exporter, which needs onnxscript", None,
                          "pip install onnxscript") from None
    shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=shapes, **common)
    program.save(f)


@contextmanager
def _exporter_log_muted(torch):
    """Keep the TorchScript exporter's native log out of the user's output while the body runs.

    On a failure that exporter writes the whole TorchScript graph to the C++ ``std::cout`` (torch 2.13's
    ``setup_onnx_logging`` switches its log on whatever the caller asked, and leaves it on). The error it
    raises says what went wrong, so the dump is dropped: the log is pointed at stderr, file descriptor 2
    goes to the null device for the duration, and the log's switch and stream are then put back.
    """
    c = torch._C
    hooks = all(hasattr(c, f) for f in ("_jit_is_onnx_log_enabled", "_jit_set_onnx_log_enabled",
                                        "_jit_set_onnx_log_output_stream"))
    if hooks:
        enabled = c._jit_is_onnx_log_enabled()
        c._jit_set_onnx_log_output_stream("stderr")
    try:
        with _native_stderr_muted():
            yield
    finally:
        if hooks:
            c._jit_set_onnx_log_enabled(enabled)
            c._jit_set_onnx_log_output_stream("stdout")  # the default; torch offers no way to read it


@contextmanager
def _native_stderr_muted():
    """Send what native code writes to file descriptor 2 to the null device while the body runs.

    Python's ``sys.stderr`` object is left alone (it is flushed first, so nothing of it is lost).
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no file descriptor 2 to redirect
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _first_line(e: BaseException) -> str:
    """The message of an exporter error without its boilerplate (the request to report it, the graph value)."""
    text = (str(e).strip() or type(e).__name__).splitlines()[0]
    for tail in (" Please feel free to request support", "  [Caused by the value"):
        text = text.split(tail)[0]
    return text.strip()


def _span(network: Network):
    """Where to point an export error: the network's input, the first line of its declaration."""
    return network.graph.node(network.graph.inputs[0]).span


__all__ = ["DEFAULT_OPSET", "INPUT_NAME", "OUTPUT_NAME", "export_onnx", "to_onnx"]
