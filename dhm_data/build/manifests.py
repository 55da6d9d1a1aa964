"""Per-dataset facts from ``manifests/``: expected counts and the split rule.

:func:`check_counts` compares a scan with the manifest (or, for a synthetic
tree, with the counts its ``SYNTHETIC.json`` records).  :func:`assign_split`
implements the shipped split rules; the result is written into every build.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
from collections import Counter, OrderedDict

from dhm_data.datasets.base import Item
from dhm_data.errors import PipelineError


#: the split rules :func:`assign_split` knows
SPLIT_RULES = ("test", "all", "train", "val", "300wlp-seed-paper")


def load_manifest(dataset: str) -> dict:
    res = importlib.resources.files("dhm_data.manifests") / f"{dataset}.json"
    if not res.is_file():
        return {"dataset": dataset, "counts": {}}
    return json.loads(res.read_text())


def check_counts(items: list[Item], manifest: dict, synthetic: dict | None = None) -> list[str]:
    """Mismatches between found and expected counts per subset, as sentences
    (empty when all agree).  A synthetic tree is checked against its own
    recorded counts, when it records them."""
    found = Counter(it.subset for it in items)
    if synthetic is not None:
        expected = synthetic.get("counts") or {}
        label = "SYNTHETIC.json"
    else:
        expected = manifest.get("counts", {})
        label = f"manifests/{manifest.get('dataset')}.json"
    problems = []
    for subset, n in expected.items():
        if found.get(subset, 0) != n:
            problems.append(f"{subset}: found {found.get(subset, 0)} samples, {label} expects {n}")
    for subset in sorted(set(found) - set(expected)):
        if expected:
            problems.append(f"{subset}: found {found[subset]} samples in a subset {label} does not list")
    return problems


def assign_split(items: list[Item], rule: str, manifest: dict) -> "OrderedDict[str, list[Item]]":
    """Split ``items`` into named splits, each keeping the items' order.

    Rules: ``test`` / ``all`` / ``train`` (everything in one split of that
    name) and ``300wlp-seed-paper`` (see ``manifests/300wlp.json``: groups of
    one source photo -- every pose augmentation and mirror -- stay together;
    groups in sha256 order fill ``val`` up to round(val_fraction * N)
    non-flipped samples, skipping any group that would overshoot).
    """
    if rule in ("test", "all", "train", "val"):
        return OrderedDict([(rule, list(items))])
    if rule != "300wlp-seed-paper":
        raise PipelineError(f"unknown split rule {rule!r}; known: {', '.join(SPLIT_RULES)}")
    spec = manifest["split"]
    groups: dict[str, int] = Counter(it.source_id for it in items if not it.flipped)
    n = sum(groups.values())
    target = round(spec["val_fraction"] * n) if n != spec["train"] + spec["val"] else spec["val"]
    salt = spec["salt"]
    ordered = sorted(groups, key=lambda g: hashlib.sha256(f"{salt}:{g}".encode()).hexdigest())
    val, filled = set(), 0
    for g in ordered:
        if filled + groups[g] <= target:
            val.add(g)
            filled += groups[g]
        if filled == target:
            break
    train_items = [it for it in items if it.source_id not in val]
    val_items = [it for it in items if it.source_id in val]
    return OrderedDict([("train", train_items), ("val", val_items)])


def shard_chunks(items: list, size: int) -> list[list]:
    """``items`` cut in order into shards of ``size`` (the last may be shorter)."""
    return [items[i : i + size] for i in range(0, len(items), size)]
