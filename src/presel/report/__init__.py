"""presel.report: the self-contained HTML report of a run (:func:`presel.report.html.build_report`)."""
