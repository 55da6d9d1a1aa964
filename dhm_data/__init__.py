"""dhm-data: data preparation and evaluation for large-pose 3D face alignment.

Ingest 300W-LP, AFLW2000-3D and LS3D-W, fit morphable-model parameters where
labels are missing, precompute ground-truth crops and 3D Diffusion Heat Maps
into HDF5 shards, load them as numpy batches, and score predictions with the
published NME / CED protocol.
"""

import importlib

__version__ = "0.1.0"

__all__ = ["ShardDataset", "Loader", "HorizontalFlip", "evaluate", "evaluation_report", "load_model", "__version__"]

_LAZY = {
    "ShardDataset": ("dhm_data.load", "ShardDataset"),
    "Loader": ("dhm_data.load", "Loader"),
    "HorizontalFlip": ("dhm_data.load", "HorizontalFlip"),
    "evaluate": ("dhm_data.evaluation.metrics", "evaluate"),
    "evaluation_report": ("dhm_data.evaluation.report", "evaluation_report"),
    "load_model": ("dhm_data.models.formats", "load_model"),
}


def __getattr__(name):
    # imported on first use, so `import dhm_data` (and every CLI start) stays light
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'dhm_data' has no attribute {name!r}")
