"""AFLW2000-3D reader (Zhu et al. 2016), the large-pose test set.

Layout: ``AFLW2000/image0xxxx.jpg + .mat`` (docs/conventions.md section 2), in
sorted file-name order, the order of every published benchmark.  Labels:

* ``annotation="original"`` (default): ``pt3d_68`` (3, 68), 1-based x, y
  converted to 0-based; 2D landmarks are its x, y; 3D landmarks are it whole.
* ``annotation="reannotated"``: the LS3D-W re-annotation (Bulat &
  Tzimiropoulos 2017), ``<name>.t7`` (68x2, already 0-based) from the folder
  given as option ``reannotated_dir`` (default: an
  ``LS3D-W/AFLW2000-3D-Reannotated`` or ``AFLW2000-3D-Reannotated`` folder beside
  the dataset); 3D landmarks stay ``pt3d_68``'s.

``pt2d`` is the AFLW 21-point set with invisible points stored as -1: it is
kept in ``extra["pt2d_21"]`` (1-based, untouched) and never used as a 68-point
label.  Three real files (image01198, image02899, image03189) hold a 23-point
``pt2d``: the build does not use it, so a malformed ``pt2d`` is a warning on
the sample (``Sample.warnings``, recorded in ``build.json``), not a rejection,
and ``extra["pt2d_21"]`` is None.  ``roi`` is in the original AFLW frame and not a face box: ignored.
"""

from __future__ import annotations

from pathlib import Path

from dhm_data.datasets.base import DatasetReader, Item, Sample
from dhm_data.datasets.labels import field, labelled_parameters, read_landmarks_t7
from dhm_data.errors import DatasetError
from dhm_data.formats.files import require_file
from dhm_data.formats.images import image_size
from dhm_data.formats.matfile import load_mat
from dhm_data.geometry import camera


class Reader(DatasetReader):
    name = "aflw2000"
    folder_name = "AFLW2000"
    expected_children = ("image*.mat", "image*.jpg")
    option_names = ("annotation", "reannotated_dir")
    option_choices = {"annotation": ("original", "reannotated")}
    parameter_model = ("bfm2009", 199, 29)
    how_to_get = (
        "AFLW2000-3D is distributed by the 3DDFA authors (AFLW2000-3D.zip); unpack it so that "
        "AFLW2000/image00002.jpg and .mat exist, or run `dhm-data synth aflw2000` for synthetic data."
    )

    def items(self) -> list[Item]:
        stems = sorted({p.stem for p in self.root.glob("image*") if p.suffix.lower() in (".jpg", ".mat")})
        out = []
        for stem in stems:
            paths = [self.root / f"{stem}.jpg", self.root / f"{stem}.mat"]
            if self.annotation == "reannotated":
                paths.append(self.reannotated_dir / f"{stem}.t7")
            out.append(Item(stem, "AFLW2000", tuple(paths), False, stem))
        return out

    @property
    def annotation(self) -> str:
        return self.options.get("annotation", "original")

    @property
    def reannotated_dir(self) -> Path:
        d = self.options.get("reannotated_dir")
        candidates = [Path(d)] if d else [
            self.root.parent / "LS3D-W" / "AFLW2000-3D-Reannotated",
            self.root.parent / "AFLW2000-3D-Reannotated",
        ]
        for c in candidates:
            if c.is_dir():
                return c
        raise DatasetError(
            "aflw2000: the re-annotated labels were asked for but no folder was found; looked in "
            + ", ".join(str(c) for c in candidates)
            + " (give reannotated_dir, the LS3D-W/AFLW2000-3D-Reannotated folder)"
        )

    def load(self, item: Item) -> Sample:
        image_path, mat_path = item.paths[0], item.paths[1]
        require_file(image_path, "image file", f" (its labels {mat_path.name} exist)")
        mat = load_mat(mat_path)
        pt3d = camera.one_based_to_zero_based(field(mat, mat_path, "pt3d_68", (3, 68)).T)
        pose, shape, exp = labelled_parameters(mat, mat_path)
        warnings = []
        try:
            pt2d_21 = field(mat, mat_path, "pt2d", (2, 21), finite=False)
        except DatasetError as e:  # not used by any build: kept as a warning
            pt2d_21 = None
            warnings.append(f"{e} (unused field; sample kept)")
        lm2d, source = pt3d[:, :2].copy(), "pt3d_68"
        if self.annotation == "reannotated":
            t7 = item.paths[2]
            require_file(t7, "re-annotated label file")
            lm2d, source = read_landmarks_t7(t7), "LS3D-W re-annotation (t7)"
        return Sample(
            name=item.name,
            subset=item.subset,
            image_path=image_path,
            landmarks_2d=lm2d,
            landmarks_3d=pt3d,
            pose_para=pose,
            shape_para=shape,
            exp_para=exp,
            image_size=image_size(image_path),
            source_id=item.source_id,
            landmark_source=source,
            extra={"pt2d_21": pt2d_21, "yaw_deg": float(camera.yaw_degrees(pose))},
            warnings=warnings,
        )

