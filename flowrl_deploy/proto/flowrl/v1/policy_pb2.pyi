from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT64: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT64: DType
DTYPE_FLOAT16: DType

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data", "values")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class Status(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class GetSpecRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetSpecReply(_message.Message):
    __slots__ = ("obs_dim", "act_dim", "obs_names", "action_names", "action_low", "action_high", "flow_steps", "solver", "takes_noise", "control_period_s", "env_id", "model_version", "contract_hash", "contract_json", "max_batch", "server_version")
    OBS_DIM_FIELD_NUMBER: _ClassVar[int]
    ACT_DIM_FIELD_NUMBER: _ClassVar[int]
    OBS_NAMES_FIELD_NUMBER: _ClassVar[int]
    ACTION_NAMES_FIELD_NUMBER: _ClassVar[int]
    ACTION_LOW_FIELD_NUMBER: _ClassVar[int]
    ACTION_HIGH_FIELD_NUMBER: _ClassVar[int]
    FLOW_STEPS_FIELD_NUMBER: _ClassVar[int]
    SOLVER_FIELD_NUMBER: _ClassVar[int]
    TAKES_NOISE_FIELD_NUMBER: _ClassVar[int]
    CONTROL_PERIOD_S_FIELD_NUMBER: _ClassVar[int]
    ENV_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_HASH_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_JSON_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    obs_dim: int
    act_dim: int
    obs_names: _containers.RepeatedScalarFieldContainer[str]
    action_names: _containers.RepeatedScalarFieldContainer[str]
    action_low: _containers.RepeatedScalarFieldContainer[float]
    action_high: _containers.RepeatedScalarFieldContainer[float]
    flow_steps: int
    solver: str
    takes_noise: bool
    control_period_s: float
    env_id: str
    model_version: str
    contract_hash: str
    contract_json: str
    max_batch: int
    server_version: str
    def __init__(self, obs_dim: _Optional[int] = ..., act_dim: _Optional[int] = ..., obs_names: _Optional[_Iterable[str]] = ..., action_names: _Optional[_Iterable[str]] = ..., action_low: _Optional[_Iterable[float]] = ..., action_high: _Optional[_Iterable[float]] = ..., flow_steps: _Optional[int] = ..., solver: _Optional[str] = ..., takes_noise: _Optional[bool] = ..., control_period_s: _Optional[float] = ..., env_id: _Optional[str] = ..., model_version: _Optional[str] = ..., contract_hash: _Optional[str] = ..., contract_json: _Optional[str] = ..., max_batch: _Optional[int] = ..., server_version: _Optional[str] = ...) -> None: ...

class ActRequest(_message.Message):
    __slots__ = ("obs", "session_id", "seed", "contract_hash")
    OBS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_HASH_FIELD_NUMBER: _ClassVar[int]
    obs: Tensor
    session_id: str
    seed: int
    contract_hash: str
    def __init__(self, obs: _Optional[_Union[Tensor, _Mapping]] = ..., session_id: _Optional[str] = ..., seed: _Optional[int] = ..., contract_hash: _Optional[str] = ...) -> None: ...

class ActReply(_message.Message):
    __slots__ = ("action", "model_version", "inference_us", "server_recv_unix_ns", "server_send_unix_ns")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_US_FIELD_NUMBER: _ClassVar[int]
    SERVER_RECV_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    SERVER_SEND_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    action: Tensor
    model_version: str
    inference_us: int
    server_recv_unix_ns: int
    server_send_unix_ns: int
    def __init__(self, action: _Optional[_Union[Tensor, _Mapping]] = ..., model_version: _Optional[str] = ..., inference_us: _Optional[int] = ..., server_recv_unix_ns: _Optional[int] = ..., server_send_unix_ns: _Optional[int] = ...) -> None: ...

class StreamActRequest(_message.Message):
    __slots__ = ("session_id", "seq", "obs", "client_send_unix_ns", "timeout_us", "seed", "contract_hash", "contract_json")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    OBS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_SEND_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_US_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_HASH_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_JSON_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    seq: int
    obs: Tensor
    client_send_unix_ns: int
    timeout_us: int
    seed: int
    contract_hash: str
    contract_json: str
    def __init__(self, session_id: _Optional[str] = ..., seq: _Optional[int] = ..., obs: _Optional[_Union[Tensor, _Mapping]] = ..., client_send_unix_ns: _Optional[int] = ..., timeout_us: _Optional[int] = ..., seed: _Optional[int] = ..., contract_hash: _Optional[str] = ..., contract_json: _Optional[str] = ...) -> None: ...

class StreamActReply(_message.Message):
    __slots__ = ("seq", "status", "action", "model_version", "inference_us", "client_send_unix_ns", "server_recv_unix_ns", "server_send_unix_ns")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_US_FIELD_NUMBER: _ClassVar[int]
    CLIENT_SEND_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    SERVER_RECV_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    SERVER_SEND_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    status: Status
    action: Tensor
    model_version: str
    inference_us: int
    client_send_unix_ns: int
    server_recv_unix_ns: int
    server_send_unix_ns: int
    def __init__(self, seq: _Optional[int] = ..., status: _Optional[_Union[Status, _Mapping]] = ..., action: _Optional[_Union[Tensor, _Mapping]] = ..., model_version: _Optional[str] = ..., inference_us: _Optional[int] = ..., client_send_unix_ns: _Optional[int] = ..., server_recv_unix_ns: _Optional[int] = ..., server_send_unix_ns: _Optional[int] = ...) -> None: ...

class ResetRequest(_message.Message):
    __slots__ = ("session_id", "seed", "contract_hash", "contract_json")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_HASH_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_JSON_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    seed: int
    contract_hash: str
    contract_json: str
    def __init__(self, session_id: _Optional[str] = ..., seed: _Optional[int] = ..., contract_hash: _Optional[str] = ..., contract_json: _Optional[str] = ...) -> None: ...

class ResetReply(_message.Message):
    __slots__ = ("model_version",)
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    def __init__(self, model_version: _Optional[str] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MethodStats(_message.Message):
    __slots__ = ("method", "requests", "errors", "p50_us", "p99_us", "timed_calls", "codes")
    class CodesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    METHOD_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    P50_US_FIELD_NUMBER: _ClassVar[int]
    P99_US_FIELD_NUMBER: _ClassVar[int]
    TIMED_CALLS_FIELD_NUMBER: _ClassVar[int]
    CODES_FIELD_NUMBER: _ClassVar[int]
    method: str
    requests: int
    errors: int
    p50_us: float
    p99_us: float
    timed_calls: int
    codes: _containers.ScalarMap[str, int]
    def __init__(self, method: _Optional[str] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., p50_us: _Optional[float] = ..., p99_us: _Optional[float] = ..., timed_calls: _Optional[int] = ..., codes: _Optional[_Mapping[str, int]] = ...) -> None: ...

class LimitStats(_message.Message):
    __slots__ = ("limit", "in_use", "most", "refused")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    IN_USE_FIELD_NUMBER: _ClassVar[int]
    MOST_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    limit: str
    in_use: int
    most: int
    refused: int
    def __init__(self, limit: _Optional[str] = ..., in_use: _Optional[int] = ..., most: _Optional[int] = ..., refused: _Optional[int] = ...) -> None: ...

class GetStatsReply(_message.Message):
    __slots__ = ("model_version", "uptime_s", "sessions", "methods", "batches", "mean_batch_size", "reloads", "reload_failures", "limits", "server_version", "percentile_window")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    MEAN_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    RELOADS_FIELD_NUMBER: _ClassVar[int]
    RELOAD_FAILURES_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    PERCENTILE_WINDOW_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    uptime_s: float
    sessions: int
    methods: _containers.RepeatedCompositeFieldContainer[MethodStats]
    batches: int
    mean_batch_size: float
    reloads: int
    reload_failures: int
    limits: _containers.RepeatedCompositeFieldContainer[LimitStats]
    server_version: str
    percentile_window: int
    def __init__(self, model_version: _Optional[str] = ..., uptime_s: _Optional[float] = ..., sessions: _Optional[int] = ..., methods: _Optional[_Iterable[_Union[MethodStats, _Mapping]]] = ..., batches: _Optional[int] = ..., mean_batch_size: _Optional[float] = ..., reloads: _Optional[int] = ..., reload_failures: _Optional[int] = ..., limits: _Optional[_Iterable[_Union[LimitStats, _Mapping]]] = ..., server_version: _Optional[str] = ..., percentile_window: _Optional[int] = ...) -> None: ...

class ReloadRequest(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class ReloadReply(_message.Message):
    __slots__ = ("model_version", "previous_version")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    previous_version: str
    def __init__(self, model_version: _Optional[str] = ..., previous_version: _Optional[str] = ...) -> None: ...
