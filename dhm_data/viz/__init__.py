"""Pictures and meshes for people to look at: a built sample's crop,
landmarks and DHM side by side (:mod:`.sample`) and a morphable-model mesh
export (:mod:`.mesh`).

May import: :mod:`dhm_data.errors`, :mod:`dhm_data.atomic`,
:mod:`dhm_data.geometry`, :mod:`dhm_data.models`.
"""
