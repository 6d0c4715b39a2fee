"""Images and masks in, the sizes a pipeline can run at: every conversion says what it did.

Images arrive in many forms (RGBA, grayscale, palette, 16-bit PNGs, float arrays); a U-Net needs an RGB image whose
sides are multiples of ``vae_scale_factor × 2^(down blocks − 1)`` (the VAE's downsampling times the U-Net's own,
so every stride-2 stage divides evenly). Conversions return *notes* (one line each) that results and the command line
show, so nothing is silently corrected; inputs that cannot mean anything raise ``ValueError`` with the reason.

Masks follow diffusers' convention: white (≥ 0.5) = fill in, black = keep. ``VaeImageProcessor`` binarises masks
at 0.5, so :func:`to_mask` does the same and the pasted-back pixels agree with what the pipeline kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from explain.diffusion.geometry import Geometry

__all__ = ["to_rgb", "to_mask", "union_mask", "size_multiple", "native_size", "working_size", "resize"]

ASPECT_TOLERANCE = 0.02  # relative aspect-ratio difference up to which a mask of another size is resized


def _open(image, name: str) -> Image.Image | np.ndarray:
    if isinstance(image, str | Path):
        path = Path(image)
        if not path.is_file():
            raise ValueError(f"{name} file not found: {path}")
        try:
            with Image.open(path) as im:
                im.load()
                return im.copy()
        except OSError as err:
            raise ValueError(f"{name} {path} is not a readable image ({err})") from err
    if isinstance(image, Image.Image | np.ndarray):
        return image
    if hasattr(image, "numpy"):  # a torch tensor: (H, W[, C]) only, like arrays
        return image.detach().cpu().numpy()
    raise ValueError(f"{name} must be a PIL image, a numpy array or a file path, not {type(image).__name__}")


def _array_to_uint8(arr: np.ndarray, name: str, notes: list[str]) -> np.ndarray:
    """Any numeric (H, W[, C]) array -> uint8 with the same layout."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if arr.dtype == np.uint16 or (np.issubdtype(arr.dtype, np.integer) and arr.size and arr.max() > 255):
        if arr.size and arr.min() < 0:
            raise ValueError(f"{name} has negative pixel values")
        notes.append(f"{name}: 16-bit values scaled to 8 bit (/257)")
        return np.clip(np.round(arr.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        if arr.size and arr.min() < 0:
            raise ValueError(f"{name} has negative pixel values")
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if lo < 0 or hi > 255:
            raise ValueError(f"{name}: float values must lie in [0, 1] (or [0, 255]), got [{lo:g}, {hi:g}]")
        scale = 255.0 if hi <= 1.0 else 1.0
        notes.append(f"{name}: float values read as {'[0, 1]' if scale == 255.0 else '[0, 255]'}")
        return np.clip(np.round(arr * scale), 0, 255).astype(np.uint8)
    raise ValueError(f"{name} has unsupported dtype {arr.dtype}")


def _to_pil(obj, name: str, notes: list[str]) -> Image.Image:
    """PIL or array -> a PIL image in mode L, LA, RGB or RGBA (8 bit)."""
    if isinstance(obj, np.ndarray):
        arr = obj
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
            raise ValueError(f"{name} array has shape {arr.shape}: expected channels last (H, W, C)")
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))):
            raise ValueError(f"{name} array must be (H, W), (H, W, 3) or (H, W, 4), got shape {arr.shape}")
        arr = _array_to_uint8(arr, name, notes)
        return Image.fromarray(arr, "L" if arr.ndim == 2 else {3: "RGB", 4: "RGBA"}[arr.shape[-1]])
    im = obj
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im)
        if im.mode == "F" or (im.mode == "I" and arr.size and arr.max() <= 255):
            arr = arr.astype(np.float32) if im.mode == "F" else arr.astype(np.uint8)
        elif im.mode == "I":
            arr = arr.astype(np.uint16) if arr.max() <= 65535 else arr
        return Image.fromarray(_array_to_uint8(arr, name, notes), "L")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode == "1":
        im = im.convert("L")
    elif im.mode == "PA":
        im = im.convert("RGBA")
    elif im.mode not in ("L", "LA", "RGB", "RGBA"):
        notes.append(f"{name}: mode {im.mode} converted to RGB")
        im = im.convert("RGB")
    return im


def to_rgb(image, name: str = "image") -> tuple[Image.Image, tuple[str, ...]]:
    """Any image -> 8-bit RGB PIL image, plus notes on what was converted.

    Transparent pixels (RGBA, LA, palette transparency) are composited over white; grayscale is repeated to three
    channels; 16-bit values are divided by 257.

    Args:
        image: PIL image, (H, W[, 1|3|4]) array (uint8, uint16, bool, or float in [0, 1]) or an image file path.
        name: How messages call it.

    Raises:
        ValueError: Unreadable file, unsupported layout or dtype, or an empty image.
    """
    notes: list[str] = []
    im = _to_pil(_open(image, name), name, notes)
    if im.width < 1 or im.height < 1:
        raise ValueError(f"{name} is empty ({im.width}x{im.height})")
    if im.mode in ("RGBA", "LA"):
        rgba = im.convert("RGBA")
        if np.asarray(rgba)[..., 3].min() < 255:
            notes.append(f"{name}: transparency composited over white")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba).convert("RGB")
    elif im.mode == "L":
        notes.append(f"{name}: grayscale converted to RGB")
        im = im.convert("RGB")
    return im, tuple(notes)


def _binary_mask(mask, size: tuple[int, int], name: str, notes: list[str]) -> np.ndarray:
    """A mask image -> (H, W) bool at ``size`` (white ≥ 0.5 = fill; transparent = keep); may be all False."""
    im = _to_pil(_open(mask, name), name, notes)
    if im.mode in ("RGBA", "LA"):
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        im = Image.alpha_composite(black, rgba)
    gray = im.convert("L")
    width, height = size
    if gray.width < 1 or gray.height < 1:
        raise ValueError(f"{name} is empty ({gray.width}x{gray.height} pixels)")
    if gray.size != (width, height):
        aspect_mask, aspect_image = gray.width / gray.height, width / height
        if abs(aspect_mask / aspect_image - 1) > ASPECT_TOLERANCE:
            raise ValueError(
                f"{name} is {gray.width}x{gray.height} but the image is {width}x{height}: different aspect ratios, "
                "so the mask cannot be meant for this image"
            )
        notes.append(f"{name}: resized {gray.width}x{gray.height} -> {width}x{height} (nearest)")
        gray = gray.resize((width, height), Image.Resampling.NEAREST)
    return np.asarray(gray) >= 128  # (H, W): 0.5 of the 8-bit range, as VaeImageProcessor.binarize


def _checked_fill(binary: np.ndarray, name: str, notes: list[str]) -> np.ndarray:
    """ValueError for a mask with nothing to fill; a note when it covers everything."""
    if not binary.any():
        raise ValueError(f"{name} is empty (all black): nothing to fill. White marks the region to fill.")
    if binary.all():
        notes.append(f"{name} covers the whole image: nothing is kept, this is text-to-image through this pipeline")
    return binary


def to_mask(mask, size: tuple[int, int], name: str = "mask") -> tuple[np.ndarray, tuple[str, ...]]:
    """A mask image (white = fill) -> (H, W) bool at ``size``, plus notes.

    Colour masks are read by luminance; transparent pixels count as black (keep), so a white stroke on a transparent
    layer marks the region to fill. Values ≥ 0.5 are "fill", as diffusers' mask processor binarises.

    Args:
        mask: PIL image, (H, W[, C]) array or file path.
        size: (width, height) of the image it belongs to.
        name: How messages call it.

    Raises:
        ValueError: Empty mask (nothing to fill), a different aspect ratio than the image, unreadable input.
    """
    notes: list[str] = []
    binary = _binary_mask(mask, size, name, notes)
    return _checked_fill(binary, name, notes), tuple(notes)


def union_mask(layers, size: tuple[int, int], name: str = "mask") -> tuple[np.ndarray, tuple[str, ...]]:
    """Several mask layers (e.g. the strokes layers of an image editor) -> the union of their fill regions.

    Each layer is read like :func:`to_mask` (white or opaque-white strokes = fill, black or transparent = keep, other
    sizes resized when the aspect ratio matches); the union must not be empty.

    Raises:
        ValueError: No layer, an empty union, a layer of another aspect ratio, an unreadable layer.
    """
    notes: list[str] = []
    width, height = size
    binary = np.zeros((height, width), dtype=bool)  # (H, W)
    for k, layer in enumerate(layers):
        binary |= _binary_mask(layer, size, name if len(layers) == 1 else f"{name} layer {k + 1}", notes)
    return _checked_fill(binary, name, notes), tuple(notes)


def size_multiple(pipe) -> int:
    """Pixels an image side must be a multiple of: ``vae_scale_factor × 2^(down blocks − 1)``."""
    return Geometry.from_pipeline(pipe, layers=False).multiple


def native_size(pipe) -> tuple[int, int]:
    """(width, height) in pixels the U-Net was built for: ``unet.config.sample_size × vae_scale_factor``."""
    h, w = Geometry.from_pipeline(pipe, layers=False).default_hw
    return w, h


def working_size(pipe, size: tuple[int, int], max_scale: float = 2.0) -> tuple[tuple[int, int], tuple[str, ...]]:
    """The (width, height) to run a pipeline at for an image of ``size``, plus notes.

    Images much larger than the model's native size (longer side over ``max_scale`` × native) are scaled down to
    the native longer side (the U-Net is convolutional and runs at other sizes, but it only learnt its native
    scale). Sides are then rounded to the nearest multiple of :func:`size_multiple` (at least one multiple).
    """
    width, height = size
    notes = []
    native = max(native_size(pipe))
    if max(width, height) > max_scale * native:
        scale = native / max(width, height)
        notes.append(f"{width}x{height} is far above the model's native {native} px: scaled by {scale:.3g}")
        width, height = width * scale, height * scale
    geometry = Geometry.from_pipeline(pipe, layers=False)
    multiple = geometry.multiple
    new = tuple(max(multiple, int(round(v / multiple)) * multiple) for v in (width, height))
    if new != tuple(size) and not notes:
        notes.append(
            f"{size[0]}x{size[1]} is not a multiple of {multiple} (VAE factor {geometry.vae_factor} x U-Net "
            f"downsampling {geometry.unet_downsampling}): run at {new[0]}x{new[1]}"
        )
    elif new != tuple(size):
        notes[-1] += f", run at {new[0]}x{new[1]}"
    return (int(new[0]), int(new[1])), tuple(notes)


def resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize for the model: area averaging when shrinking (no aliasing), bicubic when enlarging."""
    if image.size == tuple(size):
        return image
    shrinking = size[0] <= image.width and size[1] <= image.height
    return image.resize(size, Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC)
