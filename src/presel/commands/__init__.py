"""CLI subcommands. Each module defines ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.

Modules must import heavy dependencies inside ``run`` so ``presel --help`` stays fast.
"""
