import pytest
import torch

from adamhd.lab import evaluate as ev
from adamhd.lab.model import GPT, GPTConfig, prunable_weights


def weights():
    torch.manual_seed(0)
    return {"a": torch.randn(10, 10), "b": 10 * torch.randn(20, 5)}


def test_global_pruning_zeroes_exactly_the_smallest():
    w = weights()
    masks = ev.prune_masks(w, 0.3, "global")
    flat = torch.cat([w[n].abs().flatten() for n in w])
    keep = torch.cat([masks[n].flatten() for n in w])
    assert (~keep).sum().item() == 60  # 30% of 200
    assert flat[~keep].max() <= flat[keep].min()
    # b is ten times larger: global ranking takes most from a
    assert (~masks["a"]).sum() > (~masks["b"]).sum()


def test_layer_pruning_takes_the_same_fraction_from_each():
    w = weights()
    masks = ev.prune_masks(w, 0.3, "layer")
    assert (~masks["a"]).sum().item() == 30 and (~masks["b"]).sum().item() == 30
    a = w["a"].abs()
    assert a[~masks["a"]].max() <= a[masks["a"]].min()


def test_zero_sparsity_and_errors():
    w = weights()
    assert all(m.all() for m in ev.prune_masks(w, 0.0, "global").values())
    with pytest.raises(ValueError):
        ev.prune_masks(w, 1.0, "global")
    with pytest.raises(ValueError):
        ev.prune_masks(w, 0.5, "random")


def test_pruned_context_restores_weights():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, context=8, n_layer=1, n_head=2, n_embd=8))
    before = {n: w.clone() for n, w in prunable_weights(model).items()}
    masks = ev.prune_masks(prunable_weights(model), 0.5, "global")
    with ev.pruned(model, masks):
        zeros = sum((w == 0).sum().item() for w in prunable_weights(model).values())
        assert zeros == sum(w.numel() for w in before.values()) // 2
    for n, w in prunable_weights(model).items():
        assert torch.equal(w, before[n])


def test_max_sparsity_within_uses_the_monotone_envelope():
    curve = [(0.0, 2.0), (0.1, 2.001), (0.2, 2.019), (0.3, 2.05), (0.4, 2.0)]
    assert ev.max_sparsity_within(curve) == 0.2  # 0.4 passes again, but after a failure
    assert ev.max_sparsity_within([(0.0, 1.0), (0.1, 1.5)]) == 0.0


def test_pruning_curve_refines_between_grid_points():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, context=8, n_layer=1, n_head=2, n_embd=8))
    total = sum(w.numel() for w in prunable_weights(model).values())

    def fake_loss(m):  # loss rises 0.07% per percent of zeros: +1% at 14.3% sparsity
        zeros = sum((w == 0).sum().item() for w in prunable_weights(m).values())
        return 1.0 + 0.07 * zeros / total

    curve = ev.pruning_curve(model, fake_loss, "global", grid=(0.0, 0.2, 0.4), refine=3)
    # 0.2 fails; bisection of (0, 0.2): 0.1 passes, 0.15 fails, 0.125 passes
    assert curve["max_sparsity"] == pytest.approx(0.125)
    assert curve["sparsity"] == sorted(curve["sparsity"])
    assert len(curve["sparsity"]) == 6


def test_bytes_saved_arithmetic():
    b = ev.bytes_saved(n_prunable=1000, n_total=2000, sparsity=0.5)
    assert b["zeroed_bytes"] == 2000.0  # 500 weights x 4 bytes
    assert b["net_bitmap_bytes"] == 4000 - (2000 + 125)  # kept values + 1000-bit mask
    assert b["model_bytes"] == 8000
    assert b["net_frac_of_model"] == pytest.approx(1875 / 8000)
    assert ev.bytes_saved(1000, 1000, 0.0)["net_bitmap_bytes"] < 0  # the mask is not free


def test_weight_stats_and_histogram():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, context=8, n_layer=1, n_head=2, n_embd=8))
    with torch.no_grad():
        prunable_weights(model)["blocks.0.mlp.fc.weight"].zero_()
    stats = ev.weight_stats(model)
    assert stats["blocks.0.mlp.fc.weight"]["frac_below_0.001"] == 1.0
    assert stats["blocks.0.mlp.fc.weight"]["norm"] == 0.0
    hist = ev.magnitude_histogram(model)
    n = sum(w.numel() for w in prunable_weights(model).values())
    assert hist["zeros"] == 8 * 32
    assert sum(hist["counts"]) + hist["zeros"] == n
