"""``python -m flowrl_deploy.cli`` runs the ``flowrl`` command (used to start child servers)."""

from flowrl_deploy.cli import app

app()
