"""medcloud/ai/preprocess.py: DICOM pixel pipeline, Pillow images, bad input, model inputs."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, SecondaryCaptureImageStorage, generate_uid

from medcloud.ai.package import ImageInput, Normalisation, Windowing
from medcloud.ai.preprocess import load_frames, prepare, to_model_input
from medcloud.errors import Invalid, Unprocessable

# ../shared next to the project root; a clone elsewhere on this machine (e.g. /tmp/x) uses /work/shared
SHARED = next((p for p in (Path(__file__).resolve().parents[2].parent / "shared", Path("/work/shared")) if p.is_dir()),
              Path(__file__).resolve().parents[2].parent / "shared")
BRAIN = SHARED / "data/brain-mri"


def dicom(pixels: np.ndarray, photometric: str = "MONOCHROME2", **attrs: object) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    colour = photometric.startswith(("RGB", "YBR"))
    frames = pixels.shape[0] if pixels.ndim == (4 if colour else 3) else 1
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.tobytes()
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


CT = np.array([[-1000, -160], [40, 240]], dtype=np.int16)  # stored values; HU = 1 * stored + 0


def test_dicom_rescale_and_window_map_modality_values_to_unit_range() -> None:
    stored = ((CT + 1024) // 2).astype(np.uint16)  # HU = 2 * stored - 1024
    ds = dicom(stored, RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400)
    [frame] = load_frames(to_bytes(ds))
    assert frame.dtype == np.float32 and frame.shape == (2, 2)
    # the window [-160, 240] HU: air is below it (0), the centre is ~0.5, 240 HU at its top (1)
    assert frame[0, 0] == 0.0 and frame[0, 1] == pytest.approx(0.0, abs=0.01)
    assert frame[1, 0] == pytest.approx(0.5, abs=0.01) and frame[1, 1] == pytest.approx(1.0, abs=0.01)


def test_a_manifest_window_replaces_the_files_own() -> None:
    ds = dicom(CT, WindowCenter=40, WindowWidth=400)
    [frame] = load_frames(ds, window=Windowing(center=-600, width=1600))  # a lung window, in HU
    assert frame[0, 0] == pytest.approx((-1000 + 1400 - 0.5) / 1599, abs=1e-3)
    assert frame[1, 1] == 1.0


def test_dicom_without_a_window_is_scaled_by_its_own_range() -> None:
    [frame] = load_frames(dicom(CT))
    assert frame.min() == 0.0 and frame.max() == 1.0
    assert frame[1, 0] == pytest.approx(1040 / 1240, abs=1e-6)


def test_monochrome1_is_inverted_to_monochrome2() -> None:
    [m2] = load_frames(dicom(CT))
    [m1] = load_frames(dicom(CT, "MONOCHROME1"))
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)


def test_rgb_and_ybr_dicom_give_rgb_frames() -> None:
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[1, 1] = (0, 0, 255)
    [frame] = load_frames(dicom(rgb, "RGB"))
    assert frame.shape == (2, 2, 3)
    np.testing.assert_allclose(frame[0, 0], (1, 0, 0))
    np.testing.assert_allclose(frame[1, 1], (0, 0, 1))
    ybr = np.zeros((2, 2, 3), dtype=np.uint8)
    ybr[...] = (76, 85, 255)  # pure red in YBR_FULL (PS3.3 C.7.6.3.1.2)
    [frame] = load_frames(dicom(ybr, "YBR_FULL"))
    np.testing.assert_allclose(frame[0, 0], (1, 0, 0), atol=0.01)


def test_multiframe_gives_one_array_per_frame() -> None:
    frames = np.stack([np.full((3, 4), v, dtype=np.uint16) for v in (0, 100, 200)])
    frames[:, 0, 0] = 300  # each frame has a range
    out = load_frames(dicom(frames, WindowCenter=150, WindowWidth=300))
    assert len(out) == 3 and all(f.shape == (3, 4) for f in out)
    assert [round(float(f[1, 1]), 2) for f in out] == [0.0, 0.33, 0.67]


def test_compressed_transfer_syntax_decodes_like_the_uncompressed_original() -> None:
    pixels = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 4096)
    plain = dicom(pixels)
    packed = dicom(pixels)
    packed.compress(RLELossless)
    assert packed.file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(load_frames(to_bytes(packed))[0], load_frames(plain)[0])


def test_png_8_and_16_bit_and_jpeg_are_read_by_pillow(tmp_path: Path) -> None:
    grey = np.array([[0, 128], [255, 64]], dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    [frame] = load_frames(tmp_path / "g.png")
    np.testing.assert_allclose(frame, grey / 255.0, atol=1e-6)
    deep = np.array([[0, 65535], [32768, 1]], dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")
    [frame] = load_frames((tmp_path / "d.png").read_bytes())
    assert frame.max() == 1.0 and frame[1, 0] == pytest.approx(0.5, abs=1e-4)
    colour = np.zeros((16, 16, 3), dtype=np.uint8)
    colour[..., 0] = 200
    Image.fromarray(colour).save(tmp_path / "c.jpg", quality=95)
    [frame] = load_frames(tmp_path / "c.jpg")
    assert frame.shape == (16, 16, 3) and abs(frame[..., 0].mean() - 200 / 255) < 0.02


@pytest.mark.parametrize(("data", "error", "message"), [
    (b"", Invalid, "empty"),
    (b"hello, this is not an image" * 10, Invalid, "not an image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, Invalid, "image"),
])
def test_non_images_and_corrupt_files_are_refused(data: bytes, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        load_frames(data)


def test_truncated_png_and_dicom_without_pixels_are_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(buf, "PNG")
    with pytest.raises(Invalid, match="corrupt image"):
        load_frames(buf.getvalue()[:200])
    ds = dicom(CT)
    del ds.PixelData
    with pytest.raises(Invalid, match="no pixel data"):
        load_frames(to_bytes(ds))
    with pytest.raises(Invalid, match="cannot read image"):
        load_frames(tmp_path / "missing.png")


def test_unsupported_photometric_interpretation_and_window_on_png_are_unprocessable(tmp_path: Path) -> None:
    with pytest.raises(Unprocessable, match="PALETTE COLOR"):
        load_frames(dicom(CT.astype(np.uint16), "PALETTE COLOR"))
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / "z.png")
    with pytest.raises(Unprocessable, match="modality units"):
        load_frames(tmp_path / "z.png", window=Windowing(center=40, width=400))


def test_to_model_input_converts_channels_resizes_and_normalises() -> None:
    rgb = np.zeros((8, 8, 3), dtype=np.float32)
    rgb[..., 1] = 1.0  # pure green: BT.601 luma 0.587
    grey_spec = ImageInput(name="x", size=(4, 4), channels=1)
    x = to_model_input(rgb, grey_spec)
    assert x.shape == (1, 4, 4) and x.dtype == np.float32
    np.testing.assert_allclose(x, 0.587, atol=1e-6)
    spec = ImageInput(name="x", size=(6, 5), channels=3,
                      normalisation=Normalisation(mean=[0.5, 0.5, 0.5], std=[0.25, 0.5, 1.0]))
    x = to_model_input(np.full((10, 10), 0.75, dtype=np.float32), spec)
    assert x.shape == (3, 6, 5)
    np.testing.assert_allclose(x[:, 0, 0], [1.0, 0.5, 0.25], atol=1e-6)


def test_letterbox_keeps_the_aspect_ratio_and_stretch_does_not() -> None:
    wide = np.ones((10, 20), dtype=np.float32)
    boxed = to_model_input(wide, ImageInput(name="x", size=(20, 20), channels=1, resize="letterbox"))
    assert boxed[0, 0, 10] == 0.0 and boxed[0, 10, 10] == pytest.approx(1.0)  # padded above, image in the middle
    assert int((boxed[0, :, 10] > 0.5).sum()) == 10
    stretched = to_model_input(wide, ImageInput(name="x", size=(20, 20), channels=1))
    np.testing.assert_allclose(stretched, 1.0, atol=1e-6)


@pytest.mark.skipif(not BRAIN.is_dir(), reason="shared brain-mri data not present")
def test_training_tensors_are_what_serving_computes() -> None:
    from medcloud.ai.train.data import image_folder
    from medcloud.ai.train.recipes import RECIPES

    recipe = RECIPES["brain-mri"]
    ds = image_folder(BRAIN, recipe.labels, recipe.spec, limit=2)
    first = BRAIN / ds.sources[0]
    np.testing.assert_array_equal(ds.x[0], prepare(first, recipe.spec)[0])
    assert ds.x.shape == (8, 1, *recipe.spec.size)
