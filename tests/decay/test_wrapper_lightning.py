"""Lightning trains with a wrapped optimizer (it calls ``step(closure)``) exactly as a loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

L = pytest.importorskip("lightning")

from adamhd import NAdamHD  # noqa: E402

STEPS = 6
pytestmark = pytest.mark.slow  # importing lightning takes most of its ~15 s


def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(STEPS * 4, 5, generator=g), torch.randn(STEPS * 4, 2, generator=g)


def make(net):
    opt = NAdamHD(net.parameters(), lr=5e-2, weight_decay=0.5, cautious_decay=True)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + t))


class Module(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(5, 2)

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        opt, sched = make(self.net)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def test_lightning_matches_a_hand_written_loop(tmp_path):
    x, y = data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    module = Module()
    trainer = L.Trainer(
        max_steps=STEPS, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )
    trainer.fit(module, loader)
    assert isinstance(trainer.optimizers[0], NAdamHD)

    torch.manual_seed(0)
    net = nn.Linear(5, 2)
    opt, sched = make(net)
    for xb, yb in loader:
        nn.functional.mse_loss(net(xb), yb).backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    for got, want in zip(module.net.parameters(), net.parameters()):
        torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-6, atol=1e-7)
    p = next(module.net.parameters())
    assert trainer.optimizers[0].state[p]["delta_mu"].dtype == torch.float32
