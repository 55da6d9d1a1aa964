"""LS3D-W reader (Bulat & Tzimiropoulos 2017, "How far are we from solving the
2D & 3D face alignment problem?").

Layout (docs/conventions.md section 3): ``LS3D-W/{300W-Testset-3D,
AFLW2000-3D-Reannotated, Menpo-3D, 300VW-3D/{CatA,CatB,CatC,Trainset}/<video>/}``;
every image has a same-name ``.t7`` (Torch7 FloatTensor 68x2, 0-based pixels).
No 3DMM parameters: ``dhm-data fit-bfm`` provides them.  Sample names are the
path below the root without suffix (``300VW-3D/CatA/114/0001``), unique across
subsets; the subset is the top folder (``300VW-3D/<Cat>`` for 300VW).
Option ``subsets``: a list of subset names to read (default: all present).
"""

from __future__ import annotations

import os
from pathlib import Path

from dhm_data.datasets.base import DatasetReader, Item, Sample
from dhm_data.datasets.labels import read_landmarks_t7
from dhm_data.formats.files import require_file
from dhm_data.formats.images import image_size

SUBSETS = (
    "300W-Testset-3D",
    "AFLW2000-3D-Reannotated",
    "Menpo-3D",
    "300VW-3D/CatA",
    "300VW-3D/CatB",
    "300VW-3D/CatC",
    "300VW-3D/Trainset",
)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class Reader(DatasetReader):
    name = "ls3dw"
    folder_name = "LS3D-W"
    expected_children = ("300W-Testset-3D", "AFLW2000-3D-Reannotated", "Menpo-3D", "300VW-3D")
    option_names = ("subsets",)
    option_choices = {"subsets": SUBSETS}
    list_options = ("subsets",)
    how_to_get = (
        "LS3D-W is distributed by its authors (adrianbulat.com, LS3D-W.tar.gz); unpack it so that "
        "LS3D-W/Menpo-3D etc. exist, or run `dhm-data synth ls3dw` for synthetic data."
    )

    def items(self) -> list[Item]:
        wanted = self.options.get("subsets") or SUBSETS  # checked by option_problems
        out = []
        for subset in wanted:
            d = self.root / subset
            if not d.is_dir():
                continue
            for dirpath, dirnames, filenames in os.walk(d, followlinks=False):
                dirnames.sort()
                for fn in sorted(filenames):
                    p = Path(dirpath) / fn
                    if p.suffix.lower() not in IMAGE_SUFFIXES and p.suffix != ".t7":
                        continue
                    if p.suffix == ".t7" and any(p.with_suffix(s).exists() for s in IMAGE_SUFFIXES):
                        continue  # listed through its image
                    rel = p.relative_to(self.root).with_suffix("")
                    image = p if p.suffix != ".t7" else p.with_suffix(".jpg")
                    out.append(Item(rel.as_posix(), subset, (image, p.with_suffix(".t7")), False, rel.as_posix()))
        return out

    def load(self, item: Item) -> Sample:
        image_path, t7_path = item.paths
        require_file(image_path, "image file", f" (its labels {t7_path.name} exist)")
        require_file(t7_path, "label file", f" for image {image_path.name}")
        lm = read_landmarks_t7(t7_path)
        return Sample(
            name=item.name,
            subset=item.subset,
            image_path=image_path,
            landmarks_2d=lm,
            image_size=image_size(image_path),
            source_id=item.source_id,
            landmark_source="t7",
        )
