"""``report.html``: the data it shows (:mod:`.data`), its charts (:mod:`.charts`) and the page
(:mod:`.page`). The statistics it reads are computed by :mod:`preproc.observe.stats`."""

from preproc.observe.report.data import report_data
from preproc.observe.report.page import render_report, write_report

__all__ = ["render_report", "report_data", "write_report"]
