"""prune_channels: structured channel pruning of float torch models with torch-pruning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latentopt.prune.channels import output_layers, prune_channels


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3),
                         nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 12), nn.ReLU(),
                         nn.Linear(12, 3))


def test_prunes_every_layer_but_the_output_and_keeps_the_model_runnable():
    m = _cnn()
    x = torch.randn(4, 1, 8, 8)
    report = prune_channels(m, x[:1], 0.5)
    assert report["before"] == {"0": 8, "3": 6, "6": 12, "8": 3}
    assert report["after"] == {"0": 4, "3": 3, "6": 6, "8": 3}
    assert report["ignored"] == ["8"]
    assert m[0].in_channels == 1 and m[1].num_features == 4 and m[3].in_channels == 4
    assert m[6].in_features == 3 * 4 * 4
    assert m(x).shape == (4, 3)


def test_l1_keeps_the_largest_channels():
    m = _cnn()
    with torch.no_grad():
        m[0].weight.mul_(torch.tensor([1, 10, 1, 10, 1, 10, 1, 10.0]).view(8, 1, 1, 1))
    big = m[0].weight[1::2].clone()
    prune_channels(m, torch.zeros(1, 1, 8, 8), {"0": 0.5})
    assert torch.equal(m[0].weight, big)
    assert m[3].out_channels == 6  # not named: not pruned


def test_output_layers_of_a_branching_model():
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(3, 4), nn.Linear(4, 2), nn.Linear(4, 2)

        def forward(self, x):  # type: ignore[no-untyped-def]
            h = torch.relu(self.a(x))
            return self.b(h) + self.c(h)

    assert sorted(output_layers(Two())) == ["b", "c"]


@pytest.mark.parametrize("ratio, match", [(1.0, r"\[0, 1\)"), ({"nope": 0.5}, "unknown"),
                                          ({"6": 0.99}, "every channel")])
def test_bad_ratios_are_refused(ratio, match):
    with pytest.raises(ValueError, match=match):
        prune_channels(_cnn(), torch.zeros(1, 1, 8, 8), ratio)


class _Coupled(nn.Module):
    """``stem`` and ``c2`` meet in a residual addition and ``dw`` is depthwise: the three
    share their output channels; ``c1`` is free."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):  # type: ignore[no-untyped-def]
        x = torch.relu(self.stem(x))
        x = self.dw(x + torch.relu(self.c2(torch.relu(self.c1(x)))))
        return self.head(x.mean((2, 3)))


def test_coupled_layers_take_one_ratio():
    x = torch.zeros(1, 1, 6, 6)
    m = _Coupled()
    with pytest.raises(ValueError, match=r"share their output channels.*one ratio"):
        prune_channels(m, x, {"stem": 0.0, "c2": 0.75})  # stem was pruned 8 -> 2
    assert m.stem.out_channels == 8, "a refused ratio leaves the model as it was"
    with pytest.warns(UserWarning, match=r"\['dw', 'stem'\] share their output channels"):
        report = prune_channels(m, x, {"c2": 0.5})
    assert report["after"] == {"stem": 4, "c1": 8, "c2": 4, "dw": 4, "head": 3}
    assert m(torch.zeros(2, 1, 6, 6)).shape == (2, 3)
    m = _Coupled()  # a search samples one ratio per layer: the group takes the largest
    with pytest.warns(UserWarning, match=r"at the largest ratio asked, 0.75"):
        report = prune_channels(m, x, {"stem": 0.0, "c2": 0.75}, coupled="largest")
    assert report["after"]["stem"] == report["after"]["dw"] == 2


def test_unmet_ratios_of_grouped_convolutions_are_reported_and_narrow_layers_kept():
    class Grouped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(1, 8, 3, padding=1)
            self.g = nn.Conv2d(8, 8, 3, padding=1, groups=4)
            self.one = nn.Conv2d(8, 1, 1)  # one channel: no ratio can prune it
            self.head = nn.Linear(1, 3)

        def forward(self, x):  # type: ignore[no-untyped-def]
            x = torch.relu(self.one(torch.relu(self.g(torch.relu(self.a(x))))))
            return self.head(x.mean((2, 3)))

    x = torch.zeros(1, 1, 6, 6)
    with pytest.warns(UserWarning, match=r"g 8 -> 8 \(asked 0.75\).*whole groups"):
        report = prune_channels(Grouped(), x, 0.75)  # two channels a group: all or none
    assert report["after"]["one"] == 1
    m = Grouped()
    assert prune_channels(m, x, 0.5)["after"] == {"a": 4, "g": 4, "one": 1, "head": 3}
    assert m(x).shape == (1, 3)
    with pytest.warns(UserWarning, match=r"would remove every channel of a \(8\), g \(8\)"):
        assert prune_channels(Grouped(), x, 0.9)["after"]["a"] == 8  # left, and said so
