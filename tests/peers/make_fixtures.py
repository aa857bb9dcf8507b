"""Regenerate the peer fixtures in tests/peers/fixtures/ from torchvision and timm.

These JSON files are outside oracles for the cnndsl tests: for each reference
network they record the parameter count, the state_dict keys and shapes (in
state_dict order, parameters and buffers) and the output shape of a forward
pass on one zero image.  Models are built without pretrained weights and put
in eval mode; nothing is downloaded.

Not run by CI.  Needs a separate environment, e.g.:

    python3 -m venv /work/tvenv
    /work/tvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm fvcore
    /work/tvenv/bin/python tests/peers/make_fixtures.py

Versions used are recorded in each file under "versions".  fvcore is optional:
when present, "fvcore_by_op" holds FlopCountAnalysis totals by operator
(fvcore counts one multiply-add as one "flop", i.e. these are MACs).
"""
import json
import pathlib
import sys

import torch
import torchvision
from torchvision import models as tvm

try:
    import timm
except ImportError:  # timm peers are then skipped
    timm = None
try:
    from fvcore.nn import FlopCountAnalysis
except ImportError:
    FlopCountAnalysis = None

OUT = pathlib.Path(__file__).parent / "fixtures"

# name -> (peer id, constructor, input [C,H,W], key prefixes of auxiliary heads)
def _tv(name, size=224, aux=(), **kwargs):
    return (f"torchvision.models.{name}", lambda: getattr(tvm, name)(weights=None, **kwargs), [3, size, size], aux)


# The torchvision CNN classifiers, each at the crop size of its published weights.
_SIZES = {"efficientnet_b1": 240, "efficientnet_b2": 288, "efficientnet_b3": 300, "efficientnet_b4": 380,
          "efficientnet_b5": 456, "efficientnet_b6": 528, "efficientnet_b7": 600, "efficientnet_v2_s": 384,
          "efficientnet_v2_m": 480, "efficientnet_v2_l": 480, "regnet_y_128gf": 384}
CLASSIFIERS = [
    "alexnet", *(f"convnext_{s}" for s in ("tiny", "small", "base", "large")),
    *(f"densenet{d}" for d in (121, 161, 169, 201)), *(f"efficientnet_b{i}" for i in range(8)),
    *(f"efficientnet_v2_{s}" for s in "sml"), *(f"mnasnet{a}" for a in ("0_5", "0_75", "1_0", "1_3")),
    "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
    *(f"regnet_x_{s}" for s in ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf", "32gf")),
    *(f"regnet_y_{s}" for s in ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf", "32gf", "128gf")),
    *(f"resnet{d}" for d in (18, 34, 50, 101, 152)), "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d",
    *(f"shufflenet_v2_x{w}" for w in ("0_5", "1_0", "1_5", "2_0")), "squeezenet1_0", "squeezenet1_1",
    *(f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")), "wide_resnet50_2", "wide_resnet101_2",
]
SEGMENTATION = ["fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101",
                "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"]
PEERS = {n: _tv(n, _SIZES.get(n, 224)) for n in CLASSIFIERS}
PEERS["googlenet"] = _tv("googlenet", aux=("aux1.", "aux2."), aux_logits=True, init_weights=True)
PEERS["inception_v3"] = _tv("inception_v3", 299, aux=("AuxLogits.",), aux_logits=True, init_weights=True)
for n in SEGMENTATION:  # without the auxiliary classifier, at the 520x520 of their published evaluation
    PEERS[n] = (f"torchvision.models.segmentation.{n}",
                lambda n=n: getattr(tvm.segmentation, n)(weights=None, weights_backbone=None), [3, 520, 520], ())
for n in ["inception_v4", "inception_resnet_v2"]:
    PEERS[n] = (f"timm:{n}", lambda n=n: timm.create_model(n, pretrained=False), [3, 299, 299], ())


def fixture(name):
    peer, build, inp, aux = PEERS[name]
    torch.manual_seed(0)
    model = build().eval()
    sd = model.state_dict()
    params = sum(p.numel() for p in model.parameters())
    x = torch.zeros(1, *inp)
    with torch.no_grad():
        y = model(x)  # in eval mode the aux heads are not run
    if isinstance(y, dict):  # a segmentation model's {"out": ...}
        y = y["out"]
    d = {"peer": peer, "input": inp, "params": params}
    if aux:
        d["params_no_aux"] = sum(p.numel() for k, p in model.named_parameters()
                                 if not k.startswith(aux))
    d["state_dict"] = [[k, list(v.shape)] for k, v in sd.items()]
    d["output_shape"] = list(y.shape)
    if FlopCountAnalysis is not None:
        fca = FlopCountAnalysis(model, x)
        fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        d["fvcore_by_op"] = dict(sorted(fca.by_operator().items()))
        d["fvcore_total"] = fca.total()
    d["versions"] = {"torch": torch.__version__, "torchvision": torchvision.__version__,
                     "timm": getattr(timm, "__version__", None)}
    return d


def dump(d):
    """Compact JSON: one state_dict entry per line, everything else on one line each."""
    lines = []
    for k, v in d.items():
        if k == "state_dict":
            body = ",\n".join("  " + json.dumps(e) for e in v)
            lines.append(f'"state_dict": [\n{body}\n]')
        else:
            lines.append(f"{json.dumps(k)}: {json.dumps(v)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def main():
    """Write the fixtures named on the command line (default: those not written yet; --all: every one)."""
    OUT.mkdir(exist_ok=True)
    args = sys.argv[1:]
    names = [n for n in PEERS if not (OUT / f"{n}.json").exists()] if not args else \
        list(PEERS) if args == ["--all"] else args
    for name in names:
        if PEERS[name][0].startswith("timm:") and timm is None:
            print(f"skip {name}: timm not installed")
            continue
        d = fixture(name)
        (OUT / f"{name}.json").write_text(dump(d))
        extra = f" (no aux {d['params_no_aux']:,})" if "params_no_aux" in d else ""
        print(f"{name}: params {d['params']:,}{extra} output {d['output_shape']}")


if __name__ == "__main__":
    main()
