"""``python -m flowrl_deploy.cli`` runs the ``flowrl`` command (used to start child servers)."""

from flowrl_deploy._main import reserve_standard_streams

# Python has run flowrl_deploy/cli/__init__.py by now (its imports opened and closed files only): the
# streams are reserved before any command opens one it keeps (`flowrl` itself reserves them first of all)
reserve_standard_streams()

from flowrl_deploy.cli import app  # noqa: E402

app()
