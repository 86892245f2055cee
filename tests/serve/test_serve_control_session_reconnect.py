"""ControlSession across the end of its stream: an ended stream is closed, whatever its status, and a
reopened stream restarts the local fallback's noise where the server restarts its own."""

from __future__ import annotations

import sys
import threading
import time
import traceback
from concurrent import futures

import grpc
import pytest

from flowrl_deploy.client import PolicyClient, ServiceError
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb
from flowrl_deploy.proto.flowrl.v1 import policy_pb2_grpc as pb_grpc

OBS = [0.3, -0.2, 0.1]


def _request_consumers() -> int:
    """How many of gRPC's threads that feed a stream-request call from its request iterator run now
    (named ``Thread-N (_run)``: found by the function they run)."""
    frames = sys._current_frames()
    return sum(
        any(frame.name == "consume_request_iterator" for frame in traceback.extract_stack(frames[thread.ident]))
        for thread in threading.enumerate()
        if thread.ident in frames
    )


class _RefusingServer(pb_grpc.PolicyServiceServicer):
    """The served spec, and StreamAct streams that read their first request and then end with
    PERMISSION_DENIED: the client's gRPC thread feeding the call has sent that request, and waits for
    the next one, when the status comes."""

    def __init__(self, spec: pb.GetSpecReply) -> None:
        self.spec = spec

    def GetSpec(self, request, context):
        return self.spec

    def StreamAct(self, request_iterator, context):
        next(request_iterator)
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "not for you")
        yield  # a generator, as a stream-reply handler is


def test_a_stream_ended_by_a_non_transient_status_is_closed_so_no_grpc_thread_is_left_waiting(server):
    """A stream ending with a status a control loop cannot ride out (here PERMISSION_DENIED) raised its
    ServiceError without closing the stream: gRPC's thread feeding the call waited on its request queue
    for good, one thread leaked per failure for a loop that catches the error and ticks on."""
    with grpc.insecure_channel(server.address) as channel:
        spec = pb_grpc.PolicyServiceStub(channel).GetSpec(pb.GetSpecRequest(), timeout=5)
    refusing = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_PolicyServiceServicer_to_server(_RefusingServer(spec), refusing)
    port = refusing.add_insecure_port("127.0.0.1:0")
    refusing.start()
    try:
        with PolicyClient(f"127.0.0.1:{port}") as client:
            before = _request_consumers()
            with client.session(period_s=0.5, seed=1, backoff_s=(1e-3, 1e-3)) as control:
                for _ in range(5):
                    with pytest.raises(ServiceError) as info:
                        control.act(OBS)
                    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
                    time.sleep(2e-3)  # the backoff: the next tick opens a new stream
                until = time.monotonic() + 5
                while _request_consumers() > before and time.monotonic() < until:
                    time.sleep(0.01)
                assert _request_consumers() == before  # checked before close(), which ends the live stream's
    finally:
        refusing.stop(grace=0)
