"""What a dataset reader yields: one :class:`Sample` per labelled image.

Readers only read: they never crop, fit or write.  Every coordinate they
yield is already converted to dhm-data's convention: **0-based pixels** of the
source image (x right, y down), via :mod:`dhm_data.geometry.camera`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dhm_data.errors import DatasetError
from dhm_data.formats.files import path_problem


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
        image_size: (height, width) of the source image, read from its header
            (every reader sets it; the build checks landmarks before decoding).
        flipped: True for mirrored copies (300W-LP ``*_Flip``).
        source_id: the original photo this sample derives from (all pose
            augmentations and mirrors share it); used for leak-free splits.
        landmark_source: which label the 2D landmarks came from, e.g.
            ``"pt2d"``, ``"landmarks/pts_3d"``, ``"pt3d_68"``, ``"t7"``.
        extra: reader-specific extra arrays (e.g. AFLW 21-point ``pt2d``).
        warnings: problems that do not make the sample unusable (a malformed
            field no build uses), as sentences naming the file and field;
            recorded per sample in ``build.json``.
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
    warnings: list = field(default_factory=list)

    @property
    def has_parameters(self) -> bool:
        return self.pose_para is not None and self.shape_para is not None and self.exp_para is not None


@dataclass(frozen=True)
class Item:
    """One entry of a dataset listing, before anything is read.

    ``paths`` are the files the sample depends on (their sizes and
    modification times fingerprint the unit of work that reads them).
    """

    name: str
    subset: str
    paths: tuple
    flipped: bool = False
    source_id: str = ""


class DatasetReader:
    """Base class of the readers: locate the dataset, list items, load one.

    Subclasses set ``name`` (command-line name), ``folder_name`` (the folder
    of the official download, e.g. ``300W_LP``), ``expected_children`` (glob
    patterns that identify the dataset folder) and ``how_to_get`` (shown when the root
    is wrong), and implement :meth:`items` and :meth:`load`.
    """

    name = ""
    folder_name = ""
    expected_children: tuple = ()
    how_to_get = ""

    #: the options this reader takes (a pipeline's [reader] table)
    option_names: tuple = ()
    #: option -> the values it may take (a list option: each element), for
    #: options that name one of a few choices
    option_choices: dict = {}
    #: options whose value is a list (of ``option_choices`` where given)
    list_options: tuple = ()
    #: the morphable-model family whose coefficients the dataset's 3DMM labels
    #: (``Shape_Para``, ``Exp_Para``) are, with their lengths: ``(family, K, E)``,
    #: or None for a dataset without such labels (see dhm_data.models.formats.model_family)
    parameter_model: tuple | None = None

    def __init__(self, root, **options):
        problems = self.option_problems(options)
        if problems:
            raise DatasetError(f"{self.name}: " + "; ".join(problems))
        self.root = self.locate(root)
        self.options = options

    @classmethod
    def option_problems(cls, options: dict) -> list[str]:
        """What is wrong with ``options`` for this reader (unknown names,
        values outside :attr:`option_choices`), as sentences; empty if nothing.
        The one check of a pipeline's ``[reader]`` table, run before any work."""
        problems = []
        unknown = sorted(set(options) - set(cls.option_names))
        if unknown:
            problems.append(f"unknown options {unknown} for the {cls.name} reader; it takes "
                            f"{', '.join(cls.option_names) or 'none'}")
        for key, value in options.items():
            if key in cls.list_options:
                if not isinstance(value, (list, tuple)):
                    problems.append(f"option {key} must be a list, found {value!r}")
                    continue
                values = list(value)
            else:
                values = [value]
            if key in cls.option_choices:
                bad = [v for v in values if v not in cls.option_choices[key]]
                if bad:
                    problems.append(f"option {key} {value!r}: expected {'each of ' if key in cls.list_options else ''}"
                                    f"one of {', '.join(map(str, cls.option_choices[key]))}")
            elif key in cls.option_names and not all(isinstance(v, str) for v in values):
                problems.append(f"option {key} must be a string, found {value!r}")
        return problems

    @classmethod
    def locate(cls, root) -> Path:
        """Accept the dataset folder itself or its parent; else a clear error."""
        root = Path(root).expanduser()
        why = path_problem(root)
        if why is not None and why not in ("missing", "is a directory, expected a file"):
            raise DatasetError(f"{root}: {why} (expected the {cls.folder_name} folder or its parent). {cls.how_to_get}")
        if not root.exists():
            raise DatasetError(f"{root}: no such directory (expected the {cls.folder_name} folder or its parent). {cls.how_to_get}")
        for candidate in (root, root / cls.folder_name):
            if candidate.is_dir() and any(next(candidate.glob(c), None) is not None for c in cls.expected_children):
                return candidate
        raise DatasetError(
            f"{root}: does not look like {cls.folder_name}: expected it (or a {cls.folder_name}/ folder inside it) "
            f"to contain {', '.join(cls.expected_children)}. {cls.how_to_get}"
        )

    def items(self) -> list[Item]:  # pragma: no cover - abstract
        raise NotImplementedError

    def load(self, item: Item) -> Sample:  # pragma: no cover - abstract
        raise NotImplementedError

    def samples(self):
        """Every loadable sample (bad ones raise DatasetError)."""
        for item in self.items():
            yield self.load(item)

    def synthetic_marker(self) -> dict | None:
        """The ``SYNTHETIC.json`` of a tree written by ``dhm-data synth``, if any."""
        for d in (self.root, self.root.parent):
            p = d / "SYNTHETIC.json"
            if p.is_file():
                return json.loads(p.read_text())
        return None
