"""``python -m clbench.cli`` is the ``clbench`` command."""

from clbench.cli import main

main()
