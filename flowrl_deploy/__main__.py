"""``python -m flowrl_deploy`` runs the ``flowrl`` command, as the installed script does (a wrapper that
calls ``[sys.executable, "-m", "flowrl_deploy", ...]`` needs no ``flowrl`` on PATH)."""

import sys

from flowrl_deploy._main import main

sys.exit(main())
