"""The gRPC action service: an exported policy behind ``flowrl.v1.PolicyService`` (no torch)."""

from flowrl_deploy.serve.config import ServeConfig
from flowrl_deploy.serve.server import PolicyServer, serve_forever

__all__ = ["PolicyServer", "ServeConfig", "serve_forever"]
