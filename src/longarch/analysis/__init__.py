"""Analysis of a study's results store: statistics, figures and the report.

This layer reads `results.sqlite` only; it never trains or evaluates, so a report can be
rebuilt from the store alone (`longarch report <out>`).

The package imports nothing on its own: `longarch.config` reads `analysis.settings` (the one
definition of the analysis settings), and that must not pull in the report, its figures and
its statistics. `build_report` and `summary_table` are loaded when first used.
"""

__all__ = ["build_report", "summary_table"]


def __getattr__(name: str):
    if name in __all__:
        from . import report

        return getattr(report, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
