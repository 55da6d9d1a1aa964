"""Label projection error (dhm_data.prepare.row.label_projection_error's measure) on real files:
posed reconstruction of the labelled parameters vs the 2D labels, per dataset.

    python benchmarks/label_check.py ../shared/reference/bfm68    # or ../shared/reference/sfm
"""

import sys
from pathlib import Path

import numpy as np

from dhm_data.datasets import get_reader
from dhm_data.models.formats import load_model
from dhm_data.prepare.row import posed_landmarks
from dhm_data.models.morphable import fit_length

def errs(reader, model):
    out = []
    lm = model.landmark_model()
    for it in reader.items():
        s = reader.load(it)
        src = s.extra.get("mirror_source")
        P = posed_landmarks(lm, s.pose_para, fit_length(s.shape_para, lm.n_identity), fit_length(s.exp_para, lm.n_expression), s.image_size[0])
        L = s.landmarks_2d
        box = L.max(0) - L.min(0)
        d = np.linalg.norm(P[:, :2] - L, axis=1)
        out.append((it.name, np.nanmean(d) / np.sqrt(box.prod()), np.nanmean(d[17:]) / np.sqrt(box.prod()), np.nanmean(d), np.nanmedian(d)))
    return out

REF = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
model = load_model(sys.argv[1])
for root, name, opts in [(str(REF) + "/aflw2000-3d-1000", "aflw2000", {}),
                         (str(REF) + "/300w-lp/300W_LP", "300wlp", {}),
                         (str(REF) + "/300w-lp/300W_LP", "300wlp", {"landmarks": "pt2d"})]:
    e = errs(get_reader(name)(root, **opts), model)
    a = np.array([x[1:] for x in e])
    print(name, opts, len(a))
    for j, what in enumerate(["NME all 68 (/sqrt box)", "NME inner 51", "mean px", "median px"]):
        q = np.percentile(a[:, j], [0, 50, 90, 99, 99.9, 100])
        print(f"  {what:24s} min/50/90/99/99.9/max: " + " ".join(f"{v:.4f}" for v in q))
    worst = sorted(e, key=lambda x: -x[1])[:3]
    print("  worst:", [(w[0], round(w[1], 4)) for w in worst])
