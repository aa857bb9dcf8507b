"""timm-style feature extraction (``build_torch(NET, features=[...])``, ``features_only=True``, ``feature_info``) and
``num_classes=`` at construction.

References: timm's documented ``feature_info`` for resnet50 and mobilenetv2_100 (numbers written here, timm is
not imported); the outputs of the whole network's modules, caught with forward hooks; the cut points found by
brute force with networkx (remove the layer, see whether the output is still reachable).
"""

from __future__ import annotations

import networkx as nx
import pytest

torch = pytest.importorskip("torch")

import cnndsl
from cnndsl import api
from cnndsl.passes.features import _cut_points, features_network

#: timm's ``feature_info`` for ``resnet50`` (features_only=True): (num_chs, reduction); its stem activation is
#: timm's ``act1``, torchvision's (and the zoo's) ``relu``.
TIMM_RESNET50 = [(64, 2), (256, 4), (512, 8), (1024, 16), (2048, 32)]
#: timm's ``mobilenetv2_100``: the first four stage ends (timm's fifth is the last block before the 1x1 head conv).
TIMM_MOBILENET_V2 = [(16, 2), (24, 4), (32, 8), (96, 16)]


def test_resnet50_features_only_matches_timms_feature_info():
    """From the IR (cheap); the slow zoo sweep builds the torch model and checks its outputs' shapes too."""
    cut, features = features_network(api.load("resnet50"))
    assert [(f.num_chs, f.reduction) for f in features] == TIMM_RESNET50
    assert [f.info()["module"] for f in features] == ["relu", "layer1", "layer2", "layer3", "layer4"]
    assert [cut.graph.node(f.node).shape for f in features][-1] == (2048, 7, 7)
    assert "fc" not in cut.graph  # the head is dropped, as timm's


def test_resnet18_feature_model_returns_a_list_with_feature_info():
    model = api.build_torch("resnet18", features_only=True, input_shape=(3, 64, 64))
    info = model.feature_info
    assert [(f["num_chs"], f["reduction"]) for f in info] == [(64, 2), (64, 4), (128, 8), (256, 16), (512, 32)]
    with torch.no_grad():
        outs = model.eval()(torch.randn(1, 3, 64, 64))
    assert isinstance(outs, list)
    assert [(o.shape[1], 64 // o.shape[2]) for o in outs] == [(f["num_chs"], f["reduction"]) for f in info]
    assert not any(k.startswith("fc.") for k in model.state_dict())


def test_mobilenet_v2_stage_ends_are_block_outputs():
    """A stage end is a block's output, not the expansion conv that starts the next, strided block."""
    _, features = features_network(api.load("mobilenet_v2"))
    assert [(f.num_chs, f.reduction) for f in features][:4] == TIMM_MOBILENET_V2


def _hooked(model, names):
    seen = {}
    for name in names:
        model.get_submodule(name).register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, out))
    return seen


@pytest.mark.parametrize("zoo, features, shape", [
    ("resnet18", ["layer2", "layer3", "layer4"], (3, 32, 32)),
    ("resnet18", ["layer1.0.conv1"], (3, 32, 32)),  # inside a block: the block is cut after it
    ("resnet18", None, (3, 32, 32)),  # features_only: the stem's in-place ReLU output is returned untouched
    ("googlenet_torchvision", None, (3, 64, 64)),
    ("mobilenet_v2", None, (3, 32, 32)),  # stage ends inside the `features` nn.Sequential, written out in place
    ("resnet18", ["layer1.0.conv1", "layer1"], (3, 32, 32)),  # inside a generated class: written out in place
])
def test_features_equal_the_whole_networks_intermediate_outputs(zoo, features, shape):
    torch.manual_seed(0)
    whole = api.build_torch(zoo, input_shape=shape).eval()
    kw = {"features_only": True} if features is None else {"features": features}
    model = api.build_torch(zoo, input_shape=shape, state_dict=whole.state_dict(), **kw).eval()
    names = [f["module"] for f in model.feature_info]
    seen = _hooked(whole, names)
    x = torch.randn(2, *shape)
    with torch.no_grad():
        outs = model(x)
        whole(x)
    assert len(outs) == len(names)
    for name, out in zip(names, outs):
        assert torch.equal(out, seen[name]), name
    # the cut network holds exactly the whole one's weights up to its last feature
    assert set(model.state_dict()) < set(whole.state_dict())


@pytest.mark.slow
@pytest.mark.parametrize("zoo", ["alexnet", "vgg16", "resnet50", "densenet121", "googlenet_torchvision", "inception_v3",
                                 "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny",
                                 "regnet_y_400mf", "shufflenet_v2_x1_0", "squeezenet1_0"])
def test_zoo_stage_ends_equal_the_whole_networks_outputs(zoo):
    torch.manual_seed(0)
    whole = api.build_torch(zoo).eval()
    model = api.build_torch(zoo, features_only=True, state_dict=whole.state_dict()).eval()
    names = [f["module"] for f in model.feature_info]
    seen = _hooked(whole, names)
    x = torch.randn(1, *api.load(zoo).input_shape)
    with torch.no_grad():
        outs = model(x)
        whole(x)
    for name, out, info in zip(names, outs, model.feature_info):
        assert torch.equal(out, seen[name]), name
        assert out.shape[1] == info["num_chs"] and x.shape[2] // out.shape[2] == info["reduction"]


def test_features_drop_everything_after_the_last_one():
    model = api.build_torch("resnet18", features=["layer1", "layer2"], input_shape=(3, 32, 32))
    whole = api.build_torch("resnet18", input_shape=(3, 32, 32))
    kept = sum(p.numel() for k, p in whole.named_parameters() if not k.startswith(("layer3.", "layer4.", "fc.")))
    assert sum(p.numel() for p in model.parameters()) == kept
    assert [f["reduction"] for f in model.feature_info] == [4, 8]


def test_features_script_and_generate_the_same_source():
    model = api.build_torch("resnet18", features=["layer3", "layer4"], input_shape=(3, 32, 32)).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(torch.jit.script(model)(x), model(x)):
            assert torch.allclose(a, b, atol=1e-5)
    from cnndsl.backends.torch import generate

    cut, info = features_network(api.load("resnet18"), ["layer3", "layer4"])
    assert generate(cut, tuple(f.node for f in info)) == generate(cut, tuple(f.node for f in info))
    assert "-> list[torch.Tensor]" in generate(cut, tuple(f.node for f in info))[0]


@pytest.mark.parametrize("zoo", ["resnet18", "googlenet_torchvision", "squeezenet1_0", "mobilenet_v2"])
def test_cut_points_agree_with_brute_force(zoo):
    g = api.load(zoo).graph
    main = g.main_path()
    dg = nx.DiGraph()
    dg.add_nodes_from(main)
    dg.add_edges_from((src, n) for n in main for src in g.inputs_of(n))
    source, sink = g.inputs[0], g.output
    brute = []
    for n in g.nodes():
        if n.name not in main:
            continue
        if n.name in (source, sink):
            brute.append(n.name)
            continue
        rest = dg.copy()
        rest.remove_node(n.name)
        if not nx.has_path(rest, source, sink):
            brute.append(n.name)
    assert _cut_points(g) == brute


def test_bad_features_are_clean_errors():
    with pytest.raises(cnndsl.CnnDslError, match="no layer or scope named 'layer9'") as e:
        api.build_torch("resnet18", features=["layer9"])
    assert "did you mean" in (e.value.hint or "")
    with pytest.raises(cnndsl.CnnDslError, match="not a feature map"):
        api.build_torch("resnet18", features=["fc"])
    with pytest.raises(cnndsl.CnnDslError, match="both given"):
        api.build_torch("resnet18", features=["layer1"], features_only=True)
    with pytest.raises(cnndsl.CnnDslError, match="a list of names"):
        api.build_torch("resnet18", features="layer1")
    with pytest.raises(cnndsl.CnnDslError, match="no features"):
        api.build_torch("resnet18", features=[])


def test_num_classes_is_the_classes_parameter(tmp_path):
    model = api.build_torch("resnet18", num_classes=5, input_shape=(3, 32, 32))
    assert model.fc.out_features == 5
    # 11,689,512 is torchvision's resnet18; 5 classes in place of 1000 take 995 * 513 fewer parameters
    assert sum(p.numel() for p in model.parameters()) == 11_689_512 - 995 * 513
    plain = tmp_path / "plain.cnn"
    plain.write_text("network plain: input 1x8x8\n    conv3-4 gap fc-2\n")
    with pytest.raises(cnndsl.CnnDslError, match="has no parameter 'classes'"):
        api.build_torch(str(plain), num_classes=3)
    with pytest.raises(cnndsl.CnnDslError, match="already built"):
        api.build_torch(api.load("resnet18"), num_classes=5)
    with pytest.raises(cnndsl.CnnDslError, match="both given"):
        api.build_torch("resnet18", num_classes=5, classes=5)


def test_a_feature_is_never_overwritten_in_place():
    """A ReLU after a feature would run in place (nobody else reads its input); the feature must keep its value."""
    text = "network n: input 1x8x8\n    c: conv3-4  r: relu  conv3-4  gap  fc-2\n"
    torch.manual_seed(0)
    model = api.build_torch(api.loads(text), features=["c", "r"]).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        c, r = model(x)
        assert torch.allclose(c, model.c(x)) and (c < 0).any()
        assert torch.equal(r, c.clamp(min=0))
