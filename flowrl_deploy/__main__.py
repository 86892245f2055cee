"""``python -m flowrl_deploy`` runs the ``flowrl`` command, as the installed script does (a wrapper that
calls ``[sys.executable, "-m", "flowrl_deploy", ...]`` needs no ``flowrl`` on PATH)."""

import sys

from flowrl_deploy._main import main

if __name__ == "__main__":  # not on an import (pydoc, multiprocessing's spawn re-importing the main module)
    sys.exit(main())
