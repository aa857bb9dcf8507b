"""Generated models load torchvision's weights (strict) and compute what torchvision computes.

Runs where torchvision is importable (not the main venv): ``/work/tvenv/bin/python -m pytest tests/test_peers.py``.
"""

from __future__ import annotations

import pytest

import cnndsl

torch = pytest.importorskip("torch")
tv_models = pytest.importorskip("torchvision.models")

# zoo network -> torchvision constructor, input size
PEERS = {
    "resnet18": ("resnet18", 224),
    "resnet50": ("resnet50", 224),
    "vgg11": ("vgg11", 224),
    "alexnet_torchvision": ("alexnet", 224),
    "googlenet_torchvision": ("googlenet", 224),
}


@pytest.mark.parametrize("name", sorted(PEERS))
def test_peer_weights_load_strictly_and_outputs_agree(name):
    ctor, size = PEERS[name]
    torch.manual_seed(0)
    kwargs = {"aux_logits": True, "init_weights": True} if ctor == "googlenet" else {}
    peer = getattr(tv_models, ctor)(weights=None, **kwargs).eval()
    ours = cnndsl.build_torch(name).eval()
    ours.load_state_dict(peer.state_dict(), strict=True)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        want = peer(x)
        got = ours(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
