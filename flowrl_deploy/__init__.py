"""flowrl-deploy: FlowRL policies from training to a robot's control loop.

The core package holds what every stage shares and never imports torch: the policy spec,
the checkpoint format, env-id parsing and the ONNX policy contract. The stages install as
``flowrl_deploy.train``, ``flowrl_deploy.export`` and ``flowrl_deploy.serve``.
"""

try:  # the one version: setuptools-scm writes it from git when the package is built or installed
    from flowrl_deploy._version import __version__ as __version__
except ImportError:  # a source tree that was never built or installed
    __version__ = "0+unknown"
