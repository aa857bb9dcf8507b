"""Generated models load the peers' weights (strict) and compute what the peers compute.

The peers are torchvision's and timm's models, which need a torch other than the CPU build of
the main environment; these tests skip where torchvision is not importable. See the README
("The zoo") for the second environment they run in.
"""

from __future__ import annotations

import pytest

import cnndsl

torch = pytest.importorskip("torch")
tv_models = pytest.importorskip("torchvision.models")

# zoo network -> (library, constructor, input size)
PEERS = {
    "alexnet_torchvision": ("torchvision", "alexnet", 224),
    **{n: ("torchvision", n, 224) for n in ("vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg16_bn")},
    **{n: ("torchvision", n, 224) for n in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")},
    "googlenet_torchvision": ("torchvision", "googlenet", 224),
    "inception_v3": ("torchvision", "inception_v3", 299),
    "inception_v4": ("timm", "inception_v4", 299),
    "inception_resnet_v2": ("timm", "inception_resnet_v2", 299),
}


def _peer(library: str, ctor: str):
    if library == "timm":
        timm = pytest.importorskip("timm")
        return timm.create_model(ctor, pretrained=False)
    kwargs = {"aux_logits": True, "init_weights": True} if ctor in ("googlenet", "inception_v3") else {}
    return getattr(tv_models, ctor)(weights=None, **kwargs)


@pytest.mark.parametrize("name", sorted(PEERS))
def test_peer_weights_load_strictly_and_outputs_agree(name):
    library, ctor, size = PEERS[name]
    torch.manual_seed(0)
    peer = _peer(library, ctor).eval()
    with torch.no_grad():  # random batch-norm statistics, so that a misplaced BN cannot hide
        for m in peer.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    ours = cnndsl.build_torch(name).eval()
    ours.load_state_dict(peer.state_dict(), strict=True)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        want = peer(x)
        got = ours(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


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
