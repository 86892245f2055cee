"""Export a FlowRL checkpoint's N-step sampler as one verified ONNX graph.

from flowrl_deploy.export import ExportConfig, export_checkpoint
report = export_checkpoint("runs/cheetah", "policy.onnx", ExportConfig(steps=10))
"""

from flowrl_deploy.export.config import ExportConfig
from flowrl_deploy.export.exporter import ExportReport, export_checkpoint, export_for_serving

__all__ = ["ExportConfig", "ExportReport", "export_checkpoint", "export_for_serving"]
