"""Scoring predictions on the published test sets, each published protocol by name.

The modules, by concern:

* :mod:`.protocols`: the one source of the words (definitions, named protocols, quirks)
  that feed the docstrings, ``dhm-eval --help`` and the report;
* :mod:`.metrics`: 2D / 3D NME, yaw bins, CED, AUC, failure rate, and :func:`evaluate`
  (one set of landmark predictions -> :class:`.scores.EvaluationReport`);
* :mod:`.pose`: head-pose conventions of the public code, MAE and geodesic error;
* :mod:`.tddfa`: 62-parameter outputs of the 3DDFA family decoded to image landmarks;
* :mod:`.ground_truth`: the test sets from the raw datasets, the 3DDFA arrays or a build;
* :mod:`.lists`: image-name lists (``manifests/``, ``--names``) and the pose filter;
* :mod:`.predictions`: prediction files, rows matched to images, pixel frames;
* :mod:`.checks`: convention slips caught (1-based, crop frame, x/y swap, radians/degrees);
* :mod:`.report`: :func:`evaluation_report`, the JSON document of ``dhm-eval`` as a
  library call (a training loop gets the same document as the command);
* :mod:`.plots`: the CED plot.

May import every lower package (errors, geometry, formats, models, datasets, shards,
build.layout, load).
"""

from dhm_data.evaluation.ground_truth import GroundTruth, load_ground_truth
from dhm_data.evaluation.metrics import evaluate, nme, nme_3d
from dhm_data.evaluation.pose import evaluate_pose
from dhm_data.evaluation.protocols import PROTOCOLS, get_protocol
from dhm_data.evaluation.report import EvaluationResult, Prediction, evaluation_report
from dhm_data.evaluation.scores import EvaluationReport, comparison_table

__all__ = ["GroundTruth", "load_ground_truth", "evaluate", "nme", "nme_3d", "evaluate_pose", "PROTOCOLS",
           "get_protocol", "EvaluationResult", "Prediction", "evaluation_report", "EvaluationReport",
           "comparison_table"]
