"""Pairing 2D image files with their mask files: ``images/<id>.<ext>`` + ``masks/<id>_mask.<ext>``
(or ``masks/<id>.<ext>``), or ``<id>.<ext>`` beside ``<id>_mask.<ext>``."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import MRIDataError
from .io import IMAGE_EXTENSIONS, natural_key

__all__ = ["EXT_PATTERN", "find_image_mask_pairs", "pair_files"]

EXT_PATTERN = "<" + "|".join(e[1:] for e in IMAGE_EXTENSIONS) + ">"  # for messages: <png|jpg|...>


def _files(folder: Path) -> dict[str, Path]:
    """Map stem → path for the 2D image files directly in ``folder``; a stem twice is an error. A broken link
    counts (reading it then names it), so that a slice whose file is gone is not left out unsaid."""
    found: dict[str, Path] = {}
    for p in folder.iterdir():
        if p.name.startswith(".") or p.suffix.lower() not in IMAGE_EXTENSIONS or not (p.is_file() or p.is_symlink()):
            continue
        if p.stem in found:
            raise MRIDataError(p, f"two files share the id {p.stem!r} in {folder}: {found[p.stem].name} and "
                                  f"{p.name}; keep one")
        found[p.stem] = p
    return found


def pair_files(folder: Path, masks_dir: Path, skipped: list | None) -> list[tuple[str, Path, Path]]:
    """(stem, image, mask) of ``folder``'s images (not ``*_mask``), mask ``<stem>_mask.*`` or ``<stem>.*``
    in ``masks_dir``; an image without a mask raises FileNotFoundError, or is listed in ``skipped``."""
    images, masks = _files(folder), (_files(masks_dir) if masks_dir != folder else None)
    masks = masks if masks is not None else images
    out = []
    for stem in sorted(images, key=natural_key):
        if stem.lower().endswith("_mask") and masks is images:
            continue
        mask = masks.get(f"{stem}_mask") or (masks.get(stem) if masks is not images else None)
        if mask is None:
            where = f"{masks_dir}/{stem}_mask.{EXT_PATTERN}" + (
                "" if masks is images else f" and {masks_dir}/{stem}.{EXT_PATTERN}")
            reason = f"image without a mask: tried {where}"
            if skipped is None:
                raise FileNotFoundError(f"no mask for image {images[stem]}: tried {where}")
            skipped.append((images[stem], reason))
            continue
        out.append((stem, images[stem], mask))
    return out


def find_image_mask_pairs(root: str | os.PathLike, *, skipped: list | None = None) -> list[tuple[str, Path, Path]]:
    """The (id, image_path, mask_path) triples of an ``images/`` + ``masks/`` folder, naturally sorted by id.

    ``root/images/<id>.<ext>`` pairs with ``root/masks/<id>_mask.<ext2>``, else ``root/masks/<id>.<ext2>``
    (ext, ext2 in png/jpg/jpeg/tif/tiff, any case). Masks without an image are ignored. An image
    without a mask raises FileNotFoundError naming it, or, if a ``skipped`` list is given, is
    appended to it as (path, reason). Raises FileNotFoundError for a missing folder or no image,
    MRIDataError (ValueError) for two files with one stem.
    """
    root = Path(root)
    layout = (f"expected {root}/images/<id>.{EXT_PATTERN} and {root}/masks/<id>_mask.{EXT_PATTERN} "
              f"(or masks/<id>.{EXT_PATTERN})")
    if not root.is_dir():
        raise FileNotFoundError(f"MRI data folder {root} does not exist or is not a folder; {layout}")
    for folder in (root / "images", root / "masks"):
        if not folder.is_dir():
            raise FileNotFoundError(f"no {folder.name}/ folder in {root}: {folder} is missing; {layout}")
    if not _files(root / "images"):
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {root / 'images'}; {layout}")
    return pair_files(root / "images", root / "masks", skipped)


