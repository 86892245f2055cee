"""The gRPC action service: an exported policy behind ``flowrl.v1.PolicyService`` (no torch)."""

from flowrl_deploy.serve.config import ServeConfig
from flowrl_deploy.serve.process import ServerProcess
from flowrl_deploy.serve.server import PolicyServer, serve_forever

__all__ = ["PolicyServer", "ServeConfig", "ServerProcess", "serve_forever"]
