"""A histogram-of-oriented-gradients classifier as a PyTorch graph, so it exports to ONNX like the CNNs.

HOG (Dalal & Triggs, CVPR 2005): image gradients binned by unsigned orientation into cells, cells
normalised in overlapping 2x2 blocks (L2-Hys: L2, clip at 0.2, L2 again). Every step is a fixed
convolution, pooling or elementwise operation, so the feature extractor has no trainable weights and
the only learned part is a linear (multinomial logistic) head on standardised features. On the
brain-mri data a CNN trained from scratch on this 2-core machine stayed below it (docs/ai.md).

Orientation binning is soft: a pixel's magnitude goes to bin k with weight max(0, cos 2(θ - θk))^p,
computed from ``cos 2θ = (gx² - gy²) / |g|²`` and ``sin 2θ = 2 gx gy / |g|²`` (no atan2 in the graph).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812


class HogFeatures(nn.Module):
    def __init__(self, cell: int = 8, bins: int = 9, sharpness: int = 8):
        super().__init__()
        self.cell = cell
        self.sharpness = sharpness
        angles = torch.arange(bins, dtype=torch.float32) * math.pi / bins
        self.cos2: torch.Tensor
        self.sin2: torch.Tensor
        self.kx: torch.Tensor
        self.ky: torch.Tensor
        self.register_buffer("cos2", torch.cos(2 * angles).view(1, bins, 1, 1))
        self.register_buffer("sin2", torch.sin(2 * angles).view(1, bins, 1, 1))
        self.register_buffer("kx", torch.tensor([[[[-1.0, 0.0, 1.0]]]]))
        self.register_buffer("ky", torch.tensor([[[[-1.0], [0.0], [1.0]]]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = F.conv2d(F.pad(x, (1, 1, 0, 0), mode="replicate"), self.kx)
        gy = F.conv2d(F.pad(x, (0, 0, 1, 1), mode="replicate"), self.ky)
        sq = gx * gx + gy * gy + 1e-12
        c2, s2 = (gx * gx - gy * gy) / sq, 2 * gx * gy / sq
        weight = torch.relu(c2 * self.cos2 + s2 * self.sin2) ** self.sharpness
        hist = F.avg_pool2d(torch.sqrt(sq) * weight, self.cell)  # (N, bins, cells_y, cells_x)
        blocks = torch.cat([hist[:, :, dy:hist.shape[2] - 1 + dy, dx:hist.shape[3] - 1 + dx]
                            for dy in (0, 1) for dx in (0, 1)], dim=1)  # (N, 4 * bins, by, bx)
        blocks = blocks / torch.sqrt((blocks * blocks).sum(dim=1, keepdim=True) + 1e-6)
        blocks = torch.clamp(blocks, max=0.2)
        blocks = blocks / torch.sqrt((blocks * blocks).sum(dim=1, keepdim=True) + 1e-6)
        return blocks.flatten(1)


class HogClassifier(nn.Module):
    """HOG -> standardise (train mean/std, fixed) -> linear logits, or a one-hidden-layer MLP."""

    def __init__(self, features: HogFeatures, mean: torch.Tensor, std: torch.Tensor, classes: int,
                 hidden: int = 0, dropout: float = 0.5):
        super().__init__()
        self.features = features
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        d = mean.numel()
        self.head: nn.Module = (nn.Linear(d, classes) if hidden <= 0 else
                                nn.Sequential(nn.Dropout(dropout), nn.Linear(d, hidden), nn.ReLU(),
                                              nn.Dropout(dropout), nn.Linear(hidden, classes)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((self.features(x) - self.mean) / self.std)


def hog_features(model: HogFeatures, x: np.ndarray, batch: int = 256) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(torch.from_numpy(x[i:i + batch])) for i in range(0, len(x), batch)])


def train_hog_mlp(x: np.ndarray, y: np.ndarray, xv: np.ndarray, yv: np.ndarray, classes: int, *, cell: int,
                  hflip: bool, seed: int, hidden: int, epochs: int, weight_decay: float,
                  score: Callable[[np.ndarray, np.ndarray], float], log: Callable[[str], None]) -> HogClassifier:
    """The MLP head on fixed HOG features: AdamW, minibatches, balanced class weights, the epoch with
    the best validation ``score`` kept."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    extractor = HogFeatures(cell=cell)
    xs = np.concatenate([x, x[..., ::-1]]) if hflip else x
    ys = np.concatenate([y, y]) if hflip else y
    feats = hog_features(extractor, np.ascontiguousarray(xs))
    mean, std = feats.mean(dim=0), feats.std(dim=0) + 1e-3
    z = (feats - mean) / std
    zv = (hog_features(extractor, xv) - mean) / std
    zv_flip = (hog_features(extractor, np.ascontiguousarray(xv[..., ::-1])) - mean) / std
    model = HogClassifier(extractor, mean, std, classes, hidden=hidden)
    target = torch.from_numpy(ys)
    counts = np.bincount(ys, minlength=classes).astype(np.float64)
    weights = torch.tensor(len(ys) / (classes * np.maximum(counts, 1)), dtype=torch.float32)
    opt = torch.optim.AdamW(model.head.parameters(), lr=1e-3, weight_decay=weight_decay)
    best, best_state = -math.inf, None
    for epoch in range(epochs):
        model.head.train()
        order = torch.randperm(len(ys), generator=gen)
        for i in range(0, len(ys), 64):
            idx = order[i:i + 64]
            loss = F.cross_entropy(model.head(z[idx]), target[idx], weight=weights)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.head.eval()
        with torch.no_grad():
            logits = ((model.head(zv) + model.head(zv_flip)) / 2 if hflip else model.head(zv)).numpy()
        val = score(yv, logits)
        log(f"  hog mlp epoch {epoch + 1}/{epochs}: val {val:.4f}")
        if val > best:
            best = val
            best_state = {k: v.detach().clone() for k, v in model.head.state_dict().items()}
    if best_state is not None:
        model.head.load_state_dict(best_state)
    model.eval()
    return model


def train_hog(x: np.ndarray, y: np.ndarray, classes: int, *, c: float, cell: int, hflip: bool,
              seed: int) -> HogClassifier:
    """Multinomial logistic regression with L2 penalty ``1 / (2 C n)`` (scikit-learn's ``C``) and
    balanced class weights, fitted full-batch with L-BFGS (deterministic); mirror images are added
    as training samples when ``hflip``."""
    torch.manual_seed(seed)
    extractor = HogFeatures(cell=cell)
    xs = np.concatenate([x, x[..., ::-1]]) if hflip else x
    ys = np.concatenate([y, y]) if hflip else y
    feats = hog_features(extractor, np.ascontiguousarray(xs))
    mean, std = feats.mean(dim=0), feats.std(dim=0) + 1e-3
    z = (feats - mean) / std
    model = HogClassifier(extractor, mean, std, classes)
    head = model.head
    assert isinstance(head, nn.Linear)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    target = torch.from_numpy(ys)
    counts = np.bincount(ys, minlength=classes).astype(np.float64)
    weights = torch.tensor(len(ys) / (classes * np.maximum(counts, 1)), dtype=torch.float32)
    penalty = 1.0 / (2 * c * len(ys))
    opt = torch.optim.LBFGS(model.head.parameters(), lr=1.0, max_iter=300, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model.head(z), target, weight=weights) + penalty * (head.weight ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    model.eval()
    return model
