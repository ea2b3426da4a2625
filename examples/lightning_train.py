"""PyTorch Lightning with AdamHD: ``configure_optimizers`` returns AdamHD and a per-step schedule.

    python examples/lightning_train.py --steps 50
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

try:
    import lightning as L
except ImportError:  # the standalone package
    import pytorch_lightning as L

from adamhd import AdamHD

WARMUP = 3


def regression_data(n: int = 64, seed: int = 0) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = torch.sin(x @ torch.randn(8, 2, generator=g))
    return torch.utils.data.TensorDataset(x, y)


def make_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 2))


def make_optimizer(net: nn.Module, lr: float = 1e-2) -> AdamHD:
    decayed = [p for n, p in net.named_parameters() if n.endswith("weight")]
    exempt = [p for n, p in net.named_parameters() if not n.endswith("weight")]
    return AdamHD(
        [{"params": decayed}, {"params": exempt, "weight_decay": 0.0}],
        lr=torch.tensor(lr),  # a Tensor lr: no recompilation if the model is torch.compile'd
        weight_decay=0.1,
    )


def make_schedule(opt: AdamHD) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / WARMUP))


class Regressor(L.LightningModule):
    def __init__(self, lr: float = 1e-2, seed: int = 0) -> None:
        super().__init__()
        self.net = make_net(seed)
        self.lr = lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        opt = make_optimizer(self.net, self.lr)
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": make_schedule(opt), "interval": "step"},
        }


def train(steps: int = 50, batch_size: int = 8, seed: int = 0) -> Regressor:
    module = Regressor(seed=seed)
    loader = torch.utils.data.DataLoader(regression_data(seed=seed), batch_size=batch_size)
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    module = train(args.steps)
    x, y = regression_data().tensors
    with torch.no_grad():
        print(f"final training mse: {nn.functional.mse_loss(module.net(x), y).item():.4f}")


if __name__ == "__main__":
    main()
