"""freeze(...): everything below a frozen scope is frozen, generated shortcuts included, and frozen batch norms
keep their running statistics (eval mode inside ``train()``, as torchvision's FrozenBatchNorm2d).

The references are outside the code under test: the set of trainable parameters is worked out from the
state_dict names and the frozen prefixes; a frozen batch norm's output is checked against FrozenBatchNorm2d's
formula, written out here; "does not move" is a bitwise comparison of tensors before and after training steps.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import cnndsl
from cnndsl import api

GOOGLENET_BODY = ("conv1, conv2, conv3, inception3a, inception3b, inception4a, inception4b, inception4c, "
                  "inception4d, inception4e, inception5a, inception5b, aux1, aux2")

#: The README's recipe on three networks: the derived network, its input, and its new head's layers.
RECIPES = {
    "resnet18": ('use "resnet.cnn"\nnetwork tuned = resnet18(classes=5) freeze(conv1, bn1, layer1, layer2, layer3, layer4)\n',
                 (3, 32, 32), ("fc",)),
    "googlenet_torchvision": (f'use "googlenet.cnn"\nnetwork tuned = googlenet_torchvision(classes=5) freeze({GOOGLENET_BODY})\n',
                              (3, 64, 64), ("fc",)),
    # the zoo's DenseNet with smaller numbers (k=8, two layers a block), so that the default run stays cheap
    "densenet": ('use "densenet.cnn"\nnetwork tuned = densenet(8, 2, 2, 2, 2, 16, classes=5) freeze(features)\n',
                 (3, 32, 32), ("classifier",)),
    "densenet121": ('use "densenet.cnn"\nnetwork tuned = densenet121(classes=5) freeze(features)\n', (3, 32, 32),
                    ("classifier",)),
}
SLOW = {"densenet121"}


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _bns(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}


def test_freeze_reaches_the_generated_projection_shortcuts():
    """The issue's case: layer2.0.downsample.* and layer3.0.downsample.* were left trainable."""
    frozen = ("conv1", "bn1", "layer1", "layer2", "layer3")
    net = api.loads(f'use "resnet.cnn"\nnetwork r = resnet18(classes=5) freeze({", ".join(frozen)})\n')
    model = api.build_torch(net)
    names = [k for k, _ in model.named_parameters()]
    assert any(k.startswith("layer2.0.downsample.") for k in names)  # the shortcut exists, so the test can fail
    expected = {k for k in names if not _under(k, frozen)}
    assert {k for k, p in model.named_parameters() if p.requires_grad} == expected
    assert all(n.frozen for n in net.graph.nodes() if _under(n.name, frozen))
    assert not any(n.frozen for n in net.graph.nodes() if not _under(n.name, frozen))
    # the summary's trainable count agrees with torch's
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == \
        sum(n.params for n in net.graph.nodes() if not n.frozen)


def test_freeze_reaches_a_conv_shortcut_inside_a_block():
    """``shortcut=conv`` (one 1x1 conv with bias, not a sequence) made inside a frozen block is frozen too."""
    text = """block res(c, s=1): residual(shortcut=conv)< conv3-{c}/{s} bn relu conv3-{c} bn >  relu
network small(classes=3): input 3x8x8
    stem: conv3-8  stage: [res(16, 2) res(16)]  gap  fc: fc-{classes}
network tuned = small freeze(stage)
"""
    net = api.loads(text, network="tuned")
    shortcuts = [n for n in net.graph.nodes() if n.name.endswith("downsample")]
    assert shortcuts and all(n.op == "conv" and n.frozen for n in shortcuts)
    model = api.build_torch(net)
    assert {k for k, p in model.named_parameters() if p.requires_grad} == \
        {k for k, _ in model.named_parameters() if not _under(k, ("stage",))}


@pytest.mark.parametrize("zoo", [pytest.param(z, marks=pytest.mark.slow) if z in SLOW else z for z in sorted(RECIPES)])
def test_recipe_trains_only_the_new_head_and_keeps_frozen_statistics(zoo):
    text, shape, head = RECIPES[zoo]
    torch.manual_seed(0)
    model = api.build_torch(api.loads(text, input_shape=shape))
    names = [k for k, _ in model.named_parameters()]
    assert {k for k, p in model.named_parameters() if p.requires_grad} == {k for k in names if _under(k, head)}
    bns = _bns(model)
    assert bns and not any(_under(k, head) for k in bns)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    assert all(not m.training for m in bns.values())  # eval mode inside train(), as FrozenBatchNorm2d
    assert model.training and model.get_submodule(head[0]).training
    for step in range(3):
        x, y = torch.randn(4, *shape) * 3 + 1, torch.tensor([0, 1, 2, 3 + step % 2])
        out = model(x)
        logits = out[0] if isinstance(out, tuple) else out
        opt.zero_grad()
        torch.nn.functional.cross_entropy(logits, y).backward()
        opt.step()
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved == {k for k in names if _under(k, head)}  # the head learns; weights and statistics stay put


def test_frozen_batch_norm_computes_frozen_batch_norm_2d():
    """In train(), a frozen batch norm is torchvision's FrozenBatchNorm2d: (x - mean) / sqrt(var + eps) * w + b with
    the running statistics (formula written out here), whatever the batch."""
    text, shape, _ = RECIPES["resnet18"]
    torch.manual_seed(1)
    model = api.build_torch(api.loads(text, input_shape=shape))
    for m in _bns(model).values():  # statistics and affine parameters that are not the identity
        m.running_mean.uniform_(-1, 1)
        m.running_var.uniform_(0.5, 2)
        torch.nn.init.uniform_(m.weight, 0.5, 1.5)
        torch.nn.init.uniform_(m.bias, -0.5, 0.5)
    seen = {}

    def hook(name):
        def record(module, args, out):
            (x,) = args
            scale = module.weight / torch.sqrt(module.running_var + module.eps)
            shift = module.bias - module.running_mean * scale
            seen[name] = torch.allclose(out, x * scale[None, :, None, None] + shift[None, :, None, None],
                                        rtol=1e-4, atol=1e-5)
        return record

    for name, m in _bns(model).items():
        m.register_forward_hook(hook(name))
    model.train()
    with torch.no_grad():
        model(torch.randn(3, *shape))
    assert seen and all(seen.values()), [k for k, ok in seen.items() if not ok]


def test_train_frozen_bn_lets_frozen_statistics_train():
    """The documented option: ``train_frozen_bn = True`` puts frozen batch norms in training mode (their running
    statistics update), while their weights stay frozen."""
    text, shape, head = RECIPES["resnet18"]
    model = api.build_torch(api.loads(text, input_shape=shape))
    model.train_frozen_bn = True
    model.train()
    bns = _bns(model)
    assert all(m.training for m in bns.values())
    means = {k: m.running_mean.clone() for k, m in bns.items()}
    model(torch.randn(4, *shape))
    assert all(not torch.equal(means[k], m.running_mean) for k, m in bns.items())
    assert {k for k, p in model.named_parameters() if p.requires_grad} == \
        {k for k, _ in model.named_parameters() if _under(k, head)}
    model.eval()
    assert not any(m.training for m in bns.values())


def test_only_frozen_batch_norms_stay_in_eval():
    """Batch norms outside the frozen scopes train as usual; eval() still puts everything in eval mode."""
    net = api.loads('use "resnet.cnn"\nnetwork r = resnet18(classes=5) freeze(conv1, bn1, layer1)\n',
                    input_shape=(3, 32, 32))
    model = api.build_torch(net)
    model.train()
    for name, m in _bns(model).items():
        assert m.training == (not _under(name, ("bn1", "layer1"))), name
    model.eval()
    assert not any(m.training for m in model.modules())


def test_a_network_without_frozen_batch_norms_keeps_nn_module_train():
    """No frozen batch norm, no ``train`` override: the generated source is as before."""
    src = api.compile("resnet18")
    assert "def train(" not in src and "train_frozen_bn" not in src
    frozen_src = api.compile(api.loads('use "resnet.cnn"\nnetwork r = resnet18 freeze(layer1)\n'))
    assert "def train(" in frozen_src and "train_frozen_bn = False" in frozen_src


def test_frozen_model_scripts_and_is_deterministic():
    text, shape, _ = RECIPES["resnet18"]
    net = api.loads(text, input_shape=shape)
    assert api.compile(net) == api.compile(api.loads(text, input_shape=shape))
    model = api.build_torch(net).train()
    scripted = torch.jit.script(model)
    x = torch.randn(2, *shape)
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), atol=1e-5)


def test_freeze_of_an_unknown_name_is_a_clean_error():
    with pytest.raises(cnndsl.CnnDslError, match="nothing named 'layer9'"):
        api.loads('use "resnet.cnn"\nnetwork r = resnet18 freeze(layer9)\n')
    # one layer of a shortcut the compiler makes later: the hint says to freeze the shortcut whole
    with pytest.raises(cnndsl.CnnDslError, match="nothing named 'layer2.0.downsample.0'") as e:
        api.loads('use "resnet.cnn"\nnetwork r = resnet18 freeze(layer2.0.downsample.0)\n')
    assert "freeze(layer2.0.downsample)" in e.value.hint


def test_freeze_names_a_shortcut_whole():
    model = api.build_torch(api.loads('use "resnet.cnn"\nnetwork r = resnet18 freeze(layer2.0.downsample)\n'))
    assert {k for k, p in model.named_parameters() if not p.requires_grad} == \
        {k for k, _ in model.named_parameters() if k.startswith("layer2.0.downsample.")} != set()


MIXED = """block unit(c, s=1): residual< conv3-{c}/{s} bn relu conv3-{c} bn >  relu
network small(classes=3): input 3x16x16
    stem: [conv3-8 bn relu]  stage: [unit(8) unit(8) unit(16, 2)]  gap  fc: fc-{classes}
network tuned = small freeze(stem, stage.0)
"""


def _mixed_frozen():
    """A small ResNet frozen up to its first block: one block class with a frozen and a trained instance (the JAX
    and Flax printers pass the difference as an argument), and a projection shortcut's batch norm."""
    net = api.loads(MIXED, network="tuned")
    torch.manual_seed(2)
    model = api.build_torch(net)
    for m in _bns(model).values():
        m.running_mean.uniform_(-0.5, 0.5)
        m.running_var.uniform_(0.5, 2)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        ref = model.train()(x).numpy()
    frozen = {k for k in _bns(model) if _under(k, ("stem", "stage.0"))}
    assert frozen and len(frozen) < len(_bns(model))
    return net, model, x, ref, frozen


def test_jax_frozen_batch_norms_keep_their_statistics():
    """JAX's apply(train=True) normalises frozen batch norms with their running statistics (the torch model in
    train() is the reference) and returns them unchanged; the others train."""
    jax = pytest.importorskip("jax")
    import numpy as np

    net, model, x, ref, frozen = _mixed_frozen()
    jm = api.build_jax(net)
    variables = api.torch_to_jax(net, model.state_dict())
    out, new_stats = jm.apply(variables, x.numpy().transpose(0, 2, 3, 1), train=True, rng=jax.random.key(0))
    assert np.allclose(np.asarray(out), ref, rtol=1e-3, atol=1e-4)

    def stats_at(tree, name):
        for part in name.split("."):
            tree = tree[part]
        return np.asarray(tree["mean"])

    for name in _bns(model):
        same = np.array_equal(stats_at(new_stats, name), stats_at(variables["batch_stats"], name))
        assert same == (name in frozen), name


def test_flax_frozen_batch_norms_keep_their_statistics():
    """Flax: the frozen batch norms (as many as torch's, the rest plain nnx.BatchNorm) keep their statistics in
    train(), the output is the torch model's in train(); set_attributes(train_frozen_bn=True) trains them."""
    pytest.importorskip("flax")
    import numpy as np
    from cnndsl.backends.flax import torch_to_flax
    from flax import nnx

    net, model, x, ref, frozen = _mixed_frozen()
    fm = torch_to_flax(net, model.state_dict())
    fm.train()
    bns = [m for _, m in nnx.iter_modules(fm) if isinstance(m, nnx.BatchNorm)]
    kept = [type(m).__name__ == "_FrozenBatchNorm" for m in bns]
    assert len(bns) == len(_bns(model)) and sum(kept) == len(frozen)
    before = [np.asarray(m.mean.value).copy() for m in bns]
    out = np.asarray(fm(x.numpy().transpose(0, 2, 3, 1)))
    assert np.allclose(out, ref, rtol=1e-3, atol=1e-4)
    assert [np.array_equal(b, np.asarray(m.mean.value)) for b, m in zip(before, bns)] == kept
    fm.set_attributes(train_frozen_bn=True)
    fm(x.numpy().transpose(0, 2, 3, 1))
    assert not any(np.array_equal(b, np.asarray(m.mean.value)) for b, m in zip(before, bns))


def test_jax_train_frozen_bn_lets_frozen_statistics_train():
    """JAX's switch, spelled as torch's: ``apply(..., train=True, train_frozen_bn=True)`` trains the frozen batch
    norms' statistics as the torch model with ``train_frozen_bn = True`` does (the reference: its output and its
    running statistics after the same batch), under jax.jit too; without it they stay put (the test above)."""
    jax = pytest.importorskip("jax")
    import numpy as np

    net, model, x, _, frozen = _mixed_frozen()
    jm = api.build_jax(net)
    variables = api.torch_to_jax(net, {k: v.clone() for k, v in model.state_dict().items()})
    model.train_frozen_bn = True
    with torch.no_grad():
        ref = model.train()(x).numpy()
    apply = jax.jit(jm.apply, static_argnames=("train", "train_frozen_bn"))
    xs = x.numpy().transpose(0, 2, 3, 1)
    out, new_stats = apply(variables, xs, train=True, train_frozen_bn=True, rng=jax.random.key(0))
    assert np.allclose(np.asarray(out), ref, rtol=1e-3, atol=1e-4)

    def stats_at(tree, name, which):
        for part in name.split("."):
            tree = tree[part]
        return np.asarray(tree[which])

    for name, m in _bns(model).items():
        old = stats_at(variables["batch_stats"], name, "mean")
        assert not np.array_equal(stats_at(new_stats, name, "mean"), old), name  # every one moved, frozen or not
        for which, torch_stat in (("mean", m.running_mean), ("var", m.running_var)):
            assert np.allclose(stats_at(new_stats, name, which), torch_stat.numpy(), rtol=1e-4, atol=1e-5), name
    # the switch is off by default, and means nothing in evaluation
    _, kept = apply(variables, xs, train=True, rng=jax.random.key(0))
    assert all(np.array_equal(stats_at(kept, n, "mean"), stats_at(variables["batch_stats"], n, "mean"))
               for n in frozen)
    assert np.array_equal(np.asarray(apply(variables, xs, train_frozen_bn=True)), np.asarray(apply(variables, xs)))
