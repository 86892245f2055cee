"""Environments behind one tiny interface: dm_control suite tasks and any gymnasium id.

This module never imports torch: `flowrl control`, the client-side simulated robot, uses it too.

Every environment offers ``reset(seed) -> obs`` and ``step(action) -> (obs, reward, terminated,
truncated)``. ``terminated`` means the task ended (a fall in HumanoidBench): the bootstrap is
masked. ``truncated`` means only that the time limit was hit: the episode stops, but the value of
the last state still counts. dm_control episodes end only by their time limit. A reset or step from
which the simulation cannot go on (dm_control's PhysicsError, MuJoCo's warnings of an unstable state in a
gymnasium task, a NaN or infinite observation or reward) raises :class:`~flowrl_deploy.errors.SimulationError`:
the episode ends there, and the next call must be ``reset``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Protocol

import numpy as np

from flowrl_deploy.envid import ENV_ID_HELP, EnvId, did_you_mean, parse_env_id
from flowrl_deploy.errors import EnvIdError, FlowRLError, SimulationError, printable
from flowrl_deploy.extras import install_command

# dm_control's MUJOCO_GL values (dm_control/_render/constants.py; it compares them as written): those
# that render nothing, and the OpenGL library each backend loads.
_RENDER_FREE = ("off", "disable", "disabled", "false", "0")
_GL_LIBRARIES = {
    "glfw": "GLFW and a display",
    "egl": "libEGL (apt install libegl1)",
    "osmesa": "OSMesa and PyOpenGL (apt install libosmesa6; pip install PyOpenGL)",
}
_GLFW_NAMES = ("glfw", "on", "enable", "enabled", "true", "1", "")
_OWN_MESSAGES = ("dm_control", "mujoco", "humanoid_bench")  # not installed: each has its own message

# flowrl-deploy is not on PyPI either: every command runs from a clone of this repository (README, HumanoidBench).
HUMANOIDBENCH_INSTALL = (
    "HumanoidBench is optional and not on PyPI, and needs a venv of its own: from a clone of flowrl-deploy, "
    "`scripts/setup_humanoidbench.sh .venv-humanoidbench`, or in a new venv "
    "`pip install -e '.[train,export,humanoidbench]'` and then "
    "`pip install --no-deps -e <clone of github.com/carlosferrazza/humanoid-bench>` (see the README's HumanoidBench)"
)


FLOAT32_MAX = float(np.finfo(np.float32).max)
MUJOCO_INSTABILITY = ("mjWARN_BADQPOS", "mjWARN_BADQVEL", "mjWARN_BADQACC")
"""MuJoCo's warnings of a state it found NaN, infinite or huge, and reset (``mj_step``)."""


@dataclass(frozen=True)
class EnvInfo:
    """What a policy needs to know about an environment."""

    env_id: str
    obs_dim: int
    act_dim: int
    action_low: np.ndarray
    action_high: np.ndarray
    obs_layout: tuple[tuple[str, int], ...] = ()
    action_names: tuple[str, ...] = ()
    control_period_s: float = 0.0


class Env(Protocol):
    info: EnvInfo

    def reset(self, seed: int | None = None) -> np.ndarray: ...

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool]: ...

    def close(self) -> None: ...


@contextlib.contextmanager
def _root_logger_kept() -> Iterator[None]:
    """Undo what absl does to the root logger meanwhile: dm_control logs through absl, whose every message
    calls ``logging.basicConfig()`` while the root logger has no handler, and a caller's own
    ``basicConfig(level=..., format=...)`` afterwards would do nothing. The messages still show."""
    before = list(logging.root.handlers)
    try:
        yield
    finally:
        for handler in [h for h in logging.root.handlers if h not in before]:
            logging.root.removeHandler(handler)
            handler.close()


def _opengl_failure(exc: BaseException, library: str) -> FlowRLError | None:
    """The error to raise for ``exc``, raised while ``library`` (dm_control, MuJoCo) was imported or loaded
    a task, when the MUJOCO_GL the user set is why: a value it does not know, or an OpenGL backend whose
    library is missing (osmesa, egl on a headless robot). None when MUJOCO_GL renders nothing (another
    cause) or ``exc`` is a missing dm_control, MuJoCo or HumanoidBench (each has its own message)."""
    value = os.environ.get("MUJOCO_GL")
    if value is None or value in _RENDER_FREE:
        return None
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").partition(".")[0] in _OWN_MESSAGES:
        return None
    backend = "glfw" if value in _GLFW_NAMES else value
    if backend not in _GL_LIBRARIES:
        what = f"not a value it knows ({', '.join(_GL_LIBRARIES)}, or {_RENDER_FREE[1]} to render nothing)"
        install = ""
    else:
        first_line = (str(exc).strip().splitlines() or [""])[0]
        what = f"its {backend} OpenGL backend failed to load ({type(exc).__name__}: {first_line})"
        install = f", or install {_GL_LIBRARIES[backend]}"
    return FlowRLError(
        printable(
            f"{library} cannot start with MUJOCO_GL={value!r}: {what}. flowrl renders nothing: "
            f"unset MUJOCO_GL or set MUJOCO_GL=disable{install}",
            limit=600,
        )
    )


def _import_suite(what: str) -> ModuleType:
    """dm_control's suite, imported to make ``what`` (an env id, or 'its task list'), with MUJOCO_GL set to
    'disable' where the user left it unset: no OpenGL context is ever needed (see docs/train.md). A
    missing dm_control, or a MUJOCO_GL that stops it from loading, is a one-line :class:`FlowRLError`."""
    os.environ.setdefault("MUJOCO_GL", "disable")
    try:
        with _root_logger_kept():  # its import logs which OpenGL backend it chose
            from dm_control import suite
    except Exception as exc:
        if (error := _opengl_failure(exc, "dm_control")) is not None:
            raise error from exc
        if isinstance(exc, ModuleNotFoundError):  # dm_control, or the mujoco it runs on
            raise EnvIdError(
                f"{exc.name} is not installed, so {what} cannot be made: {install_command('train')}"
            ) from exc
        raise
    return suite


class _DeprecatedCompilerAttributes(logging.Filter):
    """Holds back MuJoCo's notes that a model uses a deprecated compiler attribute (cheetah's
    ``settotalmass``), which dm_control logs as absl warnings: the suite's own models, nothing a user
    can change. Every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            record.levelno == logging.WARNING
            and message.startswith("compiler attribute ")
            and "is deprecated" in message
        )


@contextlib.contextmanager
def _deprecated_compiler_attributes_held_back() -> Iterator[None]:
    absl = logging.getLogger("absl")
    note = _DeprecatedCompilerAttributes()
    absl.addFilter(note)
    try:
        yield
    finally:
        absl.removeFilter(note)


def dmc_task_ids() -> tuple[str, ...]:
    """dm_control's suite tasks as env ids (``dmc:cartpole-swingup``), or none where dm_control cannot be
    imported (the suggestion they serve is left out; making a dm_control task says why)."""
    try:
        suite = _import_suite("its task list")
    except Exception:
        return ()
    return tuple(f"dmc:{domain}-{task}" for domain, task in suite.ALL_TASKS)


class DMCEnv:
    """A dm_control suite task with observations flattened to float32.

    Observation blocks are concatenated in the order of the task's ``observation_spec()`` (a
    fixed, ordered mapping), recorded as ``info.obs_layout``. ``reset(seed)`` reseeds the task's
    randomness (initial states, targets), so an episode is a function of its seed.
    """

    def __init__(self, env_id: EnvId, seed: int) -> None:
        suite = _import_suite(str(env_id))
        if (env_id.domain, env_id.task) not in suite.ALL_TASKS:
            known = [f"dmc:{domain}-{task}" for domain, task in suite.ALL_TASKS]
            raise EnvIdError(
                f"dm_control has no task {env_id.domain}-{env_id.task}{did_you_mean(str(env_id), known)}; "
                f"{ENV_ID_HELP}. Domains: {', '.join(sorted({d for d, _ in suite.ALL_TASKS}))}"
            )
        with _root_logger_kept(), _deprecated_compiler_attributes_held_back():
            self._env = suite.load(env_id.domain, env_id.task, task_kwargs={"random": seed})
        self._physics_error: type[Exception] = importlib.import_module("dm_control.rl.control").PhysicsError
        spec = self._env.action_spec()
        layout = tuple((k, int(np.prod(v.shape))) for k, v in self._env.observation_spec().items())
        self.info = EnvInfo(
            env_id=str(env_id),
            obs_dim=sum(size for _, size in layout),
            act_dim=int(spec.shape[0]),
            action_low=np.asarray(spec.minimum, dtype=np.float32).reshape(spec.shape),
            action_high=np.asarray(spec.maximum, dtype=np.float32).reshape(spec.shape),
            obs_layout=layout,
            action_names=tuple(self._env.physics.model.id2name(i, "actuator") or f"a{i}" for i in range(spec.shape[0])),
            control_period_s=float(self._env.control_timestep()),
        )

    def _flatten(self, observation: dict[str, np.ndarray], where: str) -> np.ndarray:
        with np.errstate(over="ignore"):  # a float64 beyond float32's range: refused as infinite, not warned of
            blocks = [np.asarray(observation[key], dtype=np.float32).ravel() for key, _ in self.info.obs_layout]
        return _finite_observation(self.info.env_id, np.concatenate(blocks), where)

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is not None:
            self._env.task._random = np.random.RandomState(seed)  # the suite offers no public reseed
        with _root_logger_kept(), self._unstable():  # a reset logs an invalid physics state
            return self._flatten(self._env.reset().observation, "reset")

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool]:
        with self._unstable():
            time_step = self._env.step(action)
        # The suite ends episodes by its time limit only (discount stays 1.0); a discount of 0
        # would mark a true termination.
        terminated = time_step.last() and time_step.discount == 0.0
        truncated = time_step.last() and not terminated
        obs = self._flatten(time_step.observation, "step")
        return obs, _finite_reward(self.info.env_id, time_step.reward or 0.0), terminated, truncated

    @contextlib.contextmanager
    def _unstable(self) -> Iterator[None]:
        """dm_control's PhysicsError raised as :class:`SimulationError`."""
        try:
            yield
        except self._physics_error as exc:
            raise SimulationError(f"{self.info.env_id}: the simulation became unstable ({exc})") from exc

    def close(self) -> None:
        self._env.close()


class GymEnv:
    """A gymnasium environment with a Box action space (HumanoidBench's h1-* ids included).
    Episodes are seeded by ``reset(seed)``; gymnasium keeps no other seed worth setting. An unseeded
    ``reset()`` continues the stream of the ``reset(seed=0)`` made at construction to read the
    observation layout, so it is reproducible, as :class:`DMCEnv`'s continues its construction seed's."""

    def __init__(self, env_id: EnvId) -> None:
        try:
            import gymnasium as gym
        except ImportError as exc:
            raise EnvIdError(
                f"gymnasium is not installed, so {env_id} cannot be made: {install_command('train')}"
            ) from exc
        humanoidbench_error = _import_error("humanoid_bench")
        if (
            env_id.name.startswith("h1")
            and humanoidbench_error is not None
            and (error := _opengl_failure(humanoidbench_error, "HumanoidBench")) is not None
        ):
            raise error from humanoidbench_error
        try:
            self._env = gym.make(env_id.name, render_mode=None)
        except gym.error.Error as exc:
            hint = f" {HUMANOIDBENCH_INSTALL}." if env_id.name.startswith("h1") and humanoidbench_error else ""
            raise EnvIdError(
                f"unknown environment {env_id.name!r} ({exc}).{hint} How to name tasks: {ENV_ID_HELP}"
            ) from exc
        except Exception as exc:  # a MuJoCo task imports mujoco as it is made: does the user's MUJOCO_GL stop it?
            if (error := _unimportable_prefix(env_id.name, exc)) is not None:
                raise error from exc
            cause = _import_error("mujoco")
            if cause is None or (error := _opengl_failure(cause, "MuJoCo")) is None:
                raise
            raise error from exc
        try:  # a refusal or a failed first reset closes the env made
            self.info = self._info(env_id, gym)
        except BaseException:
            self._env.close()
            raise
        self._instability = _MujocoInstability.of(self._env.unwrapped)

    def _info(self, env_id: EnvId, gym: ModuleType) -> EnvInfo:
        space = self._env.action_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise EnvIdError(f"{env_id.name} has action space {space}; FlowRL needs a 1-D continuous Box")
        obs_shape = self._env.observation_space.shape
        if obs_shape is None or len(obs_shape) != 1:
            raise EnvIdError(f"{env_id.name} has observations of shape {obs_shape}; FlowRL needs a flat vector")
        dt = getattr(self._env.unwrapped, "dt", 0.0)
        obs_dim = int(obs_shape[0])
        first, _ = self._env.reset(seed=0)  # the layout is read off an observation; episodes reseed it
        return EnvInfo(
            env_id=str(env_id),
            obs_dim=obs_dim,
            act_dim=int(space.shape[0]),
            action_low=space.low.astype(np.float32),
            action_high=space.high.astype(np.float32),
            obs_layout=_qpos_qvel_layout(first, self._env.unwrapped) or (("observation", obs_dim),),
            action_names=_actuator_names(self._env.unwrapped, int(space.shape[0])),
            control_period_s=float(dt) if isinstance(dt, (int, float)) else 0.0,
        )

    def reset(self, seed: int | None = None) -> np.ndarray:
        with self._watched("reset"):  # a task's reset may step the simulation (to settle a random pose)
            obs, _ = self._env.reset(seed=seed)
        return self._observation(obs, "reset")

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool]:
        with self._watched("step"):
            obs, reward, terminated, truncated, _ = self._env.step(action)
        reward = _finite_reward(self.info.env_id, reward)
        return self._observation(obs, "step"), reward, bool(terminated), bool(truncated)

    @contextlib.contextmanager
    def _watched(self, where: str) -> Iterator[None]:
        """:class:`SimulationError` where MuJoCo warned of an unstable state within the block (a task with one)."""
        if self._instability is None:
            yield
            return
        self._instability.clear()
        yield
        if warned := self._instability.warned():
            during = " in its reset" if where == "reset" else ""
            raise SimulationError(
                f"{self.info.env_id}: the simulation became unstable{during} (MuJoCo warned {', '.join(warned)} and "
                "reset its state)"
            )

    def _observation(self, obs: object, where: str) -> np.ndarray:
        with np.errstate(over="ignore"):  # a float64 beyond float32's range: refused as infinite, not warned of
            return _finite_observation(self.info.env_id, np.asarray(obs, dtype=np.float32), where)

    def close(self) -> None:
        self._env.close()


def _finite_observation(env_id: str, obs: np.ndarray, where: str) -> np.ndarray:
    """``obs`` (float32), or :class:`SimulationError` where a value of it is NaN or infinite: stored, one such
    value would turn the critics' losses to NaN. ``where``: "reset" or "step", for the message."""
    if not np.isfinite(obs).all():
        bad = int(np.count_nonzero(~np.isfinite(obs)))
        raise SimulationError(
            f"{env_id}'s {where} returned an observation with {bad} of its {obs.size} values NaN or infinite"
        )
    return obs


def _finite_reward(env_id: str, reward: float) -> float:
    """``reward`` as a float, or :class:`SimulationError` where it is NaN or beyond float32's range (the replay's)."""
    reward = float(reward)
    if not abs(reward) <= FLOAT32_MAX:  # NaN fails the comparison too
        raise SimulationError(f"{env_id}'s step returned a reward of {reward:g}")
    return reward


class _MujocoInstability:
    """MuJoCo's counts of its :data:`MUJOCO_INSTABILITY` warnings in a task's MjData (``env.data``, as gymnasium's
    MuJoCo tasks and HumanoidBench hold it). MuJoCo resets a state it finds unstable by itself, so the
    observation stays finite (the body jumps to its initial pose): these counts are what tells. Its own reset
    clears them before it records the warning, so a count can stay at 1 over several blow-ups: they are
    cleared before each step and read after it."""

    def __init__(self, env: object, kinds: list[int]) -> None:
        self._env, self._kinds = env, kinds
        self._data: object = None
        self._counts = np.zeros(0, np.int32)

    @classmethod
    def of(cls, env: object) -> _MujocoInstability | None:
        """The counts of ``env``'s MjData; None for a task without one (``mujoco`` is imported only for one
        whose ``data`` has warnings)."""
        if not hasattr(getattr(env, "data", None), "warning"):
            return None
        mujoco = importlib.import_module("mujoco")
        if not isinstance(env.data, mujoco.MjData):  # type: ignore[attr-defined]
            return None
        return cls(env, [int(getattr(mujoco.mjtWarning, name)) for name in MUJOCO_INSTABILITY])

    def _live(self) -> np.ndarray:
        """The counts of every warning, a view of the task's current MjData (made again if the task replaced it)."""
        data = self._env.data  # type: ignore[attr-defined]
        if data is not self._data:
            self._data, self._counts = data, data.warning.number
        return self._counts

    def clear(self) -> None:
        self._live()[self._kinds] = 0

    def warned(self) -> list[str]:
        """The names of the warnings MuJoCo raised since :meth:`clear`."""
        counts = self._live()
        return [name for name, kind in zip(MUJOCO_INSTABILITY, self._kinds, strict=True) if counts[kind]]


def _qpos_qvel_layout(obs: object, env: object) -> tuple[tuple[str, int], ...] | None:
    """``(("qpos", nq), ("qvel", nv))`` when a MuJoCo task's observation is its joint positions then
    velocities (HumanoidBench's h1-walk: the first two of qpos are the root's world x and y, which a real
    robot must supply), read off one observation ``obs``; None for any other observation."""
    data = getattr(env, "data", None)
    qpos, qvel = getattr(data, "qpos", None), getattr(data, "qvel", None)
    if not (isinstance(qpos, np.ndarray) and isinstance(qvel, np.ndarray) and qpos.size and qvel.size):
        return None
    joints = np.concatenate([qpos.ravel(), qvel.ravel()])
    seen = np.asarray(obs, dtype=np.float64).ravel()
    if seen.shape != joints.shape or not np.array_equal(seen, joints):
        return None
    return ("qpos", int(qpos.size)), ("qvel", int(qvel.size))


def _unimportable_prefix(name: str, exc: Exception) -> EnvIdError | None:
    """gymnasium reads ``module:id`` as a module to import before making ``id``: a module that is not
    installed (``hb:h1-walk-v0``) makes ``name`` a wrong id, not a crash. None for other failures."""
    module, colon, task = name.partition(":")
    cause = exc.__cause__ if isinstance(exc.__cause__, ImportError) else exc  # gymnasium re-raises it
    missing = getattr(cause, "name", None)
    # the module itself (or a package above it) is not there; an import failing inside it is its own error
    if not (colon and isinstance(cause, ModuleNotFoundError) and missing and f"{module}.".startswith(f"{missing}.")):
        return None
    if module == "humanoid_bench":
        hint = f" {HUMANOIDBENCH_INSTALL}."
    elif task.startswith("h1"):
        hint = f" HumanoidBench ids take no prefix: {task!r}."
    else:
        hint = (
            f" Install {module!r} or put its folder on PYTHONPATH (it registers {task!r} when imported); "
            f"an id gymnasium registers itself takes no prefix, e.g. {task!r}."
        )
    return EnvIdError(
        f"{name!r} names the module {module!r} to import before making {task!r}, and there is no module "
        f"named {missing!r}.{hint} How to name tasks: {ENV_ID_HELP}"
    )


def _actuator_names(env: object, act_dim: int) -> tuple[str, ...]:
    """The MuJoCo actuator names of a gymnasium env on a MuJoCo ``model`` (HumanoidBench's), when it
    has one actuator per action and all are named (MuJoCo keeps names unique); else none."""
    model = getattr(env, "model", None)
    try:
        import mujoco
    except ImportError:
        return ()
    if not isinstance(model, mujoco.MjModel) or model.nu != act_dim:
        return ()
    names = tuple(mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_ACTUATOR, i) or "" for i in range(act_dim))
    return names if all(names) else ()


def _import_error(module: str) -> Exception | None:
    """Import ``module``; the error it raises (absent, or a MUJOCO_GL it cannot load), or None. Importing
    humanoid_bench registers its h1-* ids with gymnasium."""
    try:
        importlib.import_module(module)
    except Exception as exc:
        return exc
    return None


def make_env(env_id: str, seed: int = 0) -> Env:
    """Make the environment named ``env_id``, seeded; raise :class:`EnvIdError` for an unknown id,
    suggesting the dm_control task it most likely misspells."""
    try:
        parsed = parse_env_id(env_id)
    except EnvIdError:
        parsed = parse_env_id(env_id, known=dmc_task_ids())  # raises again, with a suggestion
    return DMCEnv(parsed, seed) if parsed.kind == "dmc" else GymEnv(parsed)


def episode_seed(seed: int, episode: int, stream: int = 0) -> int:
    """The reset seed of episode ``episode`` of a run seeded ``seed``; ``stream`` keeps training
    (0), evaluation episodes (1) and the evaluation policy's noise (2) apart. A pure function, so
    a resumed run sees the same episodes."""
    return int(np.random.SeedSequence([seed, stream, episode]).generate_state(1)[0])
