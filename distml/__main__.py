"""``python -m distml`` runs the command line."""
from distml.cli import run

run()
