"""Report: class imbalance and per-class results as JSON, Markdown and HTML with plots."""
from vidfeat.reporting._report import ReportResult, report

__all__ = ["ReportResult", "report"]
