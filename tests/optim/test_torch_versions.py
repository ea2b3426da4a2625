"""Optional torch features: a preset whose torch base is missing is importable and raises a clear
error when constructed (``import adamhd`` works on the declared minimum torch)."""

import pytest
import torch

from adamhd.optim import presets


def test_a_missing_base_is_importable_and_names_the_torch_it_needs():
    Missing = presets._base("NoSuchOptimizer", "9.9")
    assert Missing.unavailable is True
    with pytest.raises(RuntimeError, match=r"torch.optim.NoSuchOptimizer \(torch >= 9.9\)"):
        Missing([torch.zeros(2, requires_grad=True)])


def test_an_existing_base_is_wrapped():
    wrapped = presets._base("NAdam", "2.0")
    assert wrapped._decay_base is torch.optim.NAdam and not getattr(wrapped, "unavailable", False)


def test_the_lab_lists_no_unavailable_entrant(monkeypatch):
    import adamhd
    from adamhd.lab import zoo

    monkeypatch.setattr(adamhd, "MuonHD", presets._base("NoSuchOptimizer", "9.9"))
    names = []
    zoo.register_all(lambda key, *a, **k: names.append(key))
    assert "muonhd" not in names and "nadamhd" in names
