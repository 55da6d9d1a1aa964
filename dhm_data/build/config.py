"""Named build pipelines: ``pipelines/<name>.toml`` plus command-line overrides.

A pipeline says which reader, which stages, the crop size and margin, the DHM
sigma, the shard size and the split rule.  :func:`load_pipeline` returns the
*effective* configuration as a plain dict (after overrides); it is recorded
verbatim in every shard and in ``build.json``.
"""

from __future__ import annotations

import copy
import importlib.resources
from pathlib import Path
from dhm_data.errors import PipelineError
from dhm_data.shards.schema import DEFAULT_DHM_STORAGE, DHM_STORAGE_CHOICES

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REQUIRED = {
    "build": ("reader", "stages", "split"),
    "crop": ("size", "margin"),
    "dhm": ("sigma",),
    "shards": ("size",),
}
KNOWN_STAGES = ("fit", "prepare")
#: keys each section may hold ([reader] is checked by the reader, [fit] by the fit stage)
ALLOWED = {
    "build": ("reader", "description", "stages", "split"),
    "crop": ("size", "margin"),
    "dhm": ("sigma",),
    "shards": ("size", "dhm_storage"),
}


def available_pipelines() -> list[str]:
    return sorted(p.name[:-5] for p in importlib.resources.files("dhm_data.pipelines").iterdir() if p.name.endswith(".toml"))


def load_pipeline(name_or_path: str, overrides: dict | None = None) -> dict:
    """The effective pipeline: ``name`` of a shipped pipeline or a path to a
    ``.toml`` file, with ``overrides`` ``{"crop.size": 256, ...}`` applied."""
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.is_file():
        text, origin = p.read_text(), str(p)
    else:
        res = importlib.resources.files("dhm_data.pipelines") / f"{name_or_path}.toml"
        if not res.is_file():
            raise PipelineError(
                f"no pipeline named {name_or_path!r}; shipped pipelines: {', '.join(available_pipelines())} "
                "(or give a path to a .toml file)"
            )
        text, origin = res.read_text(), f"pipelines/{name_or_path}.toml"
    try:
        cfg = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PipelineError(f"{origin}: not valid TOML ({e})") from e
    for section, keys in REQUIRED.items():
        for key in keys:
            if key not in cfg.get(section, {}):
                raise PipelineError(f"{origin}: [{section}] {key} is missing")
    cfg = copy.deepcopy(cfg)
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, key = dotted.split(".", 1)
        cfg.setdefault(section, {})[key] = value
    from dhm_data.build.manifests import SPLIT_RULES

    for section, keys in ALLOWED.items():
        unknown = sorted(set(cfg.get(section, {})) - set(keys))
        if unknown:
            raise PipelineError(f"{origin}: [{section}] has unknown keys {unknown}; allowed: {', '.join(keys)}")
    unknown = sorted(set(cfg) - set(ALLOWED) - {"reader", "fit"})
    if unknown:
        raise PipelineError(f"{origin}: unknown sections {unknown}; known: {', '.join(list(ALLOWED) + ['reader', 'fit'])}")
    if cfg["build"]["split"] not in SPLIT_RULES:
        raise PipelineError(f"{origin}: [build] split {cfg['build']['split']!r} is not a split rule; known: {', '.join(SPLIT_RULES)}")
    if cfg["shards"].get("dhm_storage", DEFAULT_DHM_STORAGE) not in DHM_STORAGE_CHOICES:
        raise PipelineError(f"{origin}: [shards] dhm_storage must be one of {', '.join(DHM_STORAGE_CHOICES)}, found {cfg['shards']['dhm_storage']!r}")
    bad = [s for s in cfg["build"]["stages"] if s not in KNOWN_STAGES]
    if bad:
        raise PipelineError(f"{origin}: unknown stages {bad}; known: {', '.join(KNOWN_STAGES)}")
    if int(cfg["crop"]["size"]) < 8 or float(cfg["crop"]["margin"]) < 0 or float(cfg["dhm"]["sigma"]) <= 0 or int(cfg["shards"]["size"]) < 1:
        raise PipelineError(f"{origin}: crop.size >= 8, crop.margin >= 0, dhm.sigma > 0 and shards.size >= 1 are required; got {cfg}")
    cfg["name"] = p.stem if p.suffix == ".toml" else name_or_path
    cfg["origin"] = origin
    return cfg
