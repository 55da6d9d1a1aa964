"""Conventions and geometry at the bottom of the data flow: pose and
projection (:mod:`.camera`, the only place for ``Pose_Para`` and 0- vs 1-based
pixels), the 68-point scheme and its mirror (:mod:`.landmarks68`), the jaw
contour rule (:mod:`.contour`) and the ground-truth crop (:mod:`.crop`).

Pure functions over numpy arrays.  May import: :mod:`dhm_data.errors` only.
"""
