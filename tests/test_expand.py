"""`cnndsl expand` round-trips: expanded text loads to the same graph, shapes and counts."""

import pytest
from conftest import zoo_names

import cnndsl
from cnndsl.report.expand import expand


@pytest.mark.parametrize("name", zoo_names())
def test_expand_round_trips(zoo, name):
    net = zoo(name)
    text = expand(net)
    again = cnndsl.loads(text, f"{name}.expanded.cnn")
    assert again.graph.signature() == net.graph.signature()
    assert (again.params, again.macs, again.activations) == (net.params, net.macs, net.activations)
    assert expand(again).splitlines()[1:] == text.splitlines()[1:]  # a fixed point (bar the header comment)
    init = (net.graph.init, net.graph.zero_init_residual, net.graph.init_fc)  # `with init(...)` survives
    assert (again.graph.init, again.graph.zero_init_residual, again.graph.init_fc) == init
    assert ("with init(" in text.splitlines()[1]) == (net.graph.init is not None)


INIT_NET = """
    block unit(c, s=1) with conv(bias=false): residual< conv3-{c}/{s} bn relu conv3-{c} bn > relu
    network t with init(kaiming, zero_init_residual=true, fc=default), conv(act=relu): input 3x8x8
        conv3-4 unit(4) unit(8, 2) gap fc-3
"""


def test_expand_keeps_the_weight_initialisation():
    """The expanded network builds the same seed-0 weights as the original: He-normal convs, zeroed last batch
    norm scales in the residual bodies, PyTorch's default fc (and without the `with init` clause it would not)."""
    torch = pytest.importorskip("torch")
    from cnndsl.search.arch_hash import arch_hash

    net = cnndsl.loads(INIT_NET)
    text = expand(net)
    assert "network t with init(kaiming, zero_init_residual=true, fc=default): input 3x8x8" in text
    again = cnndsl.loads(text)
    assert again.graph.signature() == net.graph.signature() and arch_hash(again.graph) == arch_hash(net.graph)

    def weights(n):
        torch.manual_seed(0)
        return cnndsl.build_torch(n).state_dict()

    want, got = weights(net), weights(again)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert not want["unit1.bn2.weight"].any() and want["unit1.bn1.weight"].eq(1).all()
    bare = weights(cnndsl.loads(text.replace(" with init(kaiming, zero_init_residual=true, fc=default)", "")))
    assert not all(torch.equal(want[k], bare[k]) for k in want)


def test_expand_spells_out_defaults_and_shortcuts():
    net = cnndsl.loads("""
        block unit(c, s=1): residual< conv3-{c}/{s} bn relu conv3-{c} bn > relu
        network t with conv(act=relu): input 3x8x8
            conv3-4 unit(8, 2) fc-10
    """)
    text = expand(net)
    assert "relu1: relu" in text  # the default activation after conv1
    assert "unit1.downsample.0: conv(c=8, k=(1, 1), s=(2, 2)" in text  # the projection shortcut
    assert "fc1: fc(c=10, bias=true)" in text and "relu" not in text.split("fc1:")[1]  # logits stay linear


def test_expand_keeps_aux_outputs_and_skips():
    net = cnndsl.loads("""
        network t: input 3x16x16
            stem: conv3-8  conv3-8/2  aux< gap fc-3 >  conv3-8 deconv2-8/2  concat< @stem | identity >
    """)
    again = cnndsl.loads(expand(net))
    assert again.graph.outputs == net.graph.outputs == ["concat1", "fc1"]


# Pass bookkeeping (fold_bn's record of the batch norm it folded) lives in node metadata, not in the
# layer's arguments: the inference build expands to .cnn text that loads, and hashes as that text does.
INFERENCE_NETS = ["lenet5", "resnet18", "resnet20", "vgg11_bn", "googlenet", "inception_v3", "alexnet"]


@pytest.mark.parametrize("name", INFERENCE_NETS)
def test_expand_of_the_inference_build_loads_to_the_same_graph(zoo, name):
    from cnndsl.api import inference_network
    from cnndsl.search.arch_hash import arch_hash

    inf = inference_network(zoo(name))
    text = expand(inf)
    assert "folded" not in text
    again = cnndsl.loads(text, f"{name}.inference.expanded.cnn")
    assert again.graph.signature() == inf.graph.signature()
    assert (again.params, again.macs, again.activations, again.output_shapes) == \
        (inf.params, inf.macs, inf.activations, inf.output_shapes)
    assert arch_hash(again.graph) == arch_hash(inf.graph)


def test_bookkeeping_changes_neither_the_arch_hash_nor_expand(zoo):
    import copy

    from cnndsl.passes import fold_bn
    from cnndsl.search.arch_hash import arch_hash

    net = zoo("resnet18")
    g = copy.deepcopy(net.graph)
    before, text = arch_hash(g), expand(net)
    for node in g.nodes():
        node.meta["note"] = {"by": "a pass", "order": node.order}
    assert arch_hash(g) == before and expand(cnndsl.Network(g)) == text
    folded = fold_bn(copy.deepcopy(net.graph))
    convs = [n for n in folded.nodes() if "folded_from" in n.meta]
    assert convs and all(set(n.args) == set(net.graph.node(n.name).args) for n in convs)


def test_expand_writes_numbered_scopes_tables_scale_split_resize_and_templates_back():
    """Each construct desugars to layers under their full names (`features.0.1.mul1: scale< @gate >`,
    `trunk.block1-1.0`, slices and a concat), which load back to the same graph."""
    net = cnndsl.loads("""
        block se(c): scale< gap conv1-{c} relu conv1-{in.c} sigmoid >
        network t: input 8x16x16
            features: [seq< conv3-8 se(2) bn > for i in (1) (2): stage{i}: seq< split< skip | conv1-4 relu > x{i} >]
            trunk: for i in range(2): block{i}-{i}: [conv1-8 relu]
            resize(bilinear)< @input > gap fc-10
    """)
    text = expand(net)
    assert "features.0.1.mul1: scale< @features.0.1.sigmoid1 >" in text and "trunk.block1-1.0: conv(" in text
    assert "features.stage2.1.slice2: slice(start=4, stop=8)" in text and "resize(mode=bilinear" in text
    again = cnndsl.loads(text, "t.expanded.cnn")
    assert again.graph.signature() == net.graph.signature()
    assert expand(again).splitlines()[1:] == text.splitlines()[1:]


#: Derived networks with freeze(...): the zoo's ResNet-18 frozen but for layer4 and fc (its projection shortcuts
#: made by the compiler included), and the zoo's DenseNet with smaller numbers frozen up to its second block.
FROZEN = {
    "resnet18": 'use "resnet.cnn"\nnetwork tuned = resnet18(classes=5) freeze(conv1, bn1, layer1, layer2, layer3)\n',
    "densenet": 'use "densenet.cnn"\nnetwork tuned = densenet(8, 2, 2, 2, 2, 16, classes=5) '
                'freeze(features.conv0, features.norm0, features.denseblock1, features.transition1)\n',
}


@pytest.mark.parametrize("name", sorted(FROZEN))
def test_expand_keeps_freeze(name):
    """The expansion of a frozen network loads to a network that freezes the same tensors: the torch model's
    parameters without requires_grad, and the batch norms kept in eval mode by train(), are the original's."""
    torch = pytest.importorskip("torch")

    net = cnndsl.loads(FROZEN[name], input_shape=(3, 32, 32))
    text = expand(net)
    again = cnndsl.loads(text, f"{name}.expanded.cnn", network="tuned")
    assert again.graph.signature() == net.graph.signature()  # node.frozen included
    # the file stands for the derived network (its one network that the others are bases of): no name needed
    assert cnndsl.loads(text, f"{name}.expanded.cnn").graph.signature() == net.graph.signature()
    assert expand(again).splitlines()[1:] == text.splitlines()[1:]

    def frozen(n):
        model = cnndsl.build_torch(n).train()
        tensors = {k for k, p in model.named_parameters() if not p.requires_grad}
        kept = {k for k, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d) and not m.training}
        return tensors, kept, {k for k, _ in model.named_parameters()}

    (want, want_bn, names), (got, got_bn, _) = frozen(net), frozen(again)
    assert want and want != names and (got, got_bn) == (want, want_bn)
    if name == "resnet18":  # the case: the generated projection shortcuts are frozen in the expansion too
        assert {"layer2.0.downsample.0.weight", "layer3.0.downsample.1.weight"} <= got
        assert "network tuned = tuned_base freeze(conv1, bn1, layer1, layer2, layer3)" in text
    # without its freeze line, the expanded base network is the unfrozen one
    plain = cnndsl.loads(text, network="tuned_base")
    assert not any(n.frozen for n in plain.graph.nodes())


def test_expand_writes_each_frozen_layer_once_by_its_outermost_frozen_scope():
    net = cnndsl.loads("""
        network t: input 3x8x8  stem: [conv3-4 bn relu]  b: [c: [conv3-4 bn] relu]  fc-3
        network u = t freeze(stem.0, stem.1, stem.2, b.c.0, b.c)
    """, network="u")
    assert expand(net).splitlines()[-1] == "network u = u_base freeze(stem, b.c)"
