"""Analysis of a study's results store: statistics, figures and the report.

This layer reads `results.sqlite` only; it never trains or evaluates, so a report can be
rebuilt from the store alone (`longarch report <out>`).
"""

from .report import build_report, summary_table
from .stats import bootstrap_ci

__all__ = ["bootstrap_ci", "build_report", "summary_table"]
