"""A resume reads a saved replay buffer into the run's buffer a block at a time (longrun review, MEDIUM #2):
loading the whole file first, then copying it, peaked at twice the buffer (3.9 GiB for dmc:dog-run's
1.8 GiB), so a job sized for a fresh run was killed for memory at its first resume."""

import json
import struct
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from safetensors.numpy import save_file

from flowrl_deploy import checkpoint as ckpt
from flowrl_deploy.errors import CheckpointError
from flowrl_deploy.spec import PolicySpec
from flowrl_deploy.train.replay import FIELDS, ReplayBuffer

OBS, ACT = 200, 20
SPEC = PolicySpec(obs_dim=OBS, act_dim=ACT, action_low=(-1.0,) * ACT, action_high=(1.0,) * ACT, hidden=4)


def saved(tmp_path, replay: dict[str, np.ndarray], state: dict) -> ckpt.Checkpoint:
    """A checkpoint holding ``replay``, loaded with its training state as a resume loads it."""
    return ckpt.load_checkpoint(save(tmp_path, replay, state), training_state=True)


def save(tmp_path, replay: dict[str, np.ndarray], state: dict):
    return ckpt.save_checkpoint(
        tmp_path / "c",
        spec=SPEC,
        actor={"w": np.zeros(3, np.float32)},
        counters={},
        training_tensors={"critic.w": np.zeros(3, np.float32)},
        training_json={"replay": state},
        replay=replay,
    )


def full_buffer(capacity: int) -> ReplayBuffer:
    buffer = ReplayBuffer(OBS, ACT, capacity)
    rows = np.arange(capacity, dtype=np.float32)
    for i, name in enumerate(FIELDS):
        array = getattr(buffer, name)
        array[:] = (rows + i).reshape(-1, *[1] * (array.ndim - 1))
    buffer.size, buffer.pos = capacity, 17
    return buffer


def test_a_saved_replay_is_read_into_the_buffer_a_block_at_a_time(tmp_path):
    """A 161 MiB buffer: restoring it allocates one block (16 MiB of its obs), not the whole file again."""
    capacity = 100_000
    source = full_buffer(capacity)
    arrays, state = source.state_dict()
    path = save(tmp_path, arrays, state)
    del arrays
    restored = ReplayBuffer(OBS, ACT, capacity)  # the run's buffer, allocated before the restore
    buffer_bytes = ReplayBuffer.bytes_needed(OBS, ACT, capacity)
    tracemalloc.start()
    try:  # what restore_training does
        checkpoint = ckpt.load_checkpoint(path, training_state=True)
        restored.load_state_dict(checkpoint.replay, checkpoint.training_json["replay"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 48 * 2**20 < buffer_bytes / 3, (
        f"restoring a {buffer_bytes / 2**20:.0f} MiB buffer took {peak / 2**20:.0f} MiB more"
    )
    assert (restored.size, restored.pos) == (capacity, 17)
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(restored, name), getattr(source, name), err_msg=name)


def test_saved_rows_of_another_shape_are_refused_before_anything_is_copied(tmp_path):
    """Copying the whole field raised numpy's broadcast error (or broadcast a (n, 1) obs into every column);
    a block at a time, the rows' shape is checked from the header first, and the buffer is left as it was."""
    arrays, state = full_buffer(50).state_dict()
    arrays = {**arrays, "next_obs": arrays["next_obs"][:, :1]}
    restored = ReplayBuffer(OBS, ACT, 50)
    with pytest.raises(
        CheckpointError, match=r"^saved replay buffer's next_obs has rows of shape \(1,\), this run's \(200,\)$"
    ):
        restored.load_state_dict(saved(tmp_path, arrays, state).replay, state)
    assert restored.size == 0 and not restored.obs.any()


def _bfloat16_mask(tmp_path):
    """A checkpoint whose saved replay is one bfloat16 field, ``mask``, of 4 ones."""
    arrays, state = full_buffer(4).state_dict()
    checkpoint = saved(tmp_path, arrays, state)
    path = checkpoint.path / ckpt.REPLAY_FILE
    header = json.dumps({"mask": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}}).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes.fromhex("803f") * 4)
    return checkpoint.path, path


def test_a_saved_replay_in_a_dtype_numpy_lacks_is_a_checkpoint_error_not_a_type_error(tmp_path):
    """A bfloat16 field: safetensors' numpy reader raises TypeError, which loading the whole file let through
    as a traceback; read when restored, it is refused naming the file. numpy lacks bfloat16 until ml_dtypes
    (which onnx imports) registers it, so this runs in a fresh interpreter that imports neither."""
    folder, path = _bfloat16_mask(tmp_path)
    script = (
        "import sys\nfrom flowrl_deploy import checkpoint as ckpt\nfrom flowrl_deploy.errors import CheckpointError\n"
        "assert 'ml_dtypes' not in sys.modules\n"
        f"try:\n    ckpt.load_checkpoint({str(folder)!r}, training_state=True).replay['mask']\n"
        "except CheckpointError as exc:\n    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{path} is corrupt or not a safetensors file (data type 'bfloat16'"), done.stdout


def test_a_saved_replay_in_bfloat16_is_converted_where_ml_dtypes_gives_numpy_the_type(tmp_path):
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes (an onnx dependency) gives numpy bfloat16")
    assert ml_dtypes.bfloat16
    folder, _ = _bfloat16_mask(tmp_path)
    mask = np.zeros(4, np.float32)
    ckpt.load_checkpoint(folder, training_state=True).replay.copy_into("mask", mask)
    np.testing.assert_array_equal(mask, np.ones(4, np.float32))


def test_a_saved_replay_read_from_its_file_is_converted_and_refused_as_before(tmp_path):
    """A guard, not a fix: read from the checkpoint's file a block at a time rather than from a dict, a field of
    another dtype is still converted to the buffer's, and a field missing or a buffer of another size is still
    refused with the same messages."""
    arrays, state = full_buffer(50).state_dict()
    restored = ReplayBuffer(OBS, ACT, 50)
    restored.load_state_dict(saved(tmp_path, {**arrays, "obs": arrays["obs"].astype(np.float64)}, state).replay, state)
    assert restored.obs.dtype == np.float32
    np.testing.assert_array_equal(restored.obs, arrays["obs"])
    checkpoint = saved(tmp_path, {k: v for k, v in arrays.items() if k not in ("reward", "mask")}, state)
    with pytest.raises(CheckpointError, match=r"^saved replay buffer lacks reward, mask$"):
        ReplayBuffer(OBS, ACT, 50).load_state_dict(checkpoint.replay, state)
    checkpoint = saved(tmp_path, arrays, state)
    with pytest.raises(CheckpointError, match=r"resume with the run's own --buffer-size$"):
        ReplayBuffer(OBS, ACT, 64).load_state_dict(checkpoint.replay, state)
    short = {**arrays, "reward": arrays["reward"][:49]}
    with pytest.raises(CheckpointError, match=r"^saved replay buffer \(capacity 50, 50 transitions\) does not fit"):
        ReplayBuffer(OBS, ACT, 50).load_state_dict(saved(tmp_path, short, state).replay, state)


def test_a_saved_replay_replaced_or_removed_while_it_is_read_is_refused_not_mixed(tmp_path):
    """Read a block at a time, a file that another process replaced between two blocks would mix two buffers."""
    arrays, state = full_buffer(8).state_dict()
    checkpoint = saved(tmp_path, arrays, state)
    path = checkpoint.path / ckpt.REPLAY_FILE
    replay = checkpoint.replay
    np.testing.assert_array_equal(replay["obs"], arrays["obs"])  # read once: the file it holds to
    other, _ = full_buffer(8).state_dict()
    replacement = tmp_path / "other.safetensors"
    save_file({name: np.ascontiguousarray(other[name] + 1) for name in other}, str(replacement))
    replacement.replace(path)
    with pytest.raises(CheckpointError, match=rf"^{path} changed while it was read \(another process"):
        replay["obs"]
    path.unlink()
    with pytest.raises(CheckpointError, match=rf"^{path} was removed while it was read$"):
        replay.copy_into("obs", np.zeros_like(arrays["obs"]))


def test_a_saved_replay_replaced_just_before_a_block_is_read_is_refused(tmp_path, monkeypatch):
    """The file checked, then replaced before safetensors opens it: the block came from the other file."""
    save_file({"obs": np.zeros((4, 3), np.float32)}, str(path := tmp_path / "replay.safetensors"))
    save_file({"obs": np.ones((4, 3), np.float32)}, str(other := tmp_path / "other.safetensors"))
    tensors, opened = ckpt.SavedTensors(path), ckpt.safe_open

    def replaced_first(name, framework):
        if other.exists():
            other.replace(path)
        return opened(name, framework=framework)

    monkeypatch.setattr(ckpt, "safe_open", replaced_first)
    with pytest.raises(CheckpointError, match=rf"^{path} changed while it was read"):
        tensors.copy_into("obs", np.zeros((4, 3), np.float32))
