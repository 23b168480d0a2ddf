"""The Green AI efficiency report: markdown tables and PNG figures built from the run log alone.

`write_report(paths, out_dir)` is the entry point; `tables` and `plots` build its sections and figures from
the DataFrame of `frame.load_report_frame()`.
"""

from greendistil.report.build import write_report

__all__ = ["write_report"]
