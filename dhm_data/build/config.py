"""Named build pipelines: ``pipelines/<name>.toml`` plus command-line overrides,
parsed once into a typed, frozen :class:`Pipeline`.

A pipeline says which reader (and its ``[reader]`` options), which stages,
the crop size and margin, the DHM sigma, the shard size and DHM storage, the
split rule and, for pipelines with a fit stage, the ``[fit]`` options.
:func:`load_pipeline` checks everything before any work starts: unknown
sections and keys, types and ranges, the split rule, the DHM storage (names
from :mod:`dhm_data.shards.schema`), the ``[reader]`` options against the
reader's declared options (:meth:`DatasetReader.option_problems`) and the
``[fit]`` options through :meth:`dhm_data.fit.FitConfig.from_mapping`, the one
check of fitting options.  Nothing mutates a :class:`Pipeline` afterwards;
:meth:`Pipeline.with_fit_options` returns a new one.

:meth:`Pipeline.to_dict` is the *effective* configuration as a plain dict
(after overrides); it is recorded verbatim in every shard and in ``build.json``.
"""

from __future__ import annotations

import importlib.resources
import json
from dataclasses import dataclass
from pathlib import Path

from dhm_data.build.manifests import SPLIT_RULES
from dhm_data.datasets import READERS, get_reader
from dhm_data.errors import FittingError, PipelineError
from dhm_data.fit import FitConfig
from dhm_data.shards.schema import DEFAULT_DHM_STORAGE, DHM_STORAGE_CHOICES

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

KNOWN_STAGES = ("fit", "prepare")
#: keys each section may hold (required ones first); [reader] and [fit] are
#: checked against the reader's options and FitConfig
REQUIRED = {
    "build": ("reader", "stages", "split"),
    "crop": ("size", "margin"),
    "dhm": ("sigma",),
    "shards": ("size",),
}
ALLOWED = {
    "build": ("reader", "description", "stages", "split"),
    "crop": ("size", "margin"),
    "dhm": ("sigma",),
    "shards": ("size", "dhm_storage"),
}
OPEN_SECTIONS = ("reader", "fit")
#: DHM storage a pipeline may choose: the schema's alternatives for the dhm field


@dataclass(frozen=True)
class Pipeline:
    """One effective pipeline, checked.

    ``reader_options`` / ``fit_options``: the ``[reader]`` and ``[fit]`` tables
    as ``(name, value)`` pairs, sorted (frozen); ``fit`` the checked
    :class:`FitConfig` (defaults where ``[fit]`` says nothing).  ``recorded``:
    the effective configuration as JSON text, what :meth:`to_dict` returns.
    """

    name: str
    origin: str
    reader: str
    description: str
    stages: tuple
    split: str
    crop_size: int
    margin: float
    sigma: float
    shard_size: int
    dhm_storage: str
    reader_options: tuple
    fit_options: tuple
    fit: FitConfig
    recorded: str

    @property
    def reader_kwargs(self) -> dict:
        return dict(self.reader_options)

    @property
    def fit_kwargs(self) -> dict:
        return dict(self.fit_options)

    @property
    def has_fit_stage(self) -> bool:
        return "fit" in self.stages

    def to_dict(self) -> dict:
        """The effective configuration (a fresh dict each call): the TOML
        tables after overrides, plus ``name`` and ``origin``."""
        return json.loads(self.recorded)

    def with_fit_options(self, options: dict) -> "Pipeline":
        """A new pipeline whose ``[fit]`` table is ``options`` (checked)."""
        cfg = self.to_dict()
        cfg["fit"] = dict(options)
        return _from_dict(cfg, self.origin)


def available_pipelines() -> list[str]:
    return sorted(p.name[:-5] for p in importlib.resources.files("dhm_data.pipelines").iterdir() if p.name.endswith(".toml"))


def load_pipeline(name_or_path: str, overrides: dict | None = None) -> Pipeline:
    """The checked effective pipeline: ``name`` of a shipped pipeline or a path
    to a ``.toml`` file, with ``overrides`` ``{"crop.size": 256, ...}`` applied
    (None values are ignored).  Raises :class:`PipelineError` naming the file,
    the section and key, what was expected and what was found."""
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.is_file():
        text, origin, name = p.read_text(), str(p), p.stem
    else:
        res = importlib.resources.files("dhm_data.pipelines") / f"{name_or_path}.toml"
        if not res.is_file():
            raise PipelineError(
                f"no pipeline named {name_or_path!r}; shipped pipelines: {', '.join(available_pipelines())} "
                "(or give a path to a .toml file)"
            )
        text, origin, name = res.read_text(), f"pipelines/{name_or_path}.toml", name_or_path
    try:
        cfg = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PipelineError(f"{origin}: not valid TOML ({e})") from e
    for section, keys in REQUIRED.items():
        for key in keys:
            if key not in cfg.get(section, {}):
                raise PipelineError(f"{origin}: [{section}] {key} is missing")
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, key = dotted.split(".", 1)
        cfg.setdefault(section, {})[key] = value
    cfg["name"], cfg["origin"] = name, origin
    return _from_dict(cfg, origin)


def _from_dict(cfg: dict, origin: str) -> Pipeline:
    """Check an effective configuration dict and freeze it."""
    sections = {k: v for k, v in cfg.items() if k not in ("name", "origin")}
    unknown = sorted(set(sections) - set(ALLOWED) - set(OPEN_SECTIONS))
    if unknown:
        raise PipelineError(f"{origin}: unknown sections {unknown}; known: {', '.join(list(ALLOWED) + list(OPEN_SECTIONS))}")
    for section, keys in ALLOWED.items():
        if not isinstance(sections.get(section, {}), dict):
            raise PipelineError(f"{origin}: [{section}] must be a table, found {sections[section]!r}")
        bad = sorted(set(sections.get(section, {})) - set(keys))
        if bad:
            raise PipelineError(f"{origin}: [{section}] has unknown keys {bad}; allowed: {', '.join(keys)}")
    b, c, d, s = (sections[k] for k in ("build", "crop", "dhm", "shards"))
    reader = _typed(origin, "build", "reader", b["reader"], str)
    if reader not in READERS:
        raise PipelineError(f"{origin}: [build] reader {reader!r} is not a dataset reader; known: {', '.join(sorted(READERS))}")
    stages = b["stages"]
    if not isinstance(stages, list) or not all(isinstance(x, str) for x in stages):
        raise PipelineError(f"{origin}: [build] stages must be a list of stage names, found {stages!r}")
    bad = [x for x in stages if x not in KNOWN_STAGES]
    if bad:
        raise PipelineError(f"{origin}: unknown stages {bad}; known: {', '.join(KNOWN_STAGES)}")
    split = _typed(origin, "build", "split", b["split"], str)
    if split not in SPLIT_RULES:
        raise PipelineError(f"{origin}: [build] split {split!r} is not a split rule; known: {', '.join(SPLIT_RULES)}")
    size = _typed(origin, "crop", "size", c["size"], int)
    margin = float(_typed(origin, "crop", "margin", c["margin"], float))
    sigma = float(_typed(origin, "dhm", "sigma", d["sigma"], float))
    shard_size = _typed(origin, "shards", "size", s["size"], int)
    if size < 8 or margin < 0 or sigma <= 0 or shard_size < 1:
        raise PipelineError(f"{origin}: crop.size >= 8, crop.margin >= 0, dhm.sigma > 0 and shards.size >= 1 are "
                            f"required; got crop.size {size}, crop.margin {margin}, dhm.sigma {sigma}, shards.size {shard_size}")
    storage = s.get("dhm_storage", DEFAULT_DHM_STORAGE)
    if storage not in DHM_STORAGE_CHOICES:
        raise PipelineError(f"{origin}: [shards] dhm_storage must be {' or '.join(DHM_STORAGE_CHOICES)}, found {storage!r}")
    reader_opts = sections.get("reader", {}) or {}
    if not isinstance(reader_opts, dict):
        raise PipelineError(f"{origin}: [reader] must be a table, found {reader_opts!r}")
    problems = get_reader(reader).option_problems(reader_opts)
    if problems:
        raise PipelineError(f"{origin}: [reader] " + "; ".join(problems))
    fit_opts = sections.get("fit", {}) or {}
    if not isinstance(fit_opts, dict):
        raise PipelineError(f"{origin}: [fit] must be a table, found {fit_opts!r}")
    try:
        fit = FitConfig.from_mapping(fit_opts, origin=f"{origin}: [fit]")
    except FittingError as e:
        raise PipelineError(str(e)) from None
    return Pipeline(
        name=str(cfg.get("name", "")), origin=origin, reader=reader, description=str(b.get("description", "")),
        stages=tuple(stages), split=split, crop_size=size, margin=margin, sigma=sigma, shard_size=shard_size,
        dhm_storage=storage, reader_options=_frozen(reader_opts), fit_options=_frozen(fit_opts), fit=fit,
        recorded=json.dumps(cfg, sort_keys=True),
    )


def _typed(origin: str, section: str, key: str, value, kind):
    """``value`` checked as an int (not a bool), a number, or a str."""
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        want = {int: "an integer", float: "a number", str: "a string"}[kind]
        raise PipelineError(f"{origin}: [{section}] {key} must be {want}, found {value!r}")
    return value


def _frozen(table: dict) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in table.items()))
