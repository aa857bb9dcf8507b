"""Generated PyTorch models in the PyTorch ecosystem: torchvision's output tuples, TorchScript in both modes,
pickling and ``torch.save`` of whole models (in a fresh process too), one class per source text, and the paper
GoogLeNet's heads giving logits that a cross-entropy loss trains."""

import copy
import hashlib
import importlib
import json
import math
import os
import pickle
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

import cnndsl
from cnndsl.front.loader import zoo_index

# Two small networks with aux heads, one of them on a point it names: torchvision's tuples for one and two heads.
TINY = """block unit(c): conv: conv3-{c} bn: bn relu
block head(classes): gap fc: fc-{classes}
network one_head(classes=5): input 1x8x8
    stem: unit(4) mid: unit(8) aux< side: head(classes) > body: unit(8) pool: gap fc: fc-{classes}
network two_heads(classes=5): input 1x8x8
    stem: unit(4) mid: unit(8) body: unit(8) aux< @mid side: head(classes) > aux< late: head(classes) >
    pool: gap fc: fc-{classes}
"""
GOOGLENET = ("GoogLeNetOutputs", ("logits", "aux_logits2", "aux_logits1"))  # torchvision/models/googlenet.py
INCEPTION = ("InceptionOutputs", ("logits", "aux_logits"))  # torchvision/models/inception.py
# case -> (network, input shape, torchvision's tuple, the module whose output each field is)
CASES = {
    "googlenet_torchvision": ("googlenet_torchvision", (3, 64, 64), GOOGLENET, ("fc", "aux2", "aux1")),
    "inception_v3": ("inception_v3", None, INCEPTION, ("fc", "AuxLogits")),
    "one_head": ("one_head", None, INCEPTION, ("fc", "side")),
    "two_heads": ("two_heads", None, GOOGLENET, ("fc", "late", "side")),
}
AUX_CASES = [pytest.param(c, marks=pytest.mark.slow) if c == "inception_v3" else c for c in CASES]  # 299x299
SCRIPT_CASES = [c if c in ("one_head", "two_heads") else pytest.param(c, marks=pytest.mark.slow) for c in CASES]
#: Training steps of the paper GoogLeNet on one batch.
STEPS = 10


def _load(case: str):
    name, shape, _, _ = CASES[case]
    if name in zoo_index():
        return cnndsl.load(name, input_shape=shape)
    return cnndsl.loads(TINY, network=name)


def _no_dropout(model):
    """Dropout off, so that two runs in training mode (eager and scripted) compute the same thing."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def _head_outputs(model, x, names):
    """The output of each module in ``names`` on input ``x``, read with forward hooks (not from the return value)."""
    seen = {}
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o)) for n in names]
    try:
        out = model(x)
    finally:
        for h in hooks:
            h.remove()
    return out, [seen[n] for n in names]


@pytest.mark.parametrize("case", AUX_CASES)
def test_aux_networks_return_torchvisions_namedtuples(case):
    net = _load(case)
    torch.manual_seed(0)
    model = _no_dropout(cnndsl.build_torch(net))
    x = torch.randn(2, *net.input_shape, generator=torch.Generator().manual_seed(1))
    (type_name, fields), modules = CASES[case][2:]
    model.train()
    out, heads = _head_outputs(model, x, modules)
    assert type(out).__name__ == type_name and out._fields == fields
    assert isinstance(out, tuple) and len(out) == len(fields)
    for got, want in zip(out, heads):
        assert got is want  # each field is its head's output, in torchvision's order
    assert out.logits is out[0]
    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert type(logits) is torch.Tensor and logits.shape == (2, *net.output_shapes[0])  # eval: the logits alone


@pytest.mark.parametrize("case", SCRIPT_CASES)
def test_aux_networks_script_in_both_modes(case):
    """torch.jit.script compiles the aux networks; the scripted model returns the tuple in both modes (the heads
    None in evaluation, as torchvision's scripted GoogLeNet and Inception3) with the eager model's values."""
    net = _load(case)
    torch.manual_seed(0)
    model = _no_dropout(cnndsl.build_torch(net))
    x = torch.randn(2, *net.input_shape, generator=torch.Generator().manual_seed(1))
    scripted = torch.jit.script(model)
    _, fields = CASES[case][2]
    with torch.no_grad():
        for mode in (True, False):
            model.train(mode)
            scripted.train(mode)
            want, got = model(x), scripted(x)
            assert tuple(got._fields) == fields
            if mode:
                for g, w in zip(got, want):
                    torch.testing.assert_close(g, w)
            else:
                torch.testing.assert_close(got.logits, want)
                assert all(h is None for h in got[1:])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(zoo_index()))
def test_zoo_scripts_in_train_and_eval_mode(name):
    net = cnndsl.load(name)
    with torch.device("meta"):  # compiling needs no weights
        model = cnndsl.build_torch(net)
    for mode in (True, False):
        model.train(mode)
        torch.jit.script(model)


def test_same_source_gives_one_class_in_a_module_named_by_its_hash():
    a, b = cnndsl.build_torch("lenet5"), cnndsl.build_torch("lenet5")
    assert type(a) is type(b)
    source = cnndsl.compile("lenet5")
    name = "cnndsl._generated.m" + hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]
    assert type(a).__module__ == name
    assert importlib.import_module(name) is sys.modules[name]
    assert getattr(importlib.import_module(name), type(a).__name__) is type(a)
    other = cnndsl.build_torch("lenet5", classes=7)  # another source: another module and class
    assert type(other) is not type(a) and type(other).__name__ == type(a).__name__


def _models_equal(a, b, x):
    assert a.state_dict().keys() == b.state_dict().keys()
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    a.eval()
    b.eval()
    with torch.no_grad():
        torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)


def test_models_pickle_deepcopy_and_save_whole():
    net = _load("two_heads")  # generated block classes, aux heads
    torch.manual_seed(0)
    model = cnndsl.build_torch(net)
    x = torch.randn(1, *net.input_shape)
    data = pickle.dumps(model)
    assert data.count(b"class GoogLeNetOutputs(NamedTuple)") == 1  # the source, once for all its instances
    back = pickle.loads(data)
    assert type(back) is type(model)
    _models_equal(model, back, x)
    _models_equal(model, copy.deepcopy(model), x)
    back.train()
    assert type(back(torch.randn(2, *net.input_shape))).__name__ == "GoogLeNetOutputs"


def test_torch_save_loads_in_a_fresh_process(tmp_path):
    """A whole model saved here loads in another interpreter (another hash seed), where nothing was generated yet:
    the pickle rebuilds the class from the source it carries, into the module of the same name."""
    torch.manual_seed(0)
    model = cnndsl.build_torch("resnet20").eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = model(x)
    torch.save(model, tmp_path / "model.pt")
    torch.save(x, tmp_path / "x.pt")
    code = (
        "import json, sys, torch\n"
        "assert not any(m.startswith('cnndsl') for m in sys.modules)\n"
        f"m = torch.load({str(tmp_path / 'model.pt')!r}, weights_only=False)\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r})\n"
        "with torch.no_grad():\n"
        f"    torch.save(m(x), {str(tmp_path / 'y.pt')!r})\n"
        "import cnndsl\n"
        "print(json.dumps([type(m).__module__, type(m).__name__, m.training,\n"
        "                  type(cnndsl.build_torch('resnet20')) is type(m)]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    module, cls, training, same_class = json.loads(done.stdout.strip().splitlines()[-1])
    assert (module, cls, training, same_class) == (type(model).__module__, type(model).__name__, False, True)
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), want, rtol=0, atol=0)


def test_stack_module_state_over_two_builds():
    """torch.func's model ensembling (stack_module_state, functional_call under vmap) over two separate builds."""
    net = cnndsl.load("lenet5")
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(cnndsl.build_torch(net).eval())
    params, buffers = torch.func.stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x = torch.randn(3, *net.input_shape)

    def run(p, b):
        return torch.func.functional_call(base, (p, b), (x,))

    with torch.no_grad():
        got = torch.vmap(run)(params, buffers)
        for i, m in enumerate(models):
            torch.testing.assert_close(got[i], m(x))


def test_paper_googlenet_returns_its_classifiers_outputs():
    """The paper's GoogLeNet returns what its three classifiers (fc layers) compute: logits, no softmax after them."""
    net = cnndsl.load("googlenet", classes=10)
    assert not any(n.op == "softmax" for n in net.graph.nodes())
    model = cnndsl.build_torch(net).train()
    with torch.no_grad():
        out, heads = _head_outputs(model, torch.randn(1, *net.input_shape), ("fc1", "aux2.fc2", "aux1.fc2"))
    assert all(isinstance(model.get_submodule(n), torch.nn.Linear) for n in ("fc1", "aux2.fc2", "aux1.fc2"))
    assert out._fields == GOOGLENET[1]
    for got, want in zip(out, heads):
        assert got is want


@pytest.mark.slow
def test_paper_googlenet_heads_give_logits_that_train():
    """The paper's GoogLeNet (heads as published, softmax left to inference) under the paper's training loss
    (cross-entropy on the logits plus 0.3 times each aux head's) learns a batch. Were its heads softmax outputs p,
    each cross-entropy term, log(sum_j exp(p_j)) - p_y, would be at least log(e + classes - 1) - 1 (all the mass
    on the label), so the loss could never fall below 1.6 times that."""
    classes = 10
    net = cnndsl.load("googlenet", classes=classes)
    assert not any(n.op == "softmax" for n in net.graph.nodes())
    torch.manual_seed(0)
    model = _no_dropout(cnndsl.build_torch(net)).train()
    x = torch.randn(4, *net.input_shape, generator=torch.Generator().manual_seed(1))
    y = torch.arange(4) % classes
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    losses = []
    for _ in range(STEPS):
        out = model(x)
        loss = sum(w * torch.nn.functional.cross_entropy(o, y) for w, o in zip((1.0, 0.3, 0.3), out))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    softmax_floor = 1.6 * (math.log(math.e + classes - 1) - 1)
    assert min(losses) < softmax_floor < losses[0], losses  # any loss below the floor rules softmax heads out
