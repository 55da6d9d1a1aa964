"""Fitting settings: :class:`FitConfig`, the one place that checks them
(``__post_init__`` for values, :meth:`FitConfig.from_mapping` for a
pipeline's ``[fit]`` table or a fit file's recorded settings), the help text
``fit-bfm`` shows for each option (:meth:`FitConfig.option_help`, from the
field metadata, so option help and defaults cannot drift from the config),
and the jaw rule by kind of label (:func:`jaw_for_labels`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from dhm_data.errors import FittingError

__all__ = ["FitConfig", "JAW_MODES", "METHODS", "LABEL_JAW", "jaw_for_labels"]

JAW_MODES = ("fixed", "silhouette")
METHODS = ("gauss-newton", "alternating")

#: Landmark sources (the ``landmarks_source`` of a dataset sample, see
#: :mod:`dhm_data.datasets.base`) -> the jaw mode their jaw labels need.
#: Projections of fixed 3D landmark vertices: AFLW2000-3D ``pt3d_68``,
#: 300W-LP ``landmarks/*_pts.mat`` ``pts_3d``, LS3D-W (``t7``): "fixed".
#: Labels that follow the visible contour of the face: 300W-LP ``pt2d`` and
#: ``pts_2d`` (the 300-W annotation convention): "silhouette" (Zhu et al.
#: 2016, section 4.1; the reference README checks ``pts_2d`` against
#: ``pts_3d`` on a real sample: they differ by up to 29 px on the jaw).
LABEL_JAW = {
    "pt3d_68": "fixed",
    "landmarks/pts_3d": "fixed",
    "pts_3d": "fixed",
    "t7": "fixed",
    "pt2d": "silhouette",
    "landmarks/pts_2d": "silhouette",
    "pts_2d": "silhouette",
}

_JAW_HELP = ("jaw labels: 'fixed' = projections of fixed 3D landmark vertices (AFLW2000-3D pt3d_68, 300W-LP pts_3d, "
             "LS3D-W): fixed vertices at full weight, no marching; 'silhouette' = labels that follow the visible "
             "contour (300W-LP pt2d / pts_2d, 300-W): landmark marching where the model has contour lines, else the "
             "fixed jaw vertices down-weighted (jaw_weight, far_jaw_cos_yaw). Default 'fixed': the label kind of "
             "AFLW2000-3D, 300W-LP's default pts_3d and LS3D-W")


def jaw_for_labels(source: str, default: str = "fixed") -> str:
    """The jaw mode labels of ``source`` need (:data:`LABEL_JAW`; a
    qualifier after the name, e.g. ``"pt2d (mirrored)"``, is ignored, and any
    LS3D-W ``t7`` re-annotation is fixed); an unknown source gives
    ``default``."""
    s = str(source)
    if "(t7)" in s:
        return "fixed"
    return LABEL_JAW.get(s.split(" ")[0], default)


def _opt(default, help_text):
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True)
class FitConfig:
    """Fitting parameters (all dimensionless unless stated).  Each field's
    meaning is its ``metadata["help"]`` (:meth:`option_help`), which is also
    the help of the matching ``fit-bfm`` option."""

    max_iterations: int = _opt(10, "iterations at most (Gauss-Newton steps, or eos-style alternations)")
    tolerance: float = _opt(3e-3, "converged when the estimated remaining movement of the fitted landmarks (RMS, by "
                                  "the observed contraction rate) is below this fraction of the face size "
                                  "(3e-3 ~ 0.2 px on a face of 75 px RMS radius)")
    regularisation: float = _opt(1e-3, "Tikhonov weight of the identity prior sum (alpha/sigma)^2 against the "
                                       "face-size-normalised landmark cost (~ the squared relative landmark noise)")
    expression_regularisation: float | None = _opt(None, "the same for expression; none = regularisation")
    jaw_weight: float = _opt(0.5, "weight of the 17 jaw landmarks in the silhouette fallback (model without contour "
                                  "lines); 1 = no down-weighting")
    far_jaw_cos_yaw: bool = _opt(True, "in the silhouette fallback, also weight the jaw side turning away by cos(yaw)")
    depth_weight: float = _opt(1.0, "weight of the z residual against x, y when 3D landmark estimates are given")
    min_points: int = _opt(6, "an image with fewer valid landmarks is not fitted (NaN parameters, flagged)")
    max_residual: float = _opt(0.05, "flag a fit whose NME (mean 2D error / sqrt(w h) of the label box) is above this")
    batch_size: int = _opt(128, "images solved together (bounds memory)")
    march_iterations: int = _opt(3, "iterations that re-select the marched jaw vertices before they are frozen")
    method: str = _opt("gauss-newton", "'gauss-newton': one joint damped Gauss-Newton step on pose, identity and "
                                       "expression per iteration; 'alternating': eos's scheme (pose by affine camera, "
                                       "then identity and expression in turn)")
    jaw: str = _opt("fixed", _JAW_HELP)

    def __post_init__(self):
        if self.jaw not in JAW_MODES:
            raise FittingError(f"FitConfig.jaw must be 'silhouette' or 'fixed', got {self.jaw!r}")
        if self.method not in METHODS:
            raise FittingError(f"FitConfig.method must be 'gauss-newton' or 'alternating', got {self.method!r}")
        if self.max_iterations < 1:
            raise FittingError(f"FitConfig.max_iterations must be >= 1, got {self.max_iterations}")
        for name in ("tolerance", "regularisation", "jaw_weight", "depth_weight", "max_residual"):
            if not getattr(self, name) >= 0:
                raise FittingError(f"FitConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.expression_regularisation is not None and not self.expression_regularisation >= 0:
            raise FittingError(f"FitConfig.expression_regularisation must be >= 0 or None, got {self.expression_regularisation}")
        if self.method == "gauss-newton" and not (self.regularisation > 0 and self.lam_exp > 0):
            raise FittingError("FitConfig: the Gauss-Newton method needs regularisation > 0 (the prior makes the shape block invertible)")
        if self.min_points < 4:
            raise FittingError(f"FitConfig.min_points must be >= 4 (an affine camera has 8 unknowns), got {self.min_points}")
        if self.batch_size < 1:
            raise FittingError(f"FitConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.march_iterations < 0:
            raise FittingError(f"FitConfig.march_iterations must be >= 0, got {self.march_iterations}")

    @classmethod
    def from_mapping(cls, options, origin: str = "[fit]") -> "FitConfig":
        """A config from a mapping of option names to values (a pipeline's
        ``[fit]`` table, a fit file's recorded settings): unknown names and
        values of the wrong type raise :class:`FittingError` naming
        ``origin``, the option, what was expected and what was found; the
        value checks of ``__post_init__`` follow.  The one place that checks
        ``[fit]`` options."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise FittingError(f"{origin}: unknown fitting options {unknown}; known: {', '.join(known)}")
        kw = {}
        for name, value in options.items():
            default = getattr(cls, name)
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, int):
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif isinstance(default, float) or default is None:
                ok = value is None and default is None or isinstance(value, (int, float)) and not isinstance(value, bool)
                value = float(value) if ok and value is not None else value
            else:
                ok = isinstance(value, type(default))
            if not ok:
                want = "a number or none" if default is None else type(default).__name__
                raise FittingError(f"{origin}: fitting option {name!r} must be {want}, got {value!r}")
            kw[name] = value
        try:
            return cls(**kw)
        except FittingError as e:
            raise FittingError(f"{origin}: {e}") from None

    @classmethod
    def option_help(cls, name: str) -> str:
        """Help text of option ``name`` with its real default, for commands
        (``fit-bfm --tolerance`` etc.)."""
        f = {f.name: f for f in fields(cls)}[name]
        return f"{f.metadata['help'][:1].upper()}{f.metadata['help'][1:]} [default: {f.default}]."

    @property
    def lam_exp(self) -> float:
        return self.regularisation if self.expression_regularisation is None else self.expression_regularisation

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in _FIELD_NAMES}


_FIELD_NAMES = tuple(f.name for f in fields(FitConfig))
