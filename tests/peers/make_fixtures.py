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
TV = {n: (f"torchvision.models.{n}", lambda n=n: getattr(tvm, n)(weights=None), [3, 224, 224], ())
      for n in ["alexnet", "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg16_bn",
                "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]}
PEERS = dict(TV)
PEERS["googlenet"] = ("torchvision.models.googlenet",
                      lambda: tvm.googlenet(weights=None, aux_logits=True, init_weights=True),
                      [3, 224, 224], ("aux1.", "aux2."))
PEERS["inception_v3"] = ("torchvision.models.inception_v3",
                         lambda: tvm.inception_v3(weights=None, aux_logits=True, init_weights=True),
                         [3, 299, 299], ("AuxLogits.",))
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
    OUT.mkdir(exist_ok=True)
    for name in PEERS:
        if PEERS[name][0].startswith("timm:") and timm is None:
            print(f"skip {name}: timm not installed")
            continue
        d = fixture(name)
        (OUT / f"{name}.json").write_text(dump(d))
        extra = f" (no aux {d['params_no_aux']:,})" if "params_no_aux" in d else ""
        print(f"{name}: params {d['params']:,}{extra} output {d['output_shape']}")


if __name__ == "__main__":
    main()
