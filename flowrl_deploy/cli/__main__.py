"""``python -m flowrl_deploy.cli`` runs the ``flowrl`` command (used to start child servers)."""

from flowrl_deploy._main import reserve_standard_streams

reserve_standard_streams()

from flowrl_deploy.cli import app  # noqa: E402

app()
