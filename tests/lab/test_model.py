import math

import pytest
import torch

from adamhd import param_groups
from adamhd.lab.model import GPT, GPTConfig, make_config, prunable_weights


def small(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{"vocab_size": 50, "context": 16, "n_layer": 2, "n_head": 2,
                            "n_embd": 16, **kw}))


def test_shapes_and_scalar_loss():
    model = small()
    x = torch.randint(0, 50, (3, 16))
    logits, loss = model(x, x)
    assert logits.shape == (3, 16, 50)
    assert loss.shape == () and torch.isfinite(loss)
    logits, loss = model(x[:, :5])
    assert logits.shape == (3, 5, 50) and loss is None


def test_future_tokens_do_not_change_earlier_logits():
    model = small().eval()
    x = torch.randint(0, 50, (2, 16))
    y = x.clone()
    y[:, 9:] = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        a, _ = model(x)
        b, _ = model(y)
    torch.testing.assert_close(a[:, :9], b[:, :9], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_uniform_logits_give_log_vocab():
    model = small()
    with torch.no_grad():
        model.ln_f.weight.zero_()
        model.ln_f.bias.zero_()
    x = torch.randint(0, 50, (2, 16))
    _, loss = model(x, x)
    assert loss.item() == pytest.approx(math.log(50), abs=1e-6)


def test_untrained_loss_is_near_log_vocab():
    model = small()
    x = torch.randint(0, 50, (8, 16))
    _, loss = model(x, torch.randint(0, 50, (8, 16)))
    assert abs(loss.item() - math.log(50)) < 0.1  # GPT-2 init: logits start near zero


def test_weight_tying_and_gpt2_init():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=256, context=64, n_layer=4, n_head=4, n_embd=128))
    assert model.lm_head.weight is model.wte.weight
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    resid = 0.02 / math.sqrt(2 * 4)
    assert model.blocks[0].mlp.proj.weight.std().item() == pytest.approx(resid, rel=0.05)
    assert model.blocks[0].attn.proj.weight.std().item() == pytest.approx(resid, rel=0.05)
    assert model.blocks[1].mlp.fc.bias.abs().sum().item() == 0.0
    # tied weights are counted once
    assert model.num_params() == sum(p.numel() for p in set(model.parameters()))


def test_param_groups_exempt_biases_and_norms():
    model = small()
    decayed, exempt = param_groups(model, 0.1)
    assert all(p.dim() == 2 for p in decayed["params"])
    exempt_ids = {id(p) for p in exempt["params"]}
    assert id(model.ln_f.weight) in exempt_ids and id(model.blocks[0].mlp.fc.bias) in exempt_ids
    assert exempt["weight_decay"] == 0.0


@pytest.mark.parametrize("weight_decay", [-0.1, math.nan, math.inf, "0.1", True])
def test_param_groups_refuses_a_weight_decay_no_optimizer_takes(weight_decay):
    with pytest.raises(ValueError, match=r"param_groups: weight_decay must be a finite number "
                                         r">= 0, got"):
        param_groups(torch.nn.Linear(2, 2), weight_decay)


def test_prunable_weights_are_block_matrices():
    model = small()
    names = list(prunable_weights(model))
    assert len(names) == 2 * 4  # qkv, attn proj, fc, mlp proj per block
    assert all(n.startswith("blocks.") and n.endswith(".weight") for n in names)


def test_configs_and_errors():
    assert make_config("tiny", 256).n_layer == 4
    assert make_config("gpt2-124m", 50257).n_embd == 768
    assert make_config("small", 256, context=32).context == 32
    with pytest.raises(ValueError, match="unknown model size"):
        make_config("huge", 256)
    with pytest.raises(ValueError, match="exceeds the model's context"):
        small()(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible"):
        GPT(GPTConfig(n_embd=30, n_head=4))
