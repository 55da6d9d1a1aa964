"""dhm-data: data preparation and evaluation for large-pose 3D face alignment.

Ingest 300W-LP, AFLW2000-3D and LS3D-W, fit morphable-model parameters where
labels are missing, precompute ground-truth crops and 3D Diffusion Heat Maps
into HDF5 shards, load them as numpy batches, and score predictions with the
published NME / CED protocol.
"""

__version__ = "0.1.0"
