"""A Lightning module that logs explanation quality every validation epoch.

The digits CNN is trained on the built-in spurious-digits set; each validation epoch logs the
deletion AUC (lower is better) and the pointing game on the digit mask (higher is better) of its
Grad-CAM maps, through `xaibench.streaming` metrics (torchmetrics, so several GPUs give the mean
over all validation images). Run it:  python examples/lightning_streaming.py
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from xaibench import streaming
from xaibench.data import Batch, collate, load_dataset
from xaibench.models import DigitsCNN


class DigitsWithExplanations(L.LightningModule):
    def __init__(self, method: str = "gradcam", steps: int = 16, lr: float = 1e-2) -> None:
        super().__init__()
        self.model = DigitsCNN()
        self.lr = lr
        self.deletion = streaming.Deletion(method=method, steps=steps)
        self.pointing = streaming.PointingGame(method=method)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = F.cross_entropy(self.model(batch.images), batch.labels)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        targets = self.model(batch.images).argmax(1)  # explain the predicted class
        self.deletion.update(model=self.model, inputs=batch.images, targets=targets)
        self.pointing.update(model=self.model, inputs=batch.images, targets=targets, masks=batch.masks["digit"])
        self.log("val/deletion_auc", self.deletion, on_epoch=True, batch_size=len(batch))
        self.log("val/pointing_game", self.pointing, on_epoch=True, batch_size=len(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def loaders(n_train: int | None = None, n_val: int | None = None, batch_size: int = 32) -> tuple[DataLoader, DataLoader]:
    train = load_dataset("builtin:digits-spurious", split="train")
    val = load_dataset("builtin:digits-spurious", split="test")
    if n_train is not None:
        train = Subset(train, range(n_train))
    if n_val is not None:
        val = Subset(val, range(n_val))
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True, collate_fn=collate),
        DataLoader(val, batch_size=batch_size, collate_fn=collate),
    )


if __name__ == "__main__":
    torch.manual_seed(0)
    train_loader, val_loader = loaders()
    trainer = L.Trainer(max_epochs=3, accelerator="auto", devices="auto", enable_checkpointing=False, logger=False)
    trainer.fit(DigitsWithExplanations(), train_loader, val_loader)
    print({k: round(float(v), 4) for k, v in trainer.callback_metrics.items()})
