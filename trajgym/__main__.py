"""``python -m trajgym`` runs the command line."""

from trajgym.cli import main

main()
