import warnings

import numpy as np
import pytest

from flowrl_deploy.codec import TensorError, as_batch, as_float32, decode, encode, policy_batch
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb


def test_round_trip_is_exact_little_endian_float32():
    array = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    tensor = encode(array)
    assert tensor.data == array.astype("<f4").tobytes()
    assert list(tensor.shape) == [2, 3]
    np.testing.assert_array_equal(decode(tensor), array)


def test_repeated_values_are_accepted():
    tensor = pb.Tensor(shape=[2], values=[1.5, -2.0])
    np.testing.assert_array_equal(decode(tensor), np.array([1.5, -2.0], np.float32))


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=[1], data=b"\0" * 8), "DTYPE_FLOAT64"),
        (pb.Tensor(dtype=7, shape=[1], data=b"\0" * 4), r"dtype 7 \(no DType value\) is not accepted"),
        (pb.Tensor(shape=[2, 2], data=b"\0" * 12), "12 bytes"),
        (pb.Tensor(data=b"\0" * 4), "missing shape"),
        (pb.Tensor(shape=[0, 3]), "empty"),
        (pb.Tensor(shape=[3], values=[1.0, 2.0]), "2 values"),
        (pb.Tensor(shape=[2], values=[1.0, float("nan")]), "NaN"),
        (pb.Tensor(shape=[1], values=[float("inf")]), "NaN, infinite or beyond-float32 values"),
        (pb.Tensor(shape=[1], values=[1.0], data=b"\0" * 4), "not both"),
        (pb.Tensor(shape=[-1], data=b""), "negative"),
    ],
)
def test_malformed_tensors_name_the_mistake(tensor, message):
    with pytest.raises(TensorError, match=message):
        decode(tensor, name="obs")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.array(["a"] * 3), r"obs: dtype <U1 is not accepted \(text\)"),
        (["1", "2"], "dtype <U1 is not accepted"),  # numeric text is not converted either
        ({"a": 1}, "dtype object is not accepted"),
        (np.array([None] * 3), "dtype object is not accepted"),  # was NaN on the wire
        ([[1, 2], [3]], "obs: not a rectangular array of numbers"),
        (np.array([1 + 2j]), "dtype complex128 is not accepted; float32 has no imaginary part"),  # was dropped
        (np.array([True, False]), r"dtype bool is not accepted; pass float or integer numbers \(x.astype"),
        (np.array([1], "datetime64[s]"), r"dtype datetime64\[s\] is not accepted \(dates\)"),
        (np.array([1], "timedelta64[s]"), r"dtype timedelta64\[s\] is not accepted \(time spans\)"),
        (np.zeros(2, [("x", "<f4")]), r"is not accepted \(structured records\)"),
    ],
)
def test_encode_refuses_what_is_not_real_numbers(value, message):
    with pytest.raises(TensorError, match=message):
        encode(value, name="obs")


def test_a_value_beyond_float32_is_cast_to_inf_silently_and_named_by_check_finite():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "overflow encountered in cast" was printed on every call
        assert np.isinf(as_float32(np.array([0.0, 1e39]))).tolist() == [False, True]
        with pytest.raises(TensorError, match=r"^obs: holds NaN, infinite or beyond-float32 values$"):
            decode(encode(np.array([0.0, 1e39])), name="obs")  # the server's words for what the client cast
        with pytest.raises(TensorError, match=r"^obs: holds NaN, infinite or beyond-float32 values$"):
            policy_batch(np.array([0.0, -1e39, 0.0]), 3, name="obs")


def test_encode_converts_integers_and_any_float_layout_exactly():
    ints = np.arange(-3, 3).reshape(2, 3)
    for value in (ints, ints.astype(np.int8), np.arange(6, dtype=np.uint16), ints.tolist(), ints.astype(">f8"), ints.T):
        np.testing.assert_array_equal(decode(encode(value)), np.asarray(value, np.float32))


def test_as_batch_shapes():
    assert as_batch(np.zeros(3, np.float32), 3).shape == (1, 3)
    assert as_batch(np.zeros((4, 3), np.float32), 3).shape == (4, 3)
    with pytest.raises(TensorError, match=r"\[2, 4\] does not match \[3\]"):
        as_batch(np.zeros((2, 4), np.float32), 3)
    with pytest.raises(TensorError, match="exceeds the limit of 2"):
        as_batch(np.zeros((3, 3), np.float32), 3, max_batch=2)
    with pytest.raises(TensorError, match=r"empty batch \(shape \[0, 3\]\)"):
        as_batch(np.zeros((0, 3), np.float32), 3)


def test_as_batch_takes_up_to_exactly_max_batch_rows():
    assert as_batch(np.zeros((2, 3), np.float32), 3, max_batch=2).shape == (2, 3)
    with pytest.raises(TensorError, match="batch of 3 exceeds the limit of 2"):
        as_batch(np.zeros((3, 3), np.float32), 3, max_batch=2)
