"""presel.demo: the offline demo pool (:func:`presel.demo.pool.build_demo_pool`) and its renderers."""
