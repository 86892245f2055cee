"""The client library's warnings reach a command's user as `warning: …` lines, never as bare log lines."""

from __future__ import annotations

import io
import logging

from flowrl_deploy.cli._common import client_warnings
from flowrl_deploy.session import PERIOD_MISMATCH, log


def test_client_warnings_are_command_warnings_within_the_block_only(capsys):
    propagate = log.propagate
    with client_warnings(skip=(PERIOD_MISMATCH,)):
        log.warning("the local fallback %s runs other weights", "other.onnx")
        log.warning(PERIOD_MISMATCH, 0.01, 100, 0.02, 50)  # the command said it already, naming --hz
        log.info("not a warning")
    assert capsys.readouterr().err == "warning: the local fallback other.onnx runs other weights\n"
    assert log.propagate is propagate
    assert not [h for h in log.handlers if not isinstance(h, logging.NullHandler)]


def test_without_skip_every_warning_is_shown(capsys):
    with client_warnings():
        log.warning(PERIOD_MISMATCH, 0.01, 100, 0.02, 50)
    err = capsys.readouterr().err
    assert err.startswith("warning: period_s 0.01 s (100 Hz) differs from the served policy's control period")


def test_a_warning_shown_by_the_command_does_not_also_reach_root_handlers(capsys):
    stream = io.StringIO()
    root_handler = logging.StreamHandler(stream)
    logging.getLogger().addHandler(root_handler)
    try:
        with client_warnings():
            log.warning("the local fallback %s runs other weights", "other.onnx")
    finally:
        logging.getLogger().removeHandler(root_handler)
    assert capsys.readouterr().err == "warning: the local fallback other.onnx runs other weights\n"
    assert stream.getvalue() == ""
