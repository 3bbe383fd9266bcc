"""``presel map``: an offline, interactive map of a run's pool (2-D projection, clusters, picks, lasso export).

:mod:`presel.map.project` computes and caches the projection, :mod:`presel.map.points` gathers what the stages
said about each image, :mod:`presel.map.page` writes the page (``RUN/map/index.html`` + ``assets/``).
"""

from presel.map.page import build_map
from presel.map.project import MapConfig, project

__all__ = ["MapConfig", "build_map", "project"]
