"""Batch transforms run by the loader (in its workers): ``f(batch, rng) -> batch``."""

from __future__ import annotations

import numpy as np

from dhm_data.errors import LoaderError
from dhm_data.geometry.landmarks68 import mirror_landmarks
from dhm_data.prepare.dhm import render_dhm
from dhm_data.shards import schema


class HorizontalFlip:
    """Batch transform: mirror each sample with probability ``p``.

    For a mirrored sample (``batch["hflip"]`` True): ``image`` columns are
    reversed; ``landmarks_2d``/``landmarks_3d`` are mirrored by
    :func:`dhm_data.geometry.landmarks68.mirror_landmarks` (``x -> S - 1 - x``
    in 0-based crop pixels, y and z kept, points re-labelled with
    :data:`~dhm_data.geometry.landmarks68.MIRROR_68`); ``dhm`` is re-rendered
    from the mirrored 3D landmarks with :func:`dhm_data.prepare.dhm.render_dhm`
    (exactly the DHM a build would store for the mirrored crop: its x channel
    is ``w - dhm_x`` at the mirrored pixel, ``w`` the Gaussian weight, which
    the stored DHM alone does not give; quantised like the stored one when the
    batch holds uint8); ``crop_affine`` is composed with the mirror
    ``[[-1, 0, S-1], [0, 1, 0]]`` (still source -> crop); ``yaw`` is negated.
    The 3DMM parameters and ``flipped`` (the dataset's own mirrored copies)
    are left as they are: they describe the unmirrored source sample.
    ``sigma``: DHM Gaussian std in crop pixels (:meth:`for_dataset` reads it
    from the build's pipeline).  Needs ``landmarks_3d`` to mirror a ``dhm``.
    """

    def __init__(self, p: float = 0.5, sigma: float | None = None):
        self.p = float(p)
        self.sigma = sigma

    @classmethod
    def for_dataset(cls, dataset, p: float = 0.5) -> "HorizontalFlip":
        """The flip for a :class:`~dhm_data.load.ShardDataset`, with the DHM
        sigma of its build."""
        pipe = dataset.pipeline or {}
        try:
            sigma = float(pipe["dhm"]["sigma"])
        except (KeyError, TypeError):
            raise LoaderError(f"{dataset.paths[0]}: no dhm.sigma in the shard's pipeline attribute; pass sigma=") from None
        return cls(p, sigma)

    def __call__(self, batch: dict, rng: np.random.Generator) -> dict:
        n = len(next(iter(batch.values())))
        mask = rng.random(n) < self.p
        batch["hflip"] = mask
        if not mask.any():
            return batch
        if "dhm" in batch and "landmarks_3d" not in batch:
            raise LoaderError("HorizontalFlip: mirroring the DHM needs the landmarks_3d field (add it to fields=)")
        if "dhm" in batch and self.sigma is None:
            raise LoaderError("HorizontalFlip: sigma is needed to re-render the DHM (use HorizontalFlip.for_dataset)")
        size = None
        for key in ("image", "dhm"):
            if key in batch:
                size = batch[key].shape[2]
        if size is None:
            raise LoaderError("HorizontalFlip: needs image or dhm in the batch to know the crop size")
        rows = np.flatnonzero(mask)
        if "image" in batch:
            batch["image"][rows] = batch["image"][rows][:, :, ::-1]
        for key in ("landmarks_2d", "landmarks_3d"):
            if key in batch:
                batch[key][rows] = mirror_landmarks(batch[key][rows], size)
        if "dhm" in batch:
            for j in rows:
                d = render_dhm(batch["landmarks_3d"][j], size, self.sigma)
                batch["dhm"][j] = d if batch["dhm"].dtype != np.uint8 else schema.quantise(d)
        if "crop_affine" in batch:
            M = np.array([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
            A = np.concatenate([batch["crop_affine"][rows], np.broadcast_to([[[0.0, 0.0, 1.0]]], (len(rows), 1, 3))], 1)
            batch["crop_affine"][rows] = (M @ A)[:, :2]
        if "yaw" in batch:
            batch["yaw"][rows] = -batch["yaw"][rows]
        return batch
