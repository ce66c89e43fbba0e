"""Genotype JSON round trip, derivation from alphas, and clear errors for broken genotype files."""
import json

import pytest
import torch
from helpers import small_model_config

from emodarts.model.derive import derive_cell, derive_genotype
from emodarts.model.network import DerivedNetwork
from emodarts.model.space import CNN_PRIMITIVES, load_genotype, save_genotype
from emodarts.model.supernet import Supernet
from emodarts.runtime.errors import GenotypeError


def _genotype():
    torch.manual_seed(0)
    net = Supernet(small_model_config(), 10, 4)
    for a in net.arch_parameters():
        a.data.normal_()
    return derive_genotype(net, meta={"epoch": 3})


def test_round_trip(tmp_path):
    g = _genotype()
    save_genotype(g, tmp_path / "g.json")
    back = load_genotype(tmp_path / "g.json")
    assert back == g and back.meta == {"epoch": 3}
    assert json.loads((tmp_path / "g.json").read_text())["format"] == "emodarts-genotype/1"


def test_derive_keeps_two_strongest_edges_and_best_non_none():
    prims = CNN_PRIMITIVES
    alpha = torch.full((5, len(prims)), -5.0)
    alpha[:, 0] = 10.0  # `none` dominates everywhere and must never be chosen
    alpha[0, prims.index("sep_conv_3x3")] = 2.0
    alpha[1, prims.index("max_pool_3x3")] = 1.0
    # node 1 reads states 0, 1, 2 (rows 2, 3, 4): keep states 0 and 2
    alpha[2, prims.index("dil_conv_5x5")] = 3.0
    alpha[3, prims.index("avg_pool_3x3")] = 0.5
    alpha[4, prims.index("skip_connect")] = 4.0
    cell = derive_cell(alpha, prims, 2)
    assert cell.nodes == ((("sep_conv_3x3", 0), ("max_pool_3x3", 1)), (("dil_conv_5x5", 0), ("skip_connect", 2)))


@pytest.mark.parametrize("mutate,field", [
    (lambda d: d.pop("seq"), "missing field 'seq'"),
    (lambda d: d["normal"][0].__setitem__(0, ["conv_9x9", 0]), "normal[0][0]"),
    (lambda d: d["reduce"][1].__setitem__(1, ["sep_conv_3x3", 7]), "reduce[1][1]"),
    (lambda d: d["seq"][0].__setitem__(0, ["none", 0]), "seq[0][0]"),
    (lambda d: d["seq"][0].__setitem__(0, ["sep_conv_3x3", 0]), "seq[0][0]"),
    (lambda d: d["normal"][0].__setitem__(0, "sep_conv_3x3"), "normal[0][0]"),
    (lambda d: d.__setitem__("format", "pt.darts"), "'format'"),
    (lambda d: d.__setitem__("normal", []), "'normal'"),
])
def test_broken_genotype_names_the_field(tmp_path, mutate, field):
    data = _genotype().to_dict()
    mutate(data)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(data))
    with pytest.raises(GenotypeError) as err:
        load_genotype(path)
    assert field in str(err.value) and str(path) in str(err.value)


def test_unreadable_and_non_json_files(tmp_path):
    with pytest.raises(GenotypeError, match="cannot read"):
        load_genotype(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("Genotype(normal=[('sep_conv_3x3', 0)])")
    with pytest.raises(GenotypeError, match="not valid JSON"):
        load_genotype(tmp_path / "bad.json")


def test_genotype_mismatching_configuration():
    g = _genotype()
    with pytest.raises(GenotypeError, match="'normal' has 2 nodes"):
        DerivedNetwork(small_model_config(cnn_nodes=3), g, 10, 4)
    with pytest.raises(GenotypeError, match=r"seq\[\d\]\[\d\]"):
        DerivedNetwork(small_model_config(seq_primitives=("none", "rnn_4")), g, 10, 4)


def test_derived_network_trains():
    g = _genotype()
    net = DerivedNetwork(small_model_config(), g, 10, 4)
    net.set_drop_path(0.2)
    out = net(torch.randn(3, 1, 10, 11))
    assert out.shape == (3, 4)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
