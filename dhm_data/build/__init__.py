"""Build orchestration: the typed pipeline configuration (:mod:`.config`),
manifests and splits (:mod:`.manifests`), the build folder layout
(:mod:`.layout`), resumable units of work (:mod:`.runner`), one module per
stage (:mod:`.fit_stage`, :mod:`.prepare_stage`) and the build flow
(:mod:`.flow`) that strings them together.

May import every lower package (errors, atomic, geometry, formats, models,
datasets, fit, prepare, shards); never load, evaluate, synth, viz or cli.
"""
