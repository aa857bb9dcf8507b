"""Generated models load the peers' weights (strict) and compute what the peers compute.

The peers are torchvision's and timm's models, which need a torch other than the CPU build of
the main environment; these tests skip where torchvision is not importable. See the README
("The zoo") for the second environment they run in.
"""

from __future__ import annotations

import json

import pytest
from conftest import PEER_FIXTURES

import cnndsl

torch = pytest.importorskip("torch")
tv_models = pytest.importorskip("torchvision.models")

# zoo network -> (library, constructor, input size): every network with a peer fixture (tests/peers/fixtures),
# under the zoo's name (the papers' alexnet and googlenet keep their names; torchvision's are *_torchvision).
_ZOO_NAME = {"alexnet": "alexnet_torchvision", "googlenet": "googlenet_torchvision"}


def _peers() -> dict[str, tuple[str, str, int]]:
    out = {}
    for path in sorted(PEER_FIXTURES.glob("*.json")):
        d = json.loads(path.read_text())
        library, ctor = ("timm", d["peer"][5:]) if d["peer"].startswith("timm:") else (
            "torchvision", d["peer"].removeprefix("torchvision.models."))
        out[_ZOO_NAME.get(path.stem, path.stem)] = (library, ctor, d["input"][-1])
    return out


PEERS = _peers()
# Over 50 GMACs a forward (the ImageNet classifiers' largest, the segmentation models at 520x520): --runslow.
SLOW = {"regnet_y_128gf", "efficientnet_v2_l", "fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50",
        "deeplabv3_resnet101"}


def _peer(library: str, ctor: str):
    if library == "timm":
        timm = pytest.importorskip("timm")
        return timm.create_model(ctor, pretrained=False)
    if ctor.startswith("segmentation."):
        return getattr(tv_models.segmentation, ctor.split(".", 1)[1])(weights=None, weights_backbone=None)
    kwargs = {"aux_logits": True, "init_weights": True} if ctor in ("googlenet", "inception_v3") else {}
    return getattr(tv_models, ctor)(weights=None, **kwargs)


def _randomise(model) -> None:
    """Random normalisation statistics and affine terms, and layer scales, so that a misplaced or mis-set
    normalisation (or a scale left at its init) cannot hide behind an identity."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm, torch.nn.LayerNorm)):
                if getattr(m, "running_mean", None) is not None:
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 1.5)
                if getattr(m, "weight", None) is not None:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)
            for name, param in m.named_parameters(recurse=False):
                if name == "layer_scale":
                    param.uniform_(0.1, 0.5)


def _out(y):
    return y["out"] if isinstance(y, dict) else y  # a segmentation model's {"out": ...}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in sorted(PEERS)])
def test_peer_weights_load_strictly_and_outputs_agree(name):
    library, ctor, size = PEERS[name]
    torch.manual_seed(0)
    peer = _peer(library, ctor).eval()
    _randomise(peer)
    ours = cnndsl.build_torch(name).eval()
    ours.load_state_dict(peer.state_dict(), strict=True)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        want = _out(peer(x))
        got = ours(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


@pytest.mark.parametrize("name", ["googlenet_torchvision", "inception_v3"])
def test_aux_heads_agree_in_training_mode(name):
    library, ctor, size = PEERS[name]
    torch.manual_seed(0)
    peer = _peer(library, ctor)
    ours = cnndsl.build_torch(name)
    ours.load_state_dict(peer.state_dict(), strict=True)
    for m in (peer, ours):  # dropout off, batch norm in training mode: the heads' numbers are comparable
        m.train()
        for sub in m.modules():
            if isinstance(sub, torch.nn.Dropout):
                sub.eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        want = peer(x)
        got = ours(x)
    # torchvision returns (logits, aux2, aux1) for GoogLeNet and (logits, aux) for Inception-v3; its aux
    # heads apply dropout functionally, so only their shapes are comparable in training mode.
    want_aux = [want.aux_logits1, want.aux_logits2] if name == "googlenet_torchvision" else [want.aux_logits]
    main, *aux = got
    assert [a.shape for a in aux] == [w.shape for w in want_aux]
    torch.testing.assert_close(main, want.logits, rtol=1e-5, atol=1e-5 * want.logits.abs().max().item())
