"""flowrl-deploy: FlowRL policies from training to a robot's control loop.

The core package holds what every stage shares and never imports torch: the policy spec,
the checkpoint format, env-id parsing and the ONNX policy contract. The stages install as
``flowrl_deploy.train``, ``flowrl_deploy.export`` and ``flowrl_deploy.serve``.
"""

__version__ = "0.1.0"
