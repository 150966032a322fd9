# PYTHON_ARGCOMPLETE_OK
"""``python -m aiodurabledict``: the same command line as the ``aiodurabledict`` script."""

from .cli import main

raise SystemExit(main())
