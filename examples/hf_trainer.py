"""Hugging Face ``transformers.Trainer`` with AdamHD: a tiny, randomly initialised GPT-2.

Offline (no download): the model is built from a ``GPT2Config`` and trained on random tokens.

    python examples/hf_trainer.py --steps 20

AdamHD goes in through ``optimizer_cls_and_kwargs``; the Trainer builds its usual decayed /
exempt parameter groups (``weight_decay`` from ``TrainingArguments``) and its lr schedule.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from adamhd import AdamHD


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, n: int, seq_len: int, vocab: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, vocab, (n, seq_len), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    config = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config)


def train(
    output_dir: str,
    steps: int = 20,
    optimizer: str = "adamhd",
    adamhd_kwargs: dict | None = None,
    seed: int = 0,
) -> Trainer:
    """Train ``steps`` steps; ``optimizer`` is ``"adamhd"`` or ``"adamw"`` (torch AdamW)."""
    args = TrainingArguments(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        weight_decay=0.1,
        warmup_steps=2,
        lr_scheduler_type="cosine",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        optim="adamw_torch",
    )
    extra = {}
    if optimizer == "adamhd":
        kwargs = dict(
            lr=args.learning_rate,
            betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon,
            **(adamhd_kwargs or {}),
        )
        extra["optimizer_cls_and_kwargs"] = (AdamHD, kwargs)
    trainer = Trainer(
        model=tiny_gpt2(seed),
        args=args,
        train_dataset=RandomTokens(64, 16, 64, seed),
        **extra,
    )
    trainer.train()
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--output-dir", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = train(args.output_dir or tmp, steps=args.steps)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    print(f"optimizer: {type(trainer.optimizer.optimizer).__name__}")
    print(f"loss: first {losses[0]:.4f} last {losses[-1]:.4f}")


if __name__ == "__main__":
    main()
