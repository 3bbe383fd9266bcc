"""presel.importance: Step 1 of PreSel (task importance from a small reference set).

* :mod:`presel.importance.reference`: ``reference_to_dir(pool, out, fraction=, seed=)``, ``sample_reference``
* :mod:`presel.importance.scoring`: ``ScoreConfig``, ``score_to_dir(data, out, config)``, ``Scorer``
* :mod:`presel.importance.weights`: ``compute_weights(irs, tau=None)``, ``write_weights(path, w)``
"""
