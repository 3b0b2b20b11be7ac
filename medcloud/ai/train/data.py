"""Training data for the image recipes: tensors made by ``ai/preprocess.py``, a fingerprint, splits.

No torch here: arrays are numpy, so the same loaders serve ``medcloud ai evaluate``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medcloud.ai.package import ImageInput
from medcloud.ai.preprocess import load_frames, to_model_input
from medcloud.errors import Invalid

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm"}


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # float32 (N, C, H, W), model inputs
    y: np.ndarray  # int64 (N,)
    groups: np.ndarray  # int64 (N,): near-duplicates share a group
    fingerprint: str  # SHA-256 over the sorted per-file SHA-256s (with their class) of the source data
    sources: list[str]


def fingerprint(entries: list[tuple[str, bytes]]) -> str:
    """SHA-256 of the sorted ``"<sha256 of content>  <name>"`` lines (like ``sha256sum | sort``)."""
    lines = sorted(f"{hashlib.sha256(data).hexdigest()}  {name}" for name, data in entries)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def image_folder(root: Path, labels: list[str], spec: ImageInput, *, limit: int | None = None) -> Dataset:
    """``root/<label>/*.png|jpg|dcm`` -> model inputs; every label must have a folder. ``limit`` keeps
    the first N files of each class (sorted by name: deterministic), for smoke tests."""
    missing = [lab for lab in labels if not (root / lab).is_dir()]
    if missing:
        raise Invalid(f"{root}: no class folder for {', '.join(missing)} (expected {root}/<label>/*.png|jpg)")
    xs, ys, hashes, entries, sources = [], [], [], [], []
    for c, label in enumerate(labels):
        files = sorted(p for p in (root / label).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for path in files[:limit]:
            data = path.read_bytes()
            entries.append((f"{label}/{path.name}", data))
            frame = load_frames(data)[0]
            xs.append(to_model_input(frame, spec))
            hashes.append(dhash(frame))
            ys.append(c)
            sources.append(f"{label}/{path.name}")
    if not xs:
        raise Invalid(f"{root}: no images found under the class folders")
    return Dataset(np.stack(xs), np.array(ys, dtype=np.int64), near_duplicate_groups(np.array(hashes)),
                   fingerprint(entries), sources)


def npz_split(path: Path, split: str, spec: ImageInput) -> Dataset:
    """One split (``train``/``val``/``test``) of a MedMNIST ``.npz`` (uint8 images, labels (N, 1))."""
    with np.load(path) as npz:
        if f"{split}_images" not in npz:
            raise Invalid(f"{path}: no {split}_images array (has {', '.join(npz.files)})")
        images, labels = npz[f"{split}_images"], npz[f"{split}_labels"].reshape(-1)
        raw = path.read_bytes()
    # the same two steps as serving a 8-bit PNG of the image: uint8 / 255, then to_model_input
    x = np.stack([to_model_input(im.astype(np.float32) / 255.0, spec) for im in images])
    return Dataset(x, labels.astype(np.int64), np.arange(len(labels)),
                   hashlib.sha256(raw).hexdigest(), [f"{split}[{i}]" for i in range(len(labels))])


def dhash(frame: np.ndarray) -> int:
    """64-bit difference hash (as the data set's cleaning used): row gradients of a 9x8 thumbnail."""
    from PIL import Image

    grey = frame if frame.ndim == 2 else frame @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    small = np.asarray(Image.fromarray(grey.astype(np.float32), mode="F").resize((9, 8), Image.Resampling.BILINEAR))
    bits = (small[:, 1:] > small[:, :-1]).ravel()
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def near_duplicate_groups(hashes: np.ndarray, max_distance: int = 4) -> np.ndarray:
    """Group ids: each image joins the first earlier group leader whose dhash differs in at most
    ``max_distance`` bits, else leads a new group. Leaders rather than union-find, because chains of
    similar slices would otherwise merge most of a data set into one group (measured on brain-mri:
    union-find at 6 bits put 1,439 of 2,239 images in one group)."""
    leaders: list[int] = []
    ids = np.empty(len(hashes), dtype=np.int64)
    for i, h in enumerate(int(v) for v in hashes):
        for k, lead in enumerate(leaders):
            if (h ^ lead).bit_count() <= max_distance:
                ids[i] = k
                break
        else:
            ids[i] = len(leaders)
            leaders.append(h)
    return ids


def grouped_split(y: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices: whole groups go to one side, about ``fraction`` of each class
    (by a group's first label) to validation."""
    rng = np.random.default_rng(seed)
    val: list[int] = []
    unique = np.unique(groups)
    first_label = {g: y[groups == g][0] for g in unique}
    for c in np.unique(y):
        gs = np.array([g for g in unique if first_label[g] == c])
        rng.shuffle(gs)
        want, taken = fraction * (y == c).sum(), 0
        for g in gs:
            if taken >= want:
                break
            members = np.flatnonzero(groups == g)
            val.extend(members.tolist())
            taken += len(members)
    mask = np.zeros(len(y), dtype=bool)
    mask[val] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def stratified_holdout(y: np.ndarray, indices: np.ndarray, fraction: float,
                       seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out): a seeded ``fraction`` of each class of ``y[indices]`` held out (at least one
    image of a class with two or more), e.g. to stop training and fit the temperature on a slice of
    the training split and leave the validation split to measure only. Both sorted."""
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for c in np.unique(y[indices]):
        members = indices[y[indices] == c]
        take = min(len(members) - 1, max(1, round(fraction * len(members))))
        held.append(rng.permutation(members)[:take])
    out = np.sort(np.concatenate(held)) if held else np.array([], dtype=np.int64)
    return np.setdiff1d(indices, out), out
