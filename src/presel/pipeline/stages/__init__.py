"""One module per stage of ``presel run``; the order lives in :mod:`presel.pipeline.registry`."""
