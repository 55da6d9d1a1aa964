"""Draw real rotated 300W-LP images with their ``pts_3d`` landmarks: a check
by eye of the frame the tests pin (tests/test_real_300wlp.py).

    python scripts/draw_real_300wlp.py --out /tmp/300wlp-rotations.png

Reads ``../shared/reference/300w-lp`` (the 61 unlabelled rotations and the
IBUG landmark files); the picture shows licensed images, so it is written
where you say and never into the repository.  One row per source photo,
steps k = 0, 3, 6, 9 and the last; jaw points green, inner points red.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from dhm_data.formats.images import decode_rgb
from dhm_data.formats.matfile import load_mat
from dhm_data.geometry import camera
from dhm_data.viz.sample import draw_landmarks, save_png

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "300w-lp"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="PNG to write (outside the repository)")
    ap.add_argument("--reference", type=Path, default=REFERENCE, help="the 300w-lp reference folder")
    ap.add_argument("--tile", type=int, default=300, help="side of each tile in pixels")
    args = ap.parse_args()
    images = args.reference / "unlabelled-rotations" / "IBUG"
    landmarks = args.reference / "300W_LP" / "landmarks" / "IBUG"
    photos: dict[str, dict[int, Path]] = {}
    for p in images.glob("*.jpg"):
        source, k = p.stem.rsplit("_", 1)
        photos.setdefault(source, {})[int(k)] = p
    rows = []
    for source in sorted(photos):
        steps = photos[source]
        tiles = []
        for k in sorted({0, 3, 6, 9, max(steps)} & set(steps)):
            img = decode_rgb(steps[k])
            pts = camera.one_based_to_zero_based(load_mat(landmarks / f"{steps[k].stem}_pts.mat")["pts_3d"].astype(np.float64))
            drawn = draw_landmarks(img, pts, radius=max(2, round(2 * img.shape[1] / args.tile)))
            tiles.append(cv2.resize(drawn, (args.tile, args.tile), interpolation=cv2.INTER_AREA))
        while len(tiles) < 5:
            tiles.append(np.full((args.tile, args.tile, 3), 255, np.uint8))
        rows.append(np.concatenate(tiles, axis=1))
    save_png(args.out, np.concatenate(rows, axis=0))
    print(f"wrote {args.out}: {len(rows)} photos x 5 steps")


if __name__ == "__main__":
    main()
