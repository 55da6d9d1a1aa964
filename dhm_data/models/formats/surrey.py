"""The Surrey Face Model (eos) in eos's cereal binary format.

``--bfm`` takes the model ``.bin`` (e.g. ``sfm_shape_3448.bin``) or the folder
holding it.  Beside it:

``ibug_to_sfm.txt`` (required)
    TOML, ``[landmark_mappings]`` 1-based iBUG id = SFM vertex index (0-based,
    as eos uses it).  49 of the 68 points are mapped in eos's file; the 17 jaw
    points except the chin (ids 1-8, 10-17) and the inner mouth corners (61,
    65) are not, and stay ``-1`` (missing, never invented).  A mapped vertex
    beyond this model's vertex count (the file notes ids above 845 are absent
    from the lowest resolutions) is also marked missing.
``expression_blendshapes_*.bin`` (optional, used when the model file has no
    expression model of its own)
    eos ``std::vector<Blendshape>``: 6 blendshapes (anger, disgust, fear,
    happiness, sadness, surprise).
``sfm_model_contours.json`` (optional)
    ``model_contour.right_contour`` / ``left_contour``, 0-based vertices; eos
    lets image jaw points 1-8 slide along the whole right list and 10-17 along
    the left list, so those become ``contour_candidates`` (the chin, point 9,
    keeps its mapped vertex).

Binary layout (cereal ``BinaryOutputArchive``, little-endian, as written by
eos ``save_model``; eos ``MorphableModel`` class version 1-4):
``uint32 version``; shape ``PcaModel``; colour ``PcaModel``; (v >= 2)
``optional<variant<PcaModel, Blendshapes>>`` expression model; (v >= 3)
``optional<unordered_map<string, int>>`` landmark definitions;
``vector<array<double, 2>>`` texture coordinates; (v 4)
``vector<array<int, 3>>`` texture triangles.  A ``PcaModel`` is ``mean``,
``orthonormal_pca_basis``, ``eigenvalues`` (each an Eigen float matrix:
``int32 rows, int32 cols``, column-major float32 data) and
``vector<array<int, 3>> triangle_list``; a ``vector`` is ``uint64 size`` then
its items; a ``string`` ``uint64 size`` then bytes; an ``optional`` a
``bool nullopt`` byte then the value when false; a ``variant`` an ``int32``
index then the alternative.  A ``Blendshape`` is ``string name`` then an Eigen
``deformation`` ``(3V, 1)``.

Coefficient convention (eos's): ``identity_basis`` is the orthonormal basis
times ``sqrt(eigenvalue)`` (eos's "rescaled" basis), so coefficients are
standard normal and ``identity_std`` is 1; ``reconstruct(c)`` equals eos's
``draw_sample(c)``.  Blendshape weights multiply the deformations directly
(a weight of 1 is the full expression); ``expression_std`` is an assumed 1.
Units millimetres; model frame y up.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from dhm_data.errors import ModelFileError
from dhm_data.models.formats import ModelFormat, the_one_file
from dhm_data.models.morphable import N_LANDMARKS, MorphableModel

LANDMARK_FILE = "ibug_to_sfm.txt"
CONTOUR_FILE = "sfm_model_contours.json"
BLENDSHAPE_GLOB = "expression_blendshapes*.bin"
KNOWN_VERSIONS = (1, 2, 3, 4)


class _Reader:
    """Sequential little-endian reader over a cereal binary archive."""

    def __init__(self, data: bytes, path: Path):
        self.data = data
        self.pos = 0
        self.path = path

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ModelFileError(
                f"{self.path}: truncated or mis-shaped at byte {self.pos} reading {what}: need {n} bytes, "
                f"{len(self.data) - self.pos} left"
            )
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def unpack(self, fmt: str, what: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

    def u32(self, what):
        return self.unpack("I", what)[0]

    def i32(self, what):
        return self.unpack("i", what)[0]

    def u64(self, what):
        return self.unpack("Q", what)[0]

    def flag(self, what):
        b = self.take(1, what)[0]
        if b not in (0, 1):
            raise ModelFileError(f"{self.path}: byte {self.pos - 1} ({what}) is {b}, expected a bool (0 or 1)")
        return bool(b)

    def string(self, what):
        n = self.u64(f"{what} length")
        return self.take(n, what).decode("utf-8", errors="replace")

    def matrix(self, what) -> np.ndarray:
        """An Eigen float matrix: int32 rows, int32 cols, column-major float32."""
        rows, cols = self.unpack("ii", f"{what} size")
        if rows < 0 or cols < 0:
            raise ModelFileError(f"{self.path}: {what} has size ({rows}, {cols}), expected non-negative")
        data = self.take(4 * rows * cols, f"{what} ({rows} x {cols} float32)")
        return np.frombuffer(data, "<f4").reshape(cols, rows).T.astype(np.float64)

    def int_triples(self, what) -> np.ndarray:
        n = self.u64(f"{what} size")
        data = self.take(12 * n, f"{what} ({n} x 3 int32)")
        return np.frombuffer(data, "<i4").reshape(n, 3).astype(np.int64)

    def pca_model(self, what) -> dict:
        return {
            "mean": self.matrix(f"{what}.mean"),
            "basis": self.matrix(f"{what}.orthonormal_pca_basis"),
            "eigenvalues": self.matrix(f"{what}.eigenvalues"),
            "triangles": self.int_triples(f"{what}.triangle_list"),
        }

    def blendshapes(self, what) -> list:
        n = self.u64(f"{what} count")
        return [(self.string(f"{what}[{i}].name"), self.matrix(f"{what}[{i}].deformation")) for i in range(n)]


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read ({e})") from e


def read_model_bin(path: Path) -> dict:
    """Parse an eos ``MorphableModel`` file into plain numpy arrays.

    Returns ``version``, ``shape`` / ``color`` (dicts: ``mean`` ``(3V, 1)``,
    ``basis`` ``(3V, K)`` orthonormal, ``eigenvalues`` ``(K, 1)``,
    ``triangles`` ``(T, 3)`` 0-based), ``expression`` (``None``, ``("pca",
    dict)`` or ``("blendshapes", [(name, (3V, 1)), ...])``),
    ``landmark_definitions`` (dict or ``None``), ``texture_coordinates``
    ``(n, 2)`` float64, ``texture_triangles`` ``(m, 3)``.
    """
    path = Path(path)
    data = _read_bytes(path)
    r = _Reader(data, path)
    version = r.u32("class version")
    if version not in KNOWN_VERSIONS:
        raise ModelFileError(
            f"{path}: eos MorphableModel class version is {version}, expected one of {KNOWN_VERSIONS} "
            f"(version 0 is eos's old cv::Mat format: download the current model files)"
        )
    out = {"version": version, "expression": None, "landmark_definitions": None}
    out["shape"] = r.pca_model("shape_model")
    out["color"] = r.pca_model("color_model")
    if version >= 2 and not r.flag("expression_model nullopt"):
        index = r.i32("expression_model variant index")
        if index == 0:
            out["expression"] = ("pca", r.pca_model("expression_model"))
        elif index == 1:
            out["expression"] = ("blendshapes", r.blendshapes("expression_model"))
        else:
            raise ModelFileError(f"{path}: expression_model variant index is {index}, expected 0 (PcaModel) or 1 (Blendshapes)")
    if version >= 3 and not r.flag("landmark_definitions nullopt"):
        n = r.u64("landmark_definitions size")
        out["landmark_definitions"] = {r.string("landmark name"): r.i32("landmark vertex") for _ in range(n)}
    n = r.u64("texture_coordinates size")
    out["texture_coordinates"] = np.frombuffer(r.take(16 * n, "texture_coordinates"), "<f8").reshape(n, 2).copy()
    out["texture_triangles"] = r.int_triples("texture_triangle_indices") if version >= 4 else np.zeros((0, 3), np.int64)
    if r.pos != len(data):
        raise ModelFileError(f"{path}: {len(data) - r.pos} unread bytes after the model (not an eos v{version} model?)")
    _check_pca(path, "shape_model", out["shape"], None)
    return out


def read_blendshapes_bin(path: Path) -> list:
    """eos ``load_blendshapes``: ``[(name, deformation (3V, 1)), ...]``."""
    path = Path(path)
    data = _read_bytes(path)
    r = _Reader(data, path)
    shapes = r.blendshapes("blendshapes")
    if r.pos != len(data):
        raise ModelFileError(f"{path}: {len(data) - r.pos} unread bytes after {len(shapes)} blendshapes")
    return shapes


def _check_pca(path, what, m, dim):
    mean, basis, ev = m["mean"], m["basis"], m["eigenvalues"]
    d = mean.shape[0] if dim is None else dim
    if mean.shape != (d, 1) or d % 3:
        raise ModelFileError(f"{path}: {what}.mean has shape {mean.shape}, expected ({d}, 1) with rows a multiple of 3")
    k = basis.shape[1]
    if basis.shape != (d, k):
        raise ModelFileError(f"{path}: {what}.orthonormal_pca_basis has shape {basis.shape}, expected ({d}, K)")
    if ev.size != k or ev.ndim != 2 or 1 not in ev.shape:
        raise ModelFileError(f"{path}: {what}.eigenvalues has shape {ev.shape}, expected ({k}, 1)")
    if np.any(ev < 0):
        raise ModelFileError(f"{path}: {what}.eigenvalues holds negative values, expected variances >= 0")


def read_landmark_map(path: Path) -> dict:
    """``ibug_to_sfm.txt`` as {0-based iBUG index: SFM vertex}."""
    try:  # the TOML reader: in the standard library from Python 3.11, the tomli package before
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read ({e})") from e
    except tomllib.TOMLDecodeError as e:
        raise ModelFileError(f"{path}: not valid TOML ({e})") from e
    table = doc.get("landmark_mappings")
    if not isinstance(table, dict):
        raise ModelFileError(f"{path}: table [landmark_mappings] is missing (present: {', '.join(doc) or 'none'})")
    out = {}
    for k, v in table.items():
        if not (str(k).isdigit() and 1 <= int(k) <= N_LANDMARKS) or not isinstance(v, int) or v < 0:
            raise ModelFileError(
                f"{path}: [landmark_mappings] entry {k!r} = {v!r}, expected a 1-based iBUG id 1-68 = a vertex index >= 0"
            )
        out[int(k) - 1] = v
    return out


def read_contours(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        mc = doc["model_contour"]
        right = np.asarray(mc["right_contour"], np.int64).reshape(-1)
        left = np.asarray(mc["left_contour"], np.int64).reshape(-1)
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read ({e})") from e
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ModelFileError(
            f"{path}: expected JSON {{'model_contour': {{'right_contour': [...], 'left_contour': [...]}}}} ({type(e).__name__}: {e})"
        ) from e
    return right, left


# ================================================================ format
def _is_model_bin(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    if len(head) < 12:
        return False
    version, rows, cols = struct.unpack("<Iii", head)
    return version in KNOWN_VERSIONS and rows > 0 and rows % 3 == 0 and cols == 1


def _model_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.bin") if p.is_file() and _is_model_bin(p))


def detect(path: Path) -> bool:
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() == ".bin" and _is_model_bin(path)
    return path.is_dir() and bool(_model_files(path))


def load(path: Path) -> MorphableModel:
    path = Path(path)
    if path.is_dir():
        path = the_one_file(path, _model_files(path), "eos model file", "*.bin")
    folder = path.parent
    raw = read_model_bin(path)
    shape = raw["shape"]
    D = shape["mean"].shape[0]
    V = D // 3
    sqrt_ev = np.sqrt(shape["eigenvalues"].reshape(-1))
    identity = (shape["basis"] * sqrt_ev).reshape(V, 3, -1)
    mean = shape["mean"].reshape(V, 3)
    sources = [str(path)]
    expression = np.zeros((V, 3, 0))
    expression_names: list[str] = []
    exp_kind = "none"
    if raw["expression"] is not None:
        kind, em = raw["expression"]
        if kind == "pca":
            _check_pca(path, "expression_model", em, D)
            mean = mean + em["mean"].reshape(V, 3)
            expression = (em["basis"] * np.sqrt(em["eigenvalues"].reshape(-1))).reshape(V, 3, -1)
            exp_kind = "pca (in model file)"
        else:
            expression, expression_names = _stack_blendshapes(em, path, D)
            exp_kind = "blendshapes (in model file)"
    else:
        bs_files = sorted(folder.glob(BLENDSHAPE_GLOB))
        if len(bs_files) > 1:
            raise ModelFileError(f"{folder}: {len(bs_files)} blendshape files ({', '.join(p.name for p in bs_files)}); keep one")
        if bs_files:
            expression, expression_names = _stack_blendshapes(read_blendshapes_bin(bs_files[0]), bs_files[0], D)
            exp_kind = f"blendshapes ({bs_files[0].name})"
            sources.append(str(bs_files[0]))
    lm_path = folder / LANDMARK_FILE
    if not lm_path.is_file():
        raise ModelFileError(f"{folder}: {LANDMARK_FILE} (iBUG 68 -> SFM vertex map) is missing beside {path.name}")
    mapping = read_landmark_map(lm_path)
    sources.append(str(lm_path))
    landmarks = np.full(N_LANDMARKS, -1, np.int64)
    beyond = []
    for i, v in mapping.items():
        if v < V:
            landmarks[i] = v
        else:
            beyond.append(i + 1)
    contours = None
    c_path = folder / CONTOUR_FILE
    if c_path.is_file():
        right, left = read_contours(c_path)
        for side, a in (("right_contour", right), ("left_contour", left)):
            if a.size == 0 or a.min() < 0 or a.max() >= V:
                raise ModelFileError(f"{c_path}: {side} holds vertices outside [0, {V - 1}] (or is empty)")
        chin = np.array([landmarks[8]], np.int64) if landmarks[8] >= 0 else right[-1:]
        contours = tuple([right.copy() for _ in range(8)] + [chin] + [left.copy() for _ in range(8)])
        sources.append(str(c_path))
    tri = shape["triangles"]
    if tri.size and (tri.min() < 0 or tri.max() >= V):
        raise ModelFileError(f"{path}: shape_model.triangle_list holds indices outside [0, {V - 1}]")
    E = expression.shape[2]
    return MorphableModel(
        name=f"Surrey Face Model {path.stem} ({V} vertices, {identity.shape[2]} identity, {E} expression)",
        mean=mean,
        identity_basis=identity,
        expression_basis=expression,
        identity_std=np.ones(identity.shape[2]),
        expression_std=np.ones(E),
        landmark_indices=landmarks,
        triangles=tri if tri.size else None,
        contour_candidates=contours,
        units="millimetre",
        source=";".join(sources),
        metadata={
            "format": "surrey",
            "family": "surrey",
            "eos_class_version": raw["version"],
            "axes": "SFM model frame: y up",
            "coefficients": "standard normal (basis = orthonormal basis x sqrt(eigenvalue))",
            "expression": exp_kind,
            "expression_names": expression_names,
            "landmarks_beyond_model": beyond,
        },
    )


def _stack_blendshapes(shapes, path, D):
    if not shapes:
        return np.zeros((D // 3, 3, 0)), []
    cols = []
    for name, d in shapes:
        if d.shape != (D, 1):
            raise ModelFileError(f"{path}: blendshape {name!r} deformation has shape {d.shape}, expected ({D}, 1)")
        cols.append(d[:, 0])
    return np.stack(cols, axis=1).reshape(D // 3, 3, -1), [n for n, _ in shapes]


FORMAT = ModelFormat(
    name="surrey",
    description=f"Surrey Face Model: eos .bin + {LANDMARK_FILE} [+ {BLENDSHAPE_GLOB}, {CONTOUR_FILE}]",
    detect=detect,
    load=load,
)
