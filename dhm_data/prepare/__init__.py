"""Turning one read sample into one shard row: crop window, landmarks in the
crop, 3D landmarks (:mod:`.row`) and the 3-channel Diffusion Heat Map
(:mod:`.dhm`).  Pure functions over arrays; no file I/O.

May import: :mod:`dhm_data.errors`, :mod:`dhm_data.geometry`,
:mod:`dhm_data.models`, :mod:`dhm_data.datasets` (the ``Sample`` type) and
:mod:`dhm_data.shards.schema` (the stored DHM's quantisation).
"""
