"""Lightning ``configure_optimizers`` with AdamHD equals a hand-written loop (examples/)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

try:
    import lightning  # noqa: F401
except ImportError:
    pytest.importorskip(
        "pytorch_lightning", reason="lightning is not installed (extra 'integrations')"
    )

from adamhd import AdamHD  # noqa: E402
from tests.integrations.conftest import load_example  # noqa: E402

STEPS, BATCH = 10, 8  # 10 steps over 8 batches: crosses an epoch boundary


def test_lightning_matches_hand_written_loop():
    example = load_example("lightning_train")
    module = example.train(STEPS, BATCH)
    opt = module.trainer.optimizers[0]
    assert isinstance(opt, AdamHD)

    net = example.make_net()
    ref_opt = example.make_optimizer(net)
    sched = example.make_schedule(ref_opt)
    loader = torch.utils.data.DataLoader(example.regression_data(), batch_size=BATCH)
    batches = [b for _ in range(2) for b in loader][:STEPS]
    for x, y in batches:
        nn.functional.mse_loss(net(x), y).backward()
        ref_opt.step()
        sched.step()
        ref_opt.zero_grad()

    for (name, got), want in zip(module.net.named_parameters(), net.parameters()):
        torch.testing.assert_close(got.detach(), want.detach(), atol=1e-6, rtol=1e-5, msg=name)
    p = next(module.net.parameters())
    assert opt.state[p]["step"].item() == STEPS
    ref_p = next(net.parameters())
    torch.testing.assert_close(opt.state[p]["delta_mu"], ref_opt.state[ref_p]["delta_mu"])
    assert float(opt.param_groups[0]["lr"]) == float(ref_opt.param_groups[0]["lr"])
