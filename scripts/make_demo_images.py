"""Write a small demo set for `make demo`: faces, a face-less image and a file that is not an image.

Usage: python scripts/make_demo_images.py FOLDER
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from skimage import data

NOT_AN_IMAGE = b"<!doctype html>\n<html><head><title>404</title></head><body>Not found</body></html>\n"


def demo_images() -> dict[str, Image.Image]:
    astronaut = Image.fromarray(data.astronaut())
    return {
        "astronaut.jpg": astronaut,
        "astronaut-flipped.jpg": ImageOps.mirror(astronaut),
        "astronaut-gray.jpg": astronaut.convert("L"),
        "coffee-no-face.jpg": Image.fromarray(data.coffee()),
        "gradient-no-face.jpg": Image.fromarray(horizontal_gradient(480, 640)),
    }


def horizontal_gradient(height: int, width: int) -> np.ndarray:
    row = np.linspace(0, 255, width, dtype=np.uint8)
    return np.repeat(np.repeat(row[None, :, None], height, axis=0), 3, axis=2)


def write_demo_set(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, image in demo_images().items():
        path = folder / name
        image.save(path, format="JPEG", quality=92)
        written.append(path)
    html = folder / "not-an-image.jpg"
    html.write_bytes(NOT_AN_IMAGE)
    written.append(html)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where to write the demo set (created if missing)")
    args = parser.parse_args()
    written = write_demo_set(args.folder)
    print(f"wrote {len(written)} demo files to {args.folder}")


if __name__ == "__main__":
    main()
