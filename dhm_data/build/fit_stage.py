"""The fit stage of a build: 3DMM parameters for samples that have no labels.

One unit per shard of samples (the same chunks the prepare stage uses): read
the 2D landmarks (and optional 3D landmark estimates), run the batched
:func:`dhm_data.fit.fitting.fit` once for the whole shard, and write
``fits/<split>/shard-NNNNN.npz`` (:mod:`dhm_data.fit.result_file`).  The prepare stage
then takes pose / identity / expression from it and flags each sample as
``label_source = "fitted"`` with its residual and convergence.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from dhm_data.errors import DatasetError
from dhm_data.build.manifests import shard_chunks
from dhm_data.build.runner import Unit, fingerprint


def load_landmarks_3d(path) -> dict:
    """Optional 3D landmark estimates: an ``.npz`` with ``names`` (N,) and
    ``landmarks_3d`` (N, 68, 3) in 0-based source pixels (z: depth, larger =
    closer, any offset).  Returns ``{name: (68, 3)}``."""
    path = Path(path)
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise DatasetError(f"{path}: expected an .npz with 'names' (N,) and 'landmarks_3d' (N, 68, 3), "
                               f"found a single array of shape {np.shape(z)}")
        with z:
            names, l3 = z["names"], z["landmarks_3d"]
    except DatasetError:
        raise
    except KeyError as e:
        raise DatasetError(f"{path}: key {e} is missing (expected 'names' (N,) and 'landmarks_3d' (N, 68, 3))") from e
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read as .npz ({e})") from e
    if l3.ndim != 3 or l3.shape[1:] != (68, 3) or len(names) != len(l3):
        raise DatasetError(f"{path}: landmarks_3d has shape {l3.shape} for {len(names)} names, expected (N, 68, 3)")
    return {str(n): l3[i].astype(np.float64) for i, n in enumerate(names)}


def fit_units(layout, reader, lm_model, cfg, splits, shard_size, landmarks_3d: dict | None = None) -> list[Unit]:
    from dhm_data import __version__

    fit_cfg = dict(cfg.get("fit", {}))
    units = []
    for split, items in splits.items():
        for i, chunk in enumerate(shard_chunks(items, shard_size)):
            out = layout.fits(split, i)
            l3 = {it.name: landmarks_3d[it.name] for it in chunk if landmarks_3d and it.name in landmarks_3d}
            params = {"stage": "fit", "fit": fit_cfg, "model": lm_model.digest(), "version": __version__,
                      "reader": [cfg["build"]["reader"], cfg.get("reader", {})], "l3": sorted(l3)}
            extra = [hashlib.sha256(np.ascontiguousarray(l3[k], np.float64).tobytes()).hexdigest() for k in sorted(l3)]
            fp = fingerprint(params, [p for it in chunk for p in it.paths], extra)
            units.append(Unit("fit", f"{split}/{layout.shard_name(i)}", fp, [out],
                              (reader, chunk, lm_model, fit_cfg, out, l3), n=len(chunk), meta={"key": (split, i)}))
    return units


def fit_shard(payload) -> dict:
    """Worker: fit every sample of one shard in one batched solve."""
    from dhm_data.fit.result_file import flagged_table, read_fits, write_fits
    from dhm_data.fit import FitConfig, fit

    reader, items, lm_model, fit_cfg, out, l3 = payload
    names, lm2, lm3, heights, rejections = [], [], [], [], []
    for item in items:
        try:
            s = reader.load(item)
        except DatasetError as e:
            rejections.append({"name": item.name, "path": str(item.paths[0]), "stage": "fit", "reason": str(e)})
            continue
        names.append(item.name)
        lm2.append(s.landmarks_2d)
        lm3.append(l3.get(item.name, np.full((68, 3), np.nan)))
        heights.append(s.image_size[0])
    unknown = sorted(set(fit_cfg) - set(FitConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"[fit] options {unknown} are not FitConfig fields ({', '.join(FitConfig.__dataclass_fields__)})")
    config = FitConfig(**fit_cfg)
    if names:
        result = fit(np.stack(lm2), lm_model, np.stack(lm3) if l3 else None, config, image_height=np.array(heights))
        write_fits(out, names, result, image_height=np.array(heights), model_name=lm_model.name, used_3d=bool(l3))
        n_conv = int(np.sum(result.converged))
    else:
        write_fits(out, [], None)
        n_conv = 0
    flagged = flagged_table(read_fits(out)) if names else []
    return {"fitted": len(names), "converged": n_conv, "flagged": flagged, "rejections": rejections}
