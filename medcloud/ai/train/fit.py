"""The PyTorch part of training: networks, the seeded training loop, temperature scaling, ONNX export.

Only ``medcloud ai train`` imports this module (torch is the optional ``[train]`` extra); serving
runs the exported ONNX graph. What the graph holds, so serving needs nothing else: every ensemble
member, the test-time flip (when the recipe asks for it), the mean of the logits, the division by
the fitted temperature and the softmax. Its single output is ``probabilities`` [N, classes].
"""

from __future__ import annotations

import io
import math
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812


@dataclass(frozen=True)
class FitConfig:
    widths: tuple[int, ...]  # channels per block (each block halves the resolution)
    convs_per_block: int
    epochs: int
    patience: int
    batch_size: int
    lr: float
    weight_decay: float
    dropout: float
    rotate: float  # degrees, +-
    scale: float  # +- fraction
    shift: float  # +- fraction of the size
    hflip: bool  # random horizontal flips in training, and the flip as test-time augmentation
    intensity: float  # +- contrast/brightness jitter
    ensemble: int  # members trained with seeds seed, seed+1, ...
    stop_after: int | None = None  # end after this epoch (the schedule still spans ``epochs``)
    max_minutes: float | None = None  # per member: end after the epoch that passes this wall time
    # Photometric augmentation on the [0, 1] image (off when None; see ``_photometric``): keys ``p``
    # (chance of each of gamma/contrast/brightness), ``gamma`` (max |ln gamma|), ``contrast`` (+- fraction,
    # about each image's mean), ``brightness`` (+- additive), ``blur`` ((min, max) Gaussian sigma in
    # pixels), ``blur_p``, ``noise`` (max Gaussian sigma), ``noise_p``.
    photometric: dict[str, Any] | None = None
    pixel: tuple[float, float] = (0.0, 1.0)  # (mean, std) of the input normalisation: image = x * std + mean
    standardise: bool = False  # per-image standardisation as the network's first layer (inside the graph)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


class ConvNet(nn.Module):
    def __init__(self, channels: int, classes: int, widths: tuple[int, ...], convs: int, dropout: float,
                 standardise: bool = False):
        super().__init__()
        self.standardise = standardise
        layers: list[nn.Module] = []
        c_in = channels
        for w in widths:
            for _ in range(convs):
                layers += [nn.Conv2d(c_in, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                c_in = w
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(c_in, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.standardise:  # each image to mean 0, std 1: invariant to global contrast/brightness
            x = x - x.mean(dim=(1, 2, 3), keepdim=True)
            x = x / torch.sqrt((x * x).mean(dim=(1, 2, 3), keepdim=True) + 1e-4)
        return self.head(self.features(x).mean(dim=(2, 3)))


class Served(nn.Module):
    """What is exported: members (+ flip) -> mean logits -> / temperature -> softmax.

    Members of different kinds (a HOG + MLP and a CNN) put their logits on different scales, so each
    can get its own temperature (``member_temperatures``, fitted on validation NLL): the graph then
    averages the members' calibrated logits, and the ensemble's own temperature comes after."""

    def __init__(self, members: list[nn.Module], temperature: float, hflip: bool,
                 member_temperatures: list[float] | None = None):
        super().__init__()
        if member_temperatures is not None and len(member_temperatures) != len(members):
            raise ValueError(f"{len(member_temperatures)} member temperatures for {len(members)} members")
        self.members = nn.ModuleList(members)
        self.temperature: torch.Tensor
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.member_temperatures: torch.Tensor | None
        self.register_buffer("member_temperatures", None if member_temperatures is None else
                             torch.tensor([float(t) for t in member_temperatures]).view(-1, 1, 1))
        self.hflip = hflip

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(members, N, classes): each member's logits, averaged over the views (image, mirror image)."""
        views = [x, torch.flip(x, dims=[3])] if self.hflip else [x]
        return torch.stack([torch.stack([m(v) for v in views]).mean(dim=0) for m in self.members])

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.member_temperatures is not None:
            return (self.member_logits(x) / self.member_temperatures).mean(dim=0)
        views = [x, torch.flip(x, dims=[3])] if self.hflip else [x]
        outs = [m(v) for m in self.members for v in views]
        return torch.stack(outs).mean(dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x) / self.temperature, dim=1)


def _augment(x: torch.Tensor, cfg: FitConfig, gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]

    def uniform(r: float) -> torch.Tensor:
        return (torch.rand(n, generator=gen) * 2 - 1) * r

    angle = uniform(cfg.rotate) * math.pi / 180
    s = 1 + uniform(cfg.scale)
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if cfg.hflip else torch.ones(n)
    theta = torch.stack([torch.stack([cos * flip, -sin, uniform(cfg.shift) * 2], 1),
                         torch.stack([sin * flip, cos, uniform(cfg.shift) * 2], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if cfg.photometric:
        out = _photometric(out, cfg, gen)
    contrast = (1 + uniform(cfg.intensity)).view(n, 1, 1, 1)
    bright = uniform(cfg.intensity).view(n, 1, 1, 1)
    return out * contrast + bright


def _photometric(x: torch.Tensor, cfg: FitConfig, gen: torch.Generator) -> torch.Tensor:
    """Random gamma, contrast (about each image's mean), brightness, Gaussian blur and Gaussian noise on
    the [0, 1] image (clipped after each step that can leave it), each per image with its own chance.
    Every random number is drawn whether or not its step applies, so the stream never depends on the
    draws: same seed -> same batches."""
    ph = cfg.photometric or {}
    mean, std = cfg.pixel
    n = x.shape[0]
    img = (x * std + mean).clamp(0.0, 1.0)

    def chance(p: float) -> torch.Tensor:
        return (torch.rand(n, generator=gen) < p).view(n, 1, 1, 1)

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return (lo + torch.rand(n, generator=gen) * (hi - lo)).view(n, 1, 1, 1)

    p = float(ph.get("p", 0.5))
    g = float(ph.get("gamma", 0.0))
    gamma, on = torch.exp(uniform(-g, g)), chance(p)
    img = torch.where(on, img.clamp_min(1e-6) ** gamma, img)
    c = float(ph.get("contrast", 0.0))
    factor, on = uniform(1 - c, 1 + c), chance(p)
    centre = img.mean(dim=(1, 2, 3), keepdim=True)
    img = torch.where(on, (img - centre) * factor + centre, img)
    b = float(ph.get("brightness", 0.0))
    shift, on = uniform(-b, b), chance(p)
    img = torch.where(on, img + shift, img).clamp(0.0, 1.0)
    lo, hi = ph.get("blur", (0.0, 0.0))
    sigma, on = uniform(float(lo), float(hi)), chance(float(ph.get("blur_p", 0.0)))
    if hi > 0:
        img = torch.where(on, _gaussian_blur(img, sigma.view(n)), img)
    s = float(ph.get("noise", 0.0))
    level, on = uniform(0.0, s), chance(float(ph.get("noise_p", 0.0)))
    noise = torch.randn(img.shape, generator=gen) * level
    img = torch.where(on, img + noise, img).clamp(0.0, 1.0)
    return (img - mean) / std


def _gaussian_blur(img: torch.Tensor, sigma: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """Each image (N, C, H, W) blurred with its own sigma (separable, edges replicated)."""
    n, c, h, w = img.shape
    t = torch.arange(-radius, radius + 1, dtype=img.dtype)
    k = torch.exp(-0.5 * (t.view(1, -1) / sigma.clamp_min(1e-3).view(-1, 1)) ** 2)
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (N*C, 2r+1)
    z = F.pad(img.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="replicate")
    z = F.conv2d(z, k.view(n * c, 1, 1, -1), groups=n * c)
    z = F.conv2d(z, k.view(n * c, 1, -1, 1), groups=n * c)
    return z.view(n, c, h, w)


def predict_logits(model: Any, x: np.ndarray, batch: int = 256) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(torch.from_numpy(x[i:i + batch])) for i in range(0, len(x), batch)]).numpy()


def train_member(x: np.ndarray, y: np.ndarray, xv: np.ndarray, yv: np.ndarray, classes: int, cfg: FitConfig,
                 seed: int, score: Callable[[np.ndarray, np.ndarray], float],
                 log: Callable[[str], None]) -> tuple[nn.Module, list[dict[str, float]]]:
    """One network; early stopping keeps the epoch with the best validation ``score`` (higher is better)."""
    seed_everything(seed)
    gen = torch.Generator().manual_seed(seed)
    model = ConvNet(x.shape[1], classes, cfg.widths, cfg.convs_per_block, cfg.dropout, cfg.standardise)
    counts = np.bincount(y, minlength=classes).astype(np.float64)
    weights = torch.tensor(len(y) / (classes * np.maximum(counts, 1)), dtype=torch.float32)  # balanced
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(len(y) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    best, best_state, waited, history = -math.inf, None, 0, []
    member_started = time.monotonic()
    for epoch in range(cfg.stop_after or cfg.epochs):
        started = time.monotonic()
        model.train()
        order = torch.randperm(len(y), generator=gen)
        total = 0.0
        for i in range(0, len(y), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            if len(idx) < 2:
                continue  # BatchNorm needs two samples
            loss = F.cross_entropy(model(_augment(xt[idx], cfg, gen)), yt[idx], weight=weights)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        val = score(yv, predict_logits(model, xv))
        history.append({"epoch": epoch + 1, "loss": total / len(y), "val_score": val,
                        "seconds": time.monotonic() - started})
        log(f"  seed {seed} epoch {epoch + 1}/{cfg.epochs}: loss {total / len(y):.4f} val {val:.4f} "
            f"({history[-1]['seconds']:.0f} s)")
        if val > best:
            best, waited = val, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            waited += 1
            if waited >= cfg.patience:
                break
        if cfg.max_minutes is not None and time.monotonic() - member_started > 60 * cfg.max_minutes:
            log(f"  seed {seed}: time budget of {cfg.max_minutes:g} min used after epoch {epoch + 1}; "
                f"reproduce with --stop-after {epoch + 1}")
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, history


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising validation NLL (Guo et al. 2017), searched on log T."""
    from scipy.optimize import minimize_scalar

    lt, yt = torch.from_numpy(logits.astype(np.float64)), torch.from_numpy(y)

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(lt / math.exp(log_t), yt))

    res = minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded")
    return float(math.exp(res.x))


def export_onnx(served: Served, sample: np.ndarray, input_name: str) -> bytes:
    """ONNX (opset 17, batch axis free); checked against torch on ``sample`` to 1e-4 with ONNX Runtime."""
    import onnxruntime

    served.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(served, (torch.from_numpy(sample[:2]),), buf,  # type: ignore[arg-type]
                          input_names=[input_name],
                          output_names=["probabilities"], dynamic_axes={input_name: {0: "N"}, "probabilities": {0: "N"}},
                          opset_version=17, dynamo=False, do_constant_folding=True)
    model = buf.getvalue()
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    got = session.run(["probabilities"], {input_name: sample})[0]
    with torch.no_grad():
        want = served(torch.from_numpy(sample)).numpy()
    diff = float(np.abs(got - want).max())
    if diff > 1e-4:
        raise RuntimeError(f"ONNX Runtime and torch disagree by {diff:.2e} (> 1e-4)")
    return model
