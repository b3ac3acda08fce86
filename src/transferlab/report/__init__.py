"""Comparison report over MLflow runs: HTML, Markdown and CSV (no TensorFlow import).

    from transferlab.report import write_report
    paths = write_report("sqlite:///mlflow.db", "reports/x", sweep_id="...")
"""

from transferlab.report.build import log_report_artifacts, write_report
from transferlab.report.collect import ReportError

__all__ = ["write_report", "log_report_artifacts", "ReportError"]
