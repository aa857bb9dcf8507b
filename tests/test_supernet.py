"""One-shot NAS supernets (issue 16): a member's path through the supernet is its own network.

The oracle is the member's standalone model, built by ``cnndsl.build_torch`` from the flat member network and
the weights ``extract`` gives it: the path must compute what that model computes, in evaluation mode with the
same batch-norm statistics, and BN recalibration must leave the statistics torch's own cumulative batch norm
reaches on the standalone model.
"""

import random

import pytest
import torch
from cnndsl.backends.supernet_torch import Supernet

import cnndsl
from cnndsl.search.supernet import member_layers
from cnndsl.search.variants import Space

RC = "resnet_cifar.cnn:6:"
N1, N2, N3, W = RC + "31", RC + "42", RC + "53", RC + "63"
KERNEL_SPACE = """network k(k={3|5|7}, c={8|4}) with conv(bias=true): input 1x8x8
    conv{k}-{c} bn relu conv3-{2*c}/2 bn relu gap fc-10
"""


def _agree(supernet: Supernet, choices: dict, x: torch.Tensor) -> float:
    """The largest difference between the supernet's path and the extracted standalone model, in eval mode."""
    supernet.eval()
    network, state = supernet.extract(choices)
    model = cnndsl.build_torch(network, state_dict=state).eval()  # strict loading
    with torch.no_grad():
        return (supernet(x, choices) - model(x)).abs().max().item()


def _warm(supernet: Supernet, members: list[dict], x: torch.Tensor, steps: int = 2) -> None:
    """A few SPOS steps, so that weights and batch-norm statistics are not their initial values."""
    opt = torch.optim.SGD(supernet.parameters(), lr=0.05)
    supernet.train()
    for i in range(steps * len(members)):
        opt.zero_grad()
        supernet(x, members[i % len(members)]).logsumexp(1).mean().backward()
        opt.step()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These models are tiny: on a shared machine torch's thread pool costs more than it gives (a 3x16x16 MBConv
    step took 3 s on two threads under load, 0.05 s on one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def resnet_cifar():
    space = Space.open("resnet_cifar", input_shape=(1, 8, 8))
    members = [v.choices for v in space.sample(4, seed=3)]
    largest = {N1: 2, N2: 2, N3: 2, W: 2}
    return Supernet(space, member_layers, [largest, *members]), [largest, *members]


@pytest.fixture(scope="module")
def nb201():
    space = Space.open("nb201", input_shape=(3, 8, 8), params={"n": 1})
    members = [v.choices for v in space.sample(5, seed=1)]
    return Supernet(space, member_layers, members), members


def test_resnet_cifar_paths_equal_extracted_models(resnet_cifar):
    supernet, members = resnet_cifar
    torch.manual_seed(0)
    x = torch.randn(4, 1, 8, 8)
    _warm(supernet, members[1:], x, steps=1)
    for choices in members:
        assert _agree(supernet, choices, x) < 1e-4


def test_nb201_paths_equal_extracted_models(nb201):
    supernet, members = nb201
    torch.manual_seed(1)
    x = torch.randn(4, 3, 8, 8)
    _warm(supernet, members, x, steps=1)
    for choices in members:
        assert _agree(supernet, choices, x) < 1e-4


def test_nb201_holds_each_option_once_per_place(nb201):
    """One cell a stage: 3 cells x 6 edges x 2 conv options (a conv and a batch norm's 5 tensors each), plus the
    stem, two reductions, the last batch norm and the classifier: 255 tensors, every member's among them; the
    counts are NAS-Bench-201's (the all-3x3 member has the benchmark network's parameters, tests/test_nb201.py)."""
    supernet, _ = nb201
    first = supernet.space.member({}).choices
    for choices in [first, *supernet.space.neighbours(first)]:
        supernet.path(choices)
    assert len(supernet.keys) == 3 * 6 * 2 * 6 + 6 + 2 * 13 + 5 + 2
    # and its parameters are the all-3x3 member's and each edge's 1x1 conv and batch norm, once a cell
    assert sum(p.numel() for p in supernet.parameters()) == \
        supernet.space.member(first).params + 6 * sum(c * c + 2 * c for c in (16, 32, 64))


def test_a_gradient_step_through_one_member_moves_only_what_it_holds(nb201):
    """Edge 0->1 as a 3x3 or a 1x1 conv: the two members share the stem and every other edge, not the edge."""
    supernet, _ = nb201
    a = {k: 0 for k in supernet.space.points}
    b = {**a, "nb201.cnn:15:9": 1}
    x = torch.randn(2, 3, 8, 8)
    supernet.eval()
    before_a, before_b = supernet.tensors(a), supernet.tensors(b)
    before_a = {k: v.clone() for k, v in before_a.items()}
    before_b = {k: v.clone() for k, v in before_b.items()}
    out_b = supernet(x, b).detach()
    supernet.zero_grad()
    supernet(x, a).sum().backward()
    with torch.no_grad():
        for p in supernet.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
    after_a, after_b = supernet.tensors(a), supernet.tensors(b)
    assert not torch.equal(before_b["stem.0.weight"], after_b["stem.0.weight"])
    assert torch.equal(after_a["stem.0.weight"], after_b["stem.0.weight"])
    own_b = "cell1.n1.0.conv1.weight"  # b's 1x1 conv on edge 0->1: a never reaches it
    assert after_b[own_b].shape[-1] == 1 and torch.equal(before_b[own_b], after_b[own_b])
    assert not torch.equal(before_a[own_b], after_a[own_b])
    assert not torch.allclose(out_b, supernet(x, b).detach())


def test_width_choices_share_the_largest_tensor_sliced(resnet_cifar):
    supernet, _ = resnet_cifar
    wide = {N1: 0, N2: 0, N3: 0, W: 2}
    narrow = {**wide, W: 0}
    _, big = supernet.extract(wide)
    _, small = supernet.extract(narrow)
    assert big["conv1.weight"].shape == (32, 1, 3, 3) and small["conv1.weight"].shape == (16, 1, 3, 3)
    assert torch.equal(small["conv1.weight"], big["conv1.weight"][:16])
    assert torch.equal(small["layer2.0.conv1.weight"], big["layer2.0.conv1.weight"][:32, :16])
    assert torch.equal(small["fc.weight"], big["fc.weight"][:, :64])
    assert torch.equal(small["bn1.running_var"], big["bn1.running_var"][:16])
    # the pool holds the tensor once: the narrow member's weight is a view of it
    pool = supernet.tensors(wide)["conv1.weight"]
    assert supernet.tensors(narrow)["conv1.weight"].data_ptr() == pool.data_ptr()


def test_repeat_choices_use_the_first_blocks(resnet_cifar):
    supernet, _ = resnet_cifar
    deep, shallow = {N1: 2, N2: 0, N3: 0, W: 0}, {N1: 0, N2: 0, N3: 0, W: 0}
    _, d = supernet.extract(deep)
    _, s = supernet.extract(shallow)
    assert "layer1.3.conv1.weight" in d and "layer1.2.conv1.weight" not in s
    for k in s:
        if k.startswith("layer1."):
            assert torch.equal(s[k], d[k])


def test_kernel_choices_share_the_centre_of_the_largest(tmp_path):
    path = tmp_path / "k.cnn"
    path.write_text(KERNEL_SPACE)
    space = Space.open(str(path))
    supernet = cnndsl.build_supernet(space)  # 6 members: all of them size the pool
    key, width = "k.cnn:1:13", "k.cnn:1:24"
    sd = {k: supernet.extract({key: i, width: 0})[1]["conv1.weight"] for i, k in enumerate((3, 5, 7))}
    assert [tuple(w.shape[-2:]) for w in sd.values()] == [(3, 3), (5, 5), (7, 7)]
    assert torch.equal(sd[5], sd[7][:, :, 1:6, 1:6]) and torch.equal(sd[3], sd[7][:, :, 2:5, 2:5])
    x = torch.randn(3, 1, 8, 8)
    _warm(supernet, [{key: i, width: j} for i in range(3) for j in range(2)], x, steps=1)
    for i in range(3):
        for j in range(2):
            assert _agree(supernet, {key: i, width: j}, x) < 1e-4


def test_branch_options_are_candidates_of_their_own():
    """NAS-Bench-201's 3x3 and 1x1 convs on one edge differ in kernel, but a branch choice's options are
    candidates: their places differ, so neither is a slice of the other."""
    space = Space.open("nb201", input_shape=(3, 8, 8), params={"n": 1})
    a = member_layers(space.member({}).network_obj, space.points)["cell1.n1.0.conv1"]
    b = member_layers(space.member({"nb201.cnn:15:9": 1}).network_obj, space.points)["cell1.n1.0.conv1"]
    assert a.place != b.place and a.op == b.op == "conv"


def test_bn_recalibration_matches_torch_cumulative_batch_norm(resnet_cifar):
    supernet, members = resnet_cifar
    choices = members[1]
    torch.manual_seed(2)
    batches = [torch.randn(5, 1, 8, 8) for _ in range(3)]
    assert supernet.recalibrate(choices, batches) == 3
    assert not supernet.training
    network, state = supernet.extract(choices)
    model = cnndsl.build_torch(network, state_dict=state)
    for m in model.modules():  # the oracle: torch's own batch norm, reset, cumulative
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    for k, v in model.state_dict().items():
        if "running" in k or "num_batches" in k:
            assert torch.allclose(v.double(), state[k].double(), atol=1e-6), k
    assert _agree(supernet, choices, batches[0]) < 1e-4


def test_a_member_outside_the_pool_grows_it_and_keeps_the_old_values():
    space = Space.open("resnet_cifar", input_shape=(1, 8, 8))
    narrow, wide = {N1: 0, N2: 0, N3: 0, W: 0}, {N1: 1, N2: 0, N3: 0, W: 1}
    supernet = Supernet(space, member_layers, [narrow])
    old = supernet.extract(narrow)[1]
    _, grown = supernet.extract(wide)
    assert grown["conv1.weight"].shape[0] == 24 and "layer1.2.conv1.weight" in grown
    assert all(torch.equal(v, supernet.extract(narrow)[1][k]) for k, v in old.items())
    assert _agree(supernet, wide, torch.randn(2, 1, 8, 8)) < 1e-4


def test_pool_state_round_trips(nb201):
    supernet, members = nb201
    again = Supernet(supernet.space, member_layers, [])
    again.load_pool(*supernet.pool_state())
    assert again.pool_state()[1] == supernet.pool_state()[1]
    x = torch.randn(2, 3, 8, 8)
    supernet.eval()
    again.eval()
    choices = members[random.Random(0).randrange(len(members))]
    with torch.no_grad():
        assert torch.equal(supernet(x, choices), again(x, choices))


TINY_SPACE = """network tiny(c={8|12}, k={3|5}, n={1..2}, classes=10): input 1x8x8
    stem: [conv3-{c} bn relu]
    body: [choice< conv{k}-{c} bn relu | conv1-{c} bn relu > x{n}]
    maxpool2/2 flatten fc: fc-{classes}
"""


def test_train_search_best_end_to_end_on_digits(tmp_path, capsys):
    """`supernet train` -> `supernet search` -> best.cnn + best.safetensors, which load and score on the held-out
    split what the search reported for them; `supernet eval` scores members the same way."""
    from cnndsl.search.supernet import _data, _open_space
    from cnndsl.tools.cli import main

    space_file = tmp_path / "tiny.cnn"
    space_file.write_text(TINY_SPACE)
    run = tmp_path / "run"
    assert main(["supernet", "train", str(space_file), "--data", "digits", "--epochs", "1", "--out", str(run)]) == 0
    assert (run / "supernet.safetensors").is_file() and (run / "space.json").is_file()
    assert main(["supernet", "search", str(run), "--trials", "8", "--population", "4", "--tournament", "2"]) == 0
    rows = (run / "search.csv").read_text().splitlines()
    assert len(rows) == 9 and rows[0].startswith("trial,accuracy,params")
    best = max((float(r.split(",")[1]) for r in rows[1:] if r.split(",")[1]), default=None)
    model = cnndsl.build_torch(str(run / "best.cnn"), weights=str(run / "best.safetensors")).eval()
    space, _ = _open_space(run)
    _, _, xv, yv = _data(space, "digits")
    with torch.no_grad():
        accuracy = (model(xv).argmax(1) == yv).float().mean().item()
    assert accuracy == pytest.approx(best, abs=1e-6)
    assert accuracy > 0.5  # one epoch of SPOS on digits: well above chance (0.1)
    assert main(["supernet", "eval", str(run), "--sample", "2"]) == 0
    assert len((run / "eval.csv").read_text().splitlines()) == 3
    assert "best: trial" in capsys.readouterr().out
    _check_pareto_search(run)


def _check_pareto_search(run):
    """`--objectives accuracy,params`: pareto.csv holds exactly the first-seen scored members that no other
    beats in both (checked pair by pair here), each with its member's source beside it."""
    import csv

    from cnndsl.tools.cli import main

    assert main(["supernet", "search", str(run), "--trials", "10", "--population", "4", "--tournament", "3",
                 "--objectives", "accuracy,params", "--seed", "1"]) == 0
    rows = list(csv.DictReader((run / "search.csv").open()))
    seen = [(int(r["trial"]), float(r["accuracy"]), int(r["params"])) for r in rows
            if r["accuracy"] and not r["duplicate_of"]]

    def beaten(a):
        return any(b[1] >= a[1] and b[2] <= a[2] and (b[1] > a[1] or b[2] < a[2]) for b in seen)
    pareto = list(csv.DictReader((run / "pareto.csv").open()))
    assert [int(r["trial"]) for r in pareto] == [a[0] for a in seen if not beaten(a)]
    for r in pareto:
        assert cnndsl.load(str(run / r["source"])).params == int(r["params"])
    assert main(["supernet", "search", str(run), "--objectives", "accuracy,latency"]) != 0


# ----------------------------------------------------------------------------- the MBConv space

#: One block's options: kernel 3/5/7, expansion 3/4/6, SE off or on.
MB_BLOCK = 3 * 3 * 2
#: A stage: two blocks, then a choice of none, a third, or a third and a fourth.
MB_STAGE = MB_BLOCK ** 2 * (1 + MB_BLOCK * (1 + MB_BLOCK))


def _largest(space: Space) -> dict:
    """Every choice at its last option: kernel 7, expansion 6, SE on, four blocks a stage."""
    return {k: len(p.node.options) - 1 for k, p in space.points.items()}


@pytest.fixture(scope="module")
def mbconv():
    space = Space.open("mbconv_space", input_shape=(3, 16, 16))
    members = [_largest(space), *(v.choices for v in space.sample(3, seed=5))]
    return Supernet(space, member_layers, members), members


def test_mbconv_space_counts_as_the_arithmetic_says():
    """18 options a block (3 kernels x 3 expansions x SE off/on), 2 to 4 blocks in each of 3 stages."""
    space = Space.open("mbconv_space")
    assert MB_STAGE == 111_132
    assert space.count() == MB_STAGE ** 3 == 1_372_515_920_491_968
    assert len(space.points) == 3 * (4 * 3 + 2)  # per stage: 4 blocks' 3 choices, and the 2 depth choices
    first = space.member({})
    assert first.valid and sum(1 for n in first.network_obj.graph.nodes() if n.op == "add") == 3  # one a stage


def test_mbconv_paths_equal_extracted_models(mbconv):
    supernet, members = mbconv
    torch.manual_seed(4)
    x = torch.randn(3, 3, 16, 16)
    _warm(supernet, members, x, steps=1)
    supernet.recalibrate(members[1], [x[:2], x[1:]])
    for choices in members:
        assert _agree(supernet, choices, x) < 1e-4


def test_mbconv_every_tensor_shares_by_slicing(mbconv):
    """Kernels, expansions (the depthwise conv included), SE widths and depths all slice one tensor a place:
    the pool is exactly the largest member (every option at its largest), by the IR's own count."""
    supernet, members = mbconv
    places = {}
    for key in supernet.keys.values():
        head = key.partition("|")[0]
        places.setdefault(head, set()).add(key)
    assert all(len(keys) == 1 for keys in places.values())
    assert sum(p.numel() for p in supernet.parameters()) == supernet.space.member(members[0]).params
    largest = {key for key, _, _ in supernet.path(members[0]).entries.values()}
    for choices in members[1:]:  # every member's tensors are slices of the largest member's
        assert {key for key, _, _ in supernet.path(choices).entries.values()} <= largest


def test_mbconv_slices_depthwise_se_and_projection_as_ofa_does(mbconv):
    supernet, members = mbconv
    space = supernet.space
    small = {k: 0 for k in space.points}  # kernel 3, expansion 3, no SE, two blocks a stage
    at = {k: tuple(map(int, k.rsplit(":", 2)[1:])) for k in space.points}  # a choice point is file:line:col
    line = min(line for line, _ in at.values())  # the first block: its kernel, expansion and SE
    k1, e1, se1 = sorted((k for k in at if at[k][0] == line), key=at.get)
    mid = {**small, k1: 1, e1: 1, se1: 1}  # 5x5, expansion 4, SE on
    _, s = supernet.extract(small)
    _, b = supernet.extract(members[0])
    _, m = supernet.extract(mid)
    dw = "features.1.block.1.0.weight"
    assert s[dw].shape == (48, 1, 3, 3) and b[dw].shape == (96, 1, 7, 7) and m[dw].shape == (64, 1, 5, 5)
    assert torch.equal(s[dw], b[dw][:48, :, 2:5, 2:5]) and torch.equal(m[dw], b[dw][:64, :, 1:6, 1:6])
    fc1 = "features.1.block.2.fc1.weight"  # SE squeezes to make_divisible(e // 4): 16 of 64, 24 of 96
    assert m[fc1].shape == (16, 64, 1, 1) and torch.equal(m[fc1], b[fc1][:16, :64])
    # the projection is one tensor with SE on or off, though it is block.3 after an SE and block.2 without
    assert torch.equal(s["features.1.block.2.0.weight"], b["features.1.block.3.0.weight"][:, :48])


@pytest.mark.slow
def test_mbconv_many_members_at_full_size_equal_extracted_models():
    """Twelve sampled members at the space's own 3x32x32, after SPOS steps and each member's BN recalibration."""
    space = Space.open("mbconv_space")
    members = [_largest(space), *(v.choices for v in space.sample(12, seed=11))]
    supernet = Supernet(space, member_layers, members)
    torch.manual_seed(5)
    x = torch.randn(4, 3, 32, 32)
    _warm(supernet, members, x, steps=2)
    for choices in members:
        supernet.recalibrate(choices, [x[:2], x[2:]])
        assert _agree(supernet, choices, x) < 1e-4


def test_kendall_tau_matches_hand_counts_and_scipy():
    from cnndsl.search.supernet import kendall_tau

    assert kendall_tau([1, 2, 3, 4, 5], [3, 1, 2, 5, 4]) == pytest.approx(0.4)  # 7 concordant, 3 discordant
    # with ties: 4 concordant pairs, none discordant; 5 of 6 pairs apart in each: 4 / sqrt(5 * 5)
    assert kendall_tau([1, 2, 2, 3], [1, 3, 2, 3]) == pytest.approx(0.8)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(0)
    for _ in range(5):
        a = [rng.randrange(4) for _ in range(9)]
        b = [rng.random() for _ in range(9)]
        assert kendall_tau(a, b) == pytest.approx(stats.kendalltau(a, b).statistic)


def test_supernet_source_runs_members_as_the_supernet_does(tmp_path):
    """`cnndsl supernet source`: the pool table, each member's slices and the runner, run with torch alone (and
    the member's own model, built from the source it records), give the supernet's own path on its own pool."""
    import importlib.util

    from cnndsl.tools.cli import main

    space_file = tmp_path / "k.cnn"
    space_file.write_text(KERNEL_SPACE)
    out = tmp_path / "supernet_k.py"
    assert main(["supernet", "source", str(space_file), "-o", str(out)]) == 0
    spec = importlib.util.spec_from_file_location("supernet_k", out)
    generated = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generated)
    supernet = cnndsl.build_supernet(Space.open(str(space_file)))
    x = torch.randn(3, 1, 8, 8)
    _warm(supernet, [m["choices"] for m in generated.MEMBERS], x, steps=1)
    runner = generated.Supernet()
    runner.load_pool(supernet.pool_state()[0])
    assert len(generated.MEMBERS) == 6 and set(generated.POOL) == set(supernet.keys)
    supernet.eval()
    runner.eval()
    for i, member in enumerate(generated.MEMBERS):
        (tmp_path / f"m{i}.cnn").write_text(member["source"])
        model = cnndsl.build_torch(str(tmp_path / f"m{i}.cnn"))
        with torch.no_grad():
            assert torch.equal(runner(x, i, model), supernet(x, member["choices"]))
