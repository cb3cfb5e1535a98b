"""Analysis: pure functions from store rows to typed results (read only; no protocol
knowledge). Every metric's docstring states its definition; missing data is counted and
excluded, never 0. `episodes_frame` / `decisions_frame` give pandas DataFrames (frames.py)."""

from .base import Frozen, answered, cluster_key, row_state
from .calibration import (
    Calibration,
    CalibrationBin,
    Reliability,
    SelectivePoint,
    calibration,
    ece_of,
    selective_accuracy,
)
from .compare import Comparison, VariantPair, compare_rows
from .detection import (
    AUROC,
    DetectionSummary,
    FlagMetrics,
    Safety,
    Usefulness,
    auroc,
    detection_summary,
    flag_metrics,
    safety_deployment,
    safety_from_rates,
    safety_per_attempt,
    usefulness,
)
from .flagging import (
    DEFAULT_BUDGETS,
    Detection,
    Detector,
    DetectorRecords,
    decision_score,
    detection_results,
    detector_records,
)
from .frames import decisions_frame, episode_records, episodes_frame, to_dataframe
from .intervals import (
    Accuracy,
    Agreement,
    PairedDifference,
    accuracy_interval,
    agreement,
    mcnemar_exact,
    paired_difference,
    sign_flip_test,
)
from .metrics import Estimate, accuracy, assignment_label, bootstrap_ci, by_label, summarise
from .position import GoldPosition, PositionBias, position_bias
from .ratings import (
    BradleyTerry,
    Match,
    Matches,
    Rating,
    WinRate,
    bradley_terry,
    matches,
    win_rates,
)
from .report import Report, build_report, report_from_rows
from .thresholds import CatchRate, Scored, audit_threshold, catch_rate, caught, tpr_at_fpr

__all__ = [
    "AUROC", "Accuracy", "Agreement", "BradleyTerry", "Calibration", "CalibrationBin",
    "CatchRate", "Comparison", "DEFAULT_BUDGETS", "Detection", "DetectionSummary", "Detector",
    "DetectorRecords", "Estimate", "FlagMetrics", "Frozen", "GoldPosition", "Match", "Matches",
    "PairedDifference", "PositionBias", "Rating", "Reliability", "Report", "Safety", "Scored",
    "SelectivePoint", "Usefulness", "VariantPair", "WinRate", "accuracy", "accuracy_interval",
    "agreement", "answered", "assignment_label", "audit_threshold", "auroc", "bootstrap_ci",
    "bradley_terry", "build_report", "by_label", "calibration", "catch_rate", "caught",
    "cluster_key", "compare_rows", "decision_score", "decisions_frame", "detection_results",
    "detection_summary", "detector_records", "ece_of", "episode_records", "episodes_frame",
    "flag_metrics", "matches", "mcnemar_exact", "paired_difference", "position_bias",
    "report_from_rows", "row_state", "safety_deployment", "safety_from_rates",
    "safety_per_attempt", "selective_accuracy", "sign_flip_test", "summarise", "to_dataframe",
    "tpr_at_fpr", "usefulness", "win_rates",
]
