"""Scoring predictions: metrics (:mod:`.metrics`), ground truth from the
datasets, the 3DDFA benchmark arrays or a build (:mod:`.ground_truth`) and
the CED plot (:mod:`.plots`).

May import every lower package (errors, geometry, formats, models, datasets,
shards, build.layout, load).
"""
