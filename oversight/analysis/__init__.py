"""Analysis: pure functions from store rows to metrics (read only; no protocol knowledge)."""

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
from .metrics import (
    Estimate,
    accuracy,
    assignment_label,
    bootstrap_ci,
    by_label,
    summarise,
    to_dataframe,
)
from .report import Report, build_report, report_from_rows
from .thresholds import CatchRate, Scored, audit_threshold, catch_rate, caught, tpr_at_fpr

__all__ = ["AUROC", "DEFAULT_BUDGETS", "CatchRate", "Detection", "DetectionSummary", "Detector",
           "DetectorRecords", "Report", "build_report", "decision_score", "detection_results",
           "detector_records", "report_from_rows", "Estimate", "FlagMetrics", "Safety", "Scored",
           "Usefulness", "accuracy", "assignment_label", "audit_threshold", "auroc",
           "bootstrap_ci", "by_label", "catch_rate", "caught", "detection_summary",
           "flag_metrics", "safety_deployment", "safety_from_rates", "safety_per_attempt",
           "summarise", "to_dataframe", "tpr_at_fpr", "usefulness"]
