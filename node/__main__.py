"""``python -m node``: the ``rota`` command (what ``rota dev`` uses to start agents)."""

from node.cli import main

main()
