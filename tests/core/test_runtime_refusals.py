"""OnnxPolicy refuses, in one line, a stochastic graph asked to act without noise and a graph whose
tensors are not the ones its contract promises (a hand-edited file)."""

import re

import numpy as np
import onnx
import pytest
from onnx import helper
from tiny_policy import OBS_DIM, tiny_contract, write_policy

from flowrl_deploy.contract import contract_to_metadata
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.export.inspect import inspect_policy
from flowrl_deploy.policy import OnnxPolicy

CPU = ["CPUExecutionProvider"]


def test_a_stochastic_policy_without_noise_says_to_pass_it(tmp_path):
    policy = OnnxPolicy(write_policy(tmp_path / "p.onnx"), providers=CPU)
    with pytest.raises(FlowRLError, match=r"^this policy graph takes a noise input; pass noise \[B, act_dim\]$"):
        policy.act(np.zeros(OBS_DIM, np.float32))


def test_a_graph_other_than_its_contract_promises_is_refused(tmp_path):
    """A stochastic graph (obs, noise) stamped with a deterministic contract (obs only)."""
    model = onnx.load(write_policy(tmp_path / "p.onnx"))
    del model.metadata_props[:]
    helper.set_model_props(model, contract_to_metadata(tiny_contract(deterministic=True), {"source": "test"}))
    path = tmp_path / "edited.onnx"
    onnx.save(model, path)
    message = (
        f"{path}: its graph has inputs ['obs', 'noise'] and output 'action', "
        "but its contract promises ['obs'] and 'action'"
    )
    with pytest.raises(FlowRLError, match=f"^{re.escape(message)}$"):
        OnnxPolicy(path, providers=CPU)
    with pytest.raises(FlowRLError, match=f"^{re.escape(message)}$"):  # inspect reads the graph without onnxruntime
        inspect_policy(path)
