"""What a dataset reader yields: one :class:`Sample` per labelled image.

Readers only read: they never crop, fit or write.  Every coordinate they
yield is already converted to dhm-data's convention: **0-based pixels** of the
source image (x right, y down), via :mod:`dhm_data.camera`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class DatasetError(ValueError):
    """The dataset folder or one of its files is not what the format says."""


@dataclass
class Sample:
    """One labelled image of a dataset.

    Attributes:
        name: unique sample name within the dataset (file stem, plus the video
            folder for 300VW), e.g. ``IBUG_image_008_1_0`` or ``image00050``.
        subset: subset folder, e.g. ``IBUG``, ``IBUG_Flip``, ``300VW-3D/CatA``.
        image_path: the source image.
        landmarks_2d: ``(68, 2)`` float64, 0-based source-image pixels; NaN
            rows for missing points.
        landmarks_3d: ``(68, 3)`` float64 or None: x, y as ``landmarks_2d``
            (the projection of the 3D landmarks), z the depth in pixel units.
        pose_para: ``(7,)`` float64 ``Pose_Para`` or None (LS3D-W).
        shape_para: identity coefficients ``(K,)`` or None.
        exp_para: expression coefficients ``(E,)`` or None.
        image_size: (height, width) when the reader knows it without decoding.
        flipped: True for mirrored copies (300W-LP ``*_Flip``).
        source_id: the original photo this sample derives from (all pose
            augmentations and mirrors share it); used for leak-free splits.
        landmark_source: which label the 2D landmarks came from, e.g.
            ``"pt2d"``, ``"landmarks/pts_3d"``, ``"pt3d_68"``, ``"t7"``.
        extra: reader-specific extra arrays (e.g. AFLW 21-point ``pt2d``).
    """

    name: str
    subset: str
    image_path: Path
    landmarks_2d: np.ndarray
    landmarks_3d: np.ndarray | None = None
    pose_para: np.ndarray | None = None
    shape_para: np.ndarray | None = None
    exp_para: np.ndarray | None = None
    image_size: tuple | None = None
    flipped: bool = False
    source_id: str = ""
    landmark_source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def has_parameters(self) -> bool:
        return self.pose_para is not None and self.shape_para is not None and self.exp_para is not None
