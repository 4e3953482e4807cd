"""A small Fashion-MNIST-style classifier we train ourselves, for conditional accuracy.

`ldm eval train-classifier TRAIN_SHARDS --test-shards TEST --out DIR` trains it on labelled image
shards and writes `DIR/classifier.safetensors` + `DIR/classifier.json` (its test accuracy among
them). `ldm report --classifier DIR` then scores every class-conditional model by the fraction of
its samples that the classifier assigns to the class they were drawn for: a model can reach a low
FD while ignoring its labels, and this catches it. Its own test accuracy bounds what a perfect
model can reach.

Network: two conv blocks (3x3 conv, BatchNorm, ReLU, 2x2 max-pool; 32 and 64 channels), dropout,
one linear layer. Trained with AdamW and light augmentation (random horizontal flips).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ldm_system.data.stream import first_images

WEIGHTS, META = "classifier.safetensors", "classifier.json"


@dataclass(frozen=True)
class ClassifierConfig:
    channels: int = 1
    image_size: int = 32
    num_classes: int = 10
    width: int = 32


class SmallClassifier(nn.Module):
    def __init__(self, cfg: ClassifierConfig) -> None:
        super().__init__()
        w = cfg.width
        block = lambda cin, cout: nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout),  # noqa: E731
                                                nn.ReLU(), nn.MaxPool2d(2))
        self.cfg = cfg
        self.features = nn.Sequential(block(cfg.channels, w), block(w, 2 * w), nn.Flatten(), nn.Dropout(0.3))
        self.head = nn.Linear(2 * w * (cfg.image_size // 4) ** 2, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@torch.no_grad()
def predict(model: SmallClassifier, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    model.eval()
    return torch.cat([model(b).argmax(dim=1) for b in images.split(batch)])


def train_classifier(train_shards: str, test_shards: str, out: str | Path, epochs: int = 3, limit: int = 60000,
                     batch_size: int = 128, lr: float = 2e-3, seed: int = 0) -> dict:
    """Train, measure test accuracy, write the folder; returns the metadata written."""
    torch.manual_seed(seed)
    x, y = first_images(train_shards, limit, with_labels=True)
    x_test, y_test = first_images(test_shards, 10000, with_labels=True)
    if int(y.min()) < 0:
        raise ValueError(f"{train_shards}: the classifier needs labelled shards (some samples have no class)")
    cfg = ClassifierConfig(channels=x.shape[1], image_size=x.shape[-1], num_classes=int(y.max()) + 1)
    model = SmallClassifier(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(batch_size):
            xb = x[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    accuracy = float((predict(model, x_test) == y_test).float().mean())
    meta = {"config": asdict(cfg), "test_accuracy": accuracy, "test_images": len(x_test), "train_images": len(x),
            "epochs": epochs, "train_seconds": round(time.perf_counter() - t0, 1)}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / WEIGHTS))
    (out / META).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def load_classifier(path: str | Path) -> tuple[SmallClassifier, dict]:
    path = Path(path)
    if not (path / META).is_file() or not (path / WEIGHTS).is_file():
        raise FileNotFoundError(f"{path}: not a classifier folder (needs {META} and {WEIGHTS}; make one with "
                                "`ldm eval train-classifier`)")
    meta = json.loads((path / META).read_text())
    model = SmallClassifier(ClassifierConfig(**meta["config"]))
    model.load_state_dict(load_file(str(path / WEIGHTS)))
    return model.eval(), meta


def conditional_accuracy(model: SmallClassifier, samples: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of samples classified as the class they were drawn for."""
    if samples.shape[1:] != (model.cfg.channels, model.cfg.image_size, model.cfg.image_size):
        raise ValueError(f"classifier takes {(model.cfg.channels, model.cfg.image_size, model.cfg.image_size)} "
                         f"images, the samples are {tuple(samples.shape[1:])}")
    return float((predict(model, samples) == labels).float().mean())


__all__ = ["ClassifierConfig", "SmallClassifier", "conditional_accuracy", "load_classifier", "train_classifier"]
