"""300W-LP reader (Zhu et al. 2016, the 3DDFA training set).

Layout (docs/conventions.md section 1): ``300W_LP/{AFW,HELEN,IBUG,LFPW}[_Flip]/
<name>.jpg + <name>.mat`` and ``landmarks/<SUBSET>/<name>_pts.mat``.  Names end
in the pose-augmentation step ``k`` (``_0`` is the original photo).

Which 2D landmarks (option ``landmarks``, recorded per sample as
``landmark_source``):

* ``"auto"`` (default): ``landmarks/*/<name>_pts.mat`` ``pts_3d`` (the 2D
  projection of the 3D landmarks, the same kind of label as AFLW2000-3D's
  ``pt3d_68`` the models are tested on) when the file exists; otherwise the
  per-image ``pt2d`` for ``k = 0``; a rotated sample (``k > 0``) without a
  landmarks file is rejected, because its ``pt2d`` is copied from the original
  photo, not warped.
* ``"pts_3d"`` / ``"pts_2d"``: that array of the landmarks file, required.
* ``"pt2d"``: the per-image ``pt2d`` (only right for ``k = 0``).

Mirrored copies (``*_Flip``): labels are read for the mirrored image (from
``landmarks/<SUBSET>_Flip/`` when that folder exists, else the original's
landmarks file mirrored, ``x -> W - 1 - x``), then re-ordered with the
68-point mirror permutation so that every index keeps its iBUG meaning in
image terms (point 0 is always the jaw end on the image's left).  The 3D
landmarks of a mirrored sample are reconstructed from the original photo's
3DMM parameters (read from the sibling non-flipped ``.mat``,
``extra["mirror_source"]``) and mirrored the same way; where the sibling is
absent, from the ``_Flip`` file's own parameters.  The parameters and yaw a
sample *carries* are always its own file's labels.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from dhm_data.datasets.base import DatasetReader, Item, Sample
from dhm_data.datasets.labels import field, labelled_parameters
from dhm_data.errors import DatasetError
from dhm_data.formats.files import require_file
from dhm_data.formats.images import image_size
from dhm_data.formats.matfile import load_mat
from dhm_data.geometry import camera
from dhm_data.geometry.landmarks68 import MIRROR_68, mirror_landmarks

SUBSETS = ("AFW", "HELEN", "IBUG", "LFPW")
#: The 3DMM label variables read from a sample's .mat (the rest is never used).
_LABELS = ("Pose_Para", "Shape_Para", "Exp_Para")
_STEP = re.compile(r"^(?P<source>.+)_(?P<k>\d+)$")


class Reader(DatasetReader):
    name = "300wlp"
    folder_name = "300W_LP"
    expected_children = SUBSETS + tuple(s + "_Flip" for s in SUBSETS)
    option_names = ("landmarks",)
    option_choices = {"landmarks": ("auto", "pts_3d", "pts_2d", "pt2d")}
    parameter_model = ("bfm2009", 199, 29)
    how_to_get = (
        "300W-LP is distributed by the 3DDFA authors (Zhu et al., 'Face Alignment Across Large Poses'); "
        "unpack 300W-LP.zip so that 300W_LP/AFW, 300W_LP/HELEN, ... exist, or run `dhm-data synth 300wlp` for synthetic data."
    )

    @property
    def landmark_option(self) -> str:
        return self.options.get("landmarks", "auto")

    def items(self) -> list[Item]:
        out = []
        listed = {}  # folder -> names of its regular files (one directory scan each)

        def files_in(folder: Path) -> set:
            if folder not in listed:
                try:
                    with os.scandir(folder) as it:
                        listed[folder] = {e.name for e in it if e.is_file()}
                except (FileNotFoundError, NotADirectoryError):
                    listed[folder] = set()
            return listed[folder]

        for base in SUBSETS:
            for subset, flipped in ((base, False), (base + "_Flip", True)):
                d = self.root / subset
                if not d.is_dir():
                    continue
                stems = sorted({p.stem for p in d.iterdir() if p.suffix.lower() in (".jpg", ".mat")})
                lm_folders = [self.root / "landmarks" / f for f in dict.fromkeys((subset, base))]
                for stem in stems:
                    m = _STEP.match(stem)
                    source = f"{base}/{m.group('source') if m else stem}"
                    paths = [d / f"{stem}.jpg", d / f"{stem}.mat"]
                    lm_name = f"{stem}_pts.mat"
                    lm = next((f / lm_name for f in lm_folders if lm_name in files_in(f)), None)
                    if lm is not None:
                        paths.append(lm)
                    if flipped:
                        paths.append(self.root / base / f"{stem}.mat")
                    out.append(Item(f"{subset}/{stem}", subset, tuple(paths), flipped, source))
        return out

    def load(self, item: Item) -> Sample:
        # items() lists [image, labels, (landmarks file), (a mirror's original labels)]
        image_path, mat_path = item.paths[0], item.paths[1]
        stem = image_path.stem
        lm_file = next((p for p in item.paths[2:] if p.name == f"{stem}_pts.mat"), None)
        try:
            h, w = image_size(image_path)
        except DatasetError:
            require_file(image_path, "image file", f" (its labels {mat_path.name} exist)")
            raise
        own = {}  # the sample's own .mat, read only when something of it is used

        def mat():
            if not own:
                own["mat"] = load_mat(mat_path, _LABELS + ("pt2d",))
            return own["mat"]

        m = _STEP.match(stem)
        k = int(m.group("k")) if m else 0
        base = item.subset.removesuffix("_Flip")

        opt = self.landmark_option
        if opt in ("pts_3d", "pts_2d") or (opt == "auto" and lm_file is not None):
            key = "pts_3d" if opt in ("auto", "pts_3d") else "pts_2d"
            if lm_file is None:
                raise DatasetError(f"{self.root / 'landmarks' / base / (stem + '_pts.mat')}: landmarks file is missing (needed for {key})")
            pts = field(load_mat(lm_file, (key,)), lm_file, key, (68, 2), allow_transposed=True)
            mirror_here = item.flipped and lm_file.parent.name == base
            source = f"landmarks/{key}"
        elif opt == "pt2d" or k == 0:
            pts = field(mat(), mat_path, "pt2d", (2, 68)).T
            mirror_here = False
            source = "pt2d"
        else:
            raise DatasetError(
                f"{mat_path}: rotated sample (k={k}) and no landmarks/{base}/{stem}_pts.mat: its pt2d is copied from "
                "the original photo, not warped, so it cannot be used"
            )
        pts = camera.one_based_to_zero_based(pts)
        if mirror_here:  # the original photo's labels, mirrored into this image and re-labelled
            pts = mirror_landmarks(pts, w)
            source += " (mirrored)"
        elif item.flipped:  # already in the mirrored image: re-labelled only
            pts = pts[MIRROR_68]

        # The labels stored for the sample are its own file's; a mirrored
        # sample's 3D landmarks come from its original photo's labels, mirrored.
        pose, shape, exp = labelled_parameters(mat(), mat_path)
        extra = {"yaw_deg": float(camera.yaw_degrees(pose)), "k": k}
        sibling = item.paths[-1] if item.flipped else None
        if sibling is not None and sibling.is_file():
            o_pose, o_shape, o_exp = labelled_parameters(load_mat(sibling, _LABELS), sibling)
            extra["mirror_source"] = {"pose_para": o_pose, "shape_para": o_shape, "exp_para": o_exp, "width": w}
        return Sample(
            name=item.name,
            subset=item.subset,
            image_path=image_path,
            landmarks_2d=pts,
            pose_para=pose,
            shape_para=shape,
            exp_para=exp,
            image_size=(h, w),
            flipped=item.flipped,
            source_id=item.source_id,
            landmark_source=source,
            extra=extra,
        )
