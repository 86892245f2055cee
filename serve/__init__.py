"""The gRPC action service: an exported policy behind ``flowrl.v1.PolicyService`` (no torch)."""

from flowrl_deploy.serve.config import ServeConfig
from flowrl_deploy.serve.process import ServerProcess
from flowrl_deploy.serve.run import serve_forever
from flowrl_deploy.serve.server import PolicyServer

__all__ = ["PolicyServer", "ServeConfig", "ServerProcess", "serve_forever"]
