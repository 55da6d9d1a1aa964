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
    missing = missing_mirrors(items)
    if missing:
        problems.append(f"{len(missing)} mirrored samples are missing although their originals are present: "
                        + ", ".join(missing))
    return problems


def missing_mirrors(items: list[Item]) -> list[str]:
    """Names of the ``<SUBSET>_Flip/<name>`` samples that are absent while
    ``<SUBSET>/<name>`` is present, in a dataset that has mirrored samples at
    all (300W-LP); empty otherwise.  The real 300W-LP name list most
    head-pose code trains on lacks 35 such mirrors (those whose Euler angles
    leave +-99 degrees)."""
    if not any(it.flipped for it in items):
        return []
    present = {it.name for it in items}
    out = []
    for it in items:
        if it.flipped:
            continue
        subset, _, stem = it.name.partition("/")
        mirror = f"{subset}_Flip/{stem}"
        if mirror not in present:
            out.append(mirror)
    return sorted(out)


def assign_split(items: list[Item], rule: str, manifest: dict) -> "OrderedDict[str, list[Item]]":
    """Split ``items`` into named splits, each keeping the items' order.

    Rules: ``test`` / ``all`` / ``train`` (everything in one split of that
    name) and ``300wlp-seed-paper`` (see ``manifests/300wlp.json``: groups of
    one source photo -- every pose augmentation and mirror -- stay together;
    groups in sha256 order fill ``val`` with exactly round(val_fraction * N)
    non-flipped samples -- the manifest's ``val`` count for the full release --
    by :func:`exact_fill`).
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
    val = set(exact_fill([groups[g] for g in ordered], target))
    val = {ordered[i] for i in val}
    train_items = [it for it in items if it.source_id not in val]
    val_items = [it for it in items if it.source_id in val]
    return OrderedDict([("train", train_items), ("val", val_items)])


def shard_chunks(items: list, size: int) -> list[list]:
    """``items`` cut in order into shards of ``size`` (the last may be shorter)."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def exact_fill(sizes: list[int], target: int) -> list[int]:
    """Indices of the groups (``sizes`` in priority order) that fill
    ``target`` exactly: walking the groups in order, a group is taken when it
    fits and the groups after it can still complete the sum exactly.  Where
    no subset reaches ``target``, the largest reachable sum below it is
    filled instead.  Where plain greedy filling (take what fits) ends exactly
    on the target, this takes the same groups.

    Reachability is a bitset of sums per suffix (bit ``v`` set: some subset of
    ``sizes[i:]`` sums to ``v``), so the cost is O(len(sizes) * target / 64).
    """
    mask = (1 << (target + 1)) - 1
    suffix = [0] * (len(sizes) + 1)
    suffix[-1] = 1  # the empty subset sums to 0
    for i in range(len(sizes) - 1, -1, -1):
        suffix[i] = (suffix[i + 1] | (suffix[i + 1] << sizes[i])) & mask
    goal = suffix[0].bit_length() - 1  # the largest reachable sum <= target
    taken, need = [], goal
    for i, size in enumerate(sizes):
        if need == 0:
            break
        if size <= need and (suffix[i + 1] >> (need - size)) & 1:
            taken.append(i)
            need -= size
    return taken
