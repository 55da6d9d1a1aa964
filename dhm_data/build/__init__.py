"""Building shards from a raw dataset, top down (:mod:`.flow`): the typed
pipeline (:mod:`.config`), manifests and splits (:mod:`.manifests`), the
model-and-labels check (:mod:`.model_check`), the output folder
(:mod:`.layout`), the resumable runner (:mod:`.runner`), one module per stage
(:mod:`.fit_stage`, :mod:`.prepare_stage`), the fit-result reuse of
``fit-bfm --landmarks`` (:mod:`.fit_reuse`) and what ``status`` and ``verify``
report (:mod:`.state`).

May import: every package of a lower rank (:mod:`dhm_data.errors`,
:mod:`dhm_data.atomic`, :mod:`dhm_data.geometry`, :mod:`dhm_data.formats`,
:mod:`dhm_data.models`, :mod:`dhm_data.datasets`, :mod:`dhm_data.shards`,
:mod:`dhm_data.fit`, :mod:`dhm_data.prepare`).
"""
