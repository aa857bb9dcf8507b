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


# ----------------------------------------------------------------------------- op for op
# A model at torchvision's speed runs torchvision's kernels: counted with torch.profiler (deterministic, unlike a
# timing), the generated model calls no aten op more often than its peer does, and allocates no more often: where
# the peer writes in place (``out += identity``, ``ReLU(inplace=True)``, ``Dropout(inplace=True)``) so does the
# generated model, or it does where the peer does not (then it calls the in-place twin instead, which is counted
# with it). Views (permute, flatten, ...) cost no kernel and are not counted, nor is `new_empty`, which only
# calls the aten::empty that is counted (`x.new_empty(shape)` where torchvision writes `torch.empty(shape, ...)`).
_VIEWS = {"aten::" + op for op in ("view", "_unsafe_view", "reshape", "permute", "as_strided", "flatten",
                                   "unflatten", "transpose", "t", "expand", "squeeze", "unsqueeze", "select",
                                   "slice", "detach", "alias", "_reshape_alias", "new_empty")}
_TWINS = ("add", "mul", "relu", "clamp_min", "dropout", "hardswish", "silu", "hardsigmoid", "sigmoid")
# Written differently, the same kernel: torchvision's MNASNet and ShuffleNetV2 pool with x.mean([2, 3]), the zoo's
# `gap` is nn.AdaptiveAvgPool2d(1), whose aten::adaptive_avg_pool2d calls the same aten::mean.
_SAME_KERNEL = {"mnasnet": {"aten::adaptive_avg_pool2d"}, "shufflenet": {"aten::adaptive_avg_pool2d"}}
# A training step at batch 1 for the models the benchmarks time against torchvision, and the residual families
# whose in-place sums go through stochastic depth.
_TRAINED = ("resnet18", "resnet50", "vgg16", "googlenet_torchvision", "inception_v3", "efficientnet_b0",
            "convnext_tiny", "mobilenet_v2")


def _aten_calls(fn) -> dict[str, int]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key: e.count for e in prof.key_averages() if e.key.startswith("aten::") and e.key not in _VIEWS}


def _more_than_the_peer(name: str, ours: dict[str, int], peer: dict[str, int]) -> list[str]:
    allowed = set().union(*(ops for family, ops in _SAME_KERNEL.items() if name.startswith(family)))
    twins = {f"aten::{op}" for op in _TWINS} | {f"aten::{op}_" for op in _TWINS}
    worse = [f"{op}: {ours.get(op, 0)} calls, the peer {peer.get(op, 0)}" for op in sorted(set(ours) | set(peer))
             if op not in twins and op not in allowed and ours.get(op, 0) > peer.get(op, 0)]
    for op in _TWINS:
        out_of_place, in_place = f"aten::{op}", f"aten::{op}_"
        mine = (ours.get(out_of_place, 0), ours.get(in_place, 0))
        theirs = (peer.get(out_of_place, 0), peer.get(in_place, 0))
        if mine[0] > theirs[0] or sum(mine) > sum(theirs):
            worse.append(f"{op} (out of place, in place): {mine}, the peer {theirs}")
    return worse


def _trained_once(model, x):
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        out = model(x)
        outs = out if isinstance(out, (tuple, list)) else (getattr(out, "logits", out),)
        sum(torch.nn.functional.cross_entropy(_out(o), torch.zeros(len(x), dtype=torch.long)) for o in outs
            if o is not None).backward()
        opt.step()

    step()  # the first step makes the optimiser's buffers
    return step


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in sorted(PEERS)])
def test_no_aten_op_runs_more_often_than_in_the_peer(name):
    library, ctor, size = PEERS[name]
    torch.manual_seed(0)
    peer = _peer(library, ctor).eval()
    ours = cnndsl.build_torch(name).eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        worse = _more_than_the_peer(name, _aten_calls(lambda: ours(x)), _aten_calls(lambda: peer(x)))
    assert not worse, f"{name} in eval mode calls more than {ctor}: " + "; ".join(worse)
    if name in _TRAINED:  # batch 2: a batch norm on a 1x1 map (Inception-v3's aux head) needs two values
        ours.load_state_dict(peer.state_dict(), strict=True)
        x = torch.randn(2, 3, size, size)
        worse = _more_than_the_peer(name, _aten_calls(_trained_once(ours, x)), _aten_calls(_trained_once(peer, x)))
        assert not worse, f"{name}'s training step calls more than {ctor}'s: " + "; ".join(worse)


# EfficientNet-B0..B7 write 0.2 on every block (docs/torchvision.md: "What is not expressed"); V2 and ConvNeXt
# write torchvision's schedule.
_DEPTH_DROPPED = sorted(n for n in PEERS if n.startswith(("efficientnet_v2", "convnext")))


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in _DEPTH_DROPPED])
def test_stochastic_depth_rates_are_the_peers_block_by_block(name):
    """torchvision grows the rate with a block's index over the network; its rates are compared as floats, so
    the schedule's arithmetic is the same too. torchvision gives every EfficientNetV2 block a StochasticDepth
    and uses it only with a residual; the zoo writes `droppath` only there."""
    library, ctor, _ = PEERS[name]
    peer = _peer(library, ctor)
    if name.startswith("convnext"):
        want = [m.p for m in peer.modules() if type(m).__name__ == "StochasticDepth"]
    else:
        want = [m.stochastic_depth.p for m in peer.modules()
                if type(m).__name__ in ("MBConv", "FusedMBConv") and m.use_res_connect]
    got = [m.p for m in cnndsl.build_torch(name).modules() if type(m).__name__ == "DropPath"]
    assert got == want
