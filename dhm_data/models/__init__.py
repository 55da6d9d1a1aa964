"""Morphable models: the pure-numpy core (:mod:`.morphable`), the packaged
SYNTHETIC model (:mod:`.synthetic`) and one loader per model file format
behind :func:`dhm_data.models.formats.load_model` (:mod:`.formats`).

May import: :mod:`dhm_data.errors`, :mod:`dhm_data.atomic`,
:mod:`dhm_data.geometry`, :mod:`dhm_data.formats`.
"""
