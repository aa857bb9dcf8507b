"""The Python API and the summary formats."""

import collections
import csv
import io
import json
import math
import subprocess
import sys

import pytest
from conftest import peer_fixture

import cnndsl


def test_load_zoo_and_overrides():
    net = cnndsl.load("resnet50", classes=10)
    assert net.input_shape == (3, 224, 224)
    assert net.output_shapes == [(10,)]
    assert net.graph.node("fc").shape == (10,)


def test_loads_with_filename_and_params():
    text = "network t(width=8): input 1x28x28  conv3-{width} relu maxpool fc-10"
    net = cnndsl.loads(text, "t.cnn", width=16)
    assert net.graph.node("conv1").shape == (16, 28, 28)
    with pytest.raises(cnndsl.CnnDslError) as e:
        cnndsl.loads(text, "t.cnn", depth=3)
    assert "no parameter 'depth'" in e.value.message


def test_input_override_changes_every_shape():
    net = cnndsl.load("resnet18", input_shape=(3, 160, 160))
    assert net.graph.node("layer4.1.relu2").shape == (512, 5, 5)
    assert net.params == cnndsl.load("resnet18").params  # gap makes the head size-independent


def test_summary_json_has_the_documented_fields():
    net = cnndsl.load("vgg16")
    data = json.loads(net.summary("json"))
    assert {"params", "macs", "activations", "input_shape", "layers"} <= set(data)
    assert data["params"] == 138_357_544 and data["macs"] == 15_470_264_320  # torchvision vgg16
    row = data["layers"][1]
    assert set(row) >= {"name", "op", "shape", "params", "macs", "activations"}
    per_module = collections.Counter()  # torchvision vgg16's state_dict, as tests/peers/fixtures recorded it
    for key, shape in peer_fixture("vgg16")["state_dict"]:
        per_module[key.rpartition(".")[0]] += math.prod(shape)
    assert {r["name"]: r["params"] for r in data["layers"] if r["params"]} == per_module


def test_summary_csv_rows_match_the_graph():
    net = cnndsl.load("resnet18")
    rows = list(csv.DictReader(io.StringIO(net.summary("csv"))))
    assert len(rows) == len(net.graph)
    assert sum(int(r["params"]) for r in rows) == 11_689_512  # torchvision resnet18


def test_cli_summary_json_and_list():
    out = subprocess.run([sys.executable, "-m", "cnndsl", "summary", "resnet18", "--format", "json",
                          "--input", "3x64x64"], capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["input_shape"] == [3, 64, 64]
    listing = subprocess.run([sys.executable, "-m", "cnndsl", "list"], capture_output=True, text=True,
                             check=True).stdout
    assert "resnet50" in listing and "25,557,032" in listing


def test_cli_bad_input_shape_is_usage_error():
    r = subprocess.run([sys.executable, "-m", "cnndsl", "summary", "resnet18", "--input", "3x0x7"], check=False,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
