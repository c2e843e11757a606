"""What a HEAR run is asked to do, how it fails, and what each of its parallel jobs gets.

A job is one of the ``--jobs`` processes working through the tasks. Job ``j``
gets one GPU for all of its steps: entry ``j % len(devices)`` of
``--devices`` (indices into the GPUs this process sees), or of all visible
GPUs when ``--devices`` is not given. So ``--jobs 4`` on two GPUs puts two
jobs on each, and ``--devices 0,0`` (or ``--devices 0 --jobs 2``) runs two
jobs on GPU 0. The steps a job starts see only its GPU
(``CUDA_VISIBLE_DEVICES``), as their device 0, which is what heareval's
``--gpus [0]`` expects. Parallel jobs also divide the CPU cores among them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hear_ced.common.config import ConfigError, checked, positive
from hear_ced.eval.tasks import size_of_module


class RunError(ValueError):
    """The whole run cannot go on (bad module, foreign output folder, ...).

    A ValueError: it is the user's input at fault, so the CLI shows it as one line.
    """


class TaskError(RuntimeError):
    """One task cannot be evaluated; the others still run."""


PROBES = ("linear", "mlp", "both")
GRIDS = ("default", "fast", "faster")
LOCKS = ("auto", "flock", "file")  # see identity: kernel locks, lock files, or by file system

# Thread pools of the libraries heareval's steps load: OpenMP (torch), MKL, OpenBLAS, TensorFlow.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")  # fmt: skip


@dataclass
class RunSettings:
    module: str
    model: str | None
    tasks_dir: Path
    out: Path
    tasks: tuple[str, ...] = ()
    grid: str = "default"
    grid_points: int = 8
    probe: str = "both"
    model_options: dict = field(default_factory=dict)  # keyword arguments of load_model
    jobs: int = 1  # tasks run in parallel processes
    devices: tuple[int, ...] = ()  # GPUs (visible indices) the jobs take in turn; () = all
    lock: str = "auto"  # how tasks are locked: one of LOCKS
    restart: bool = False  # delete an earlier run in ``out`` first

    def __post_init__(self) -> None:
        # Built in code by the CLI, the demo and the tests: types and values checked then.
        checked(self)

    def validate(self) -> None:
        for name, allowed in (("grid", GRIDS), ("probe", PROBES), ("lock", LOCKS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"unknown {name} {getattr(self, name)!r}; choose one of {allowed}", key=name
                )
        positive(self, "jobs", "grid_points")
        if any(index < 0 for index in self.devices):
            raise ConfigError(f"GPU indices are not negative, got {self.devices}", key="devices")

    @property
    def parts(self) -> tuple[str, ...]:
        """Downstream models to score: ``mlp`` (heareval) and/or ``linear`` (our probe)."""
        return ("mlp", "linear") if self.probe == "both" else (self.probe,)

    def result_path(self, task: str) -> Path:
        return self.out / "results" / f"{task}.json"


CUSTOM = "hear_ced.custom"  # any checkpoint, whatever size it holds


def ced_module(module: str, model: str | None) -> str:
    """The ``--module`` of a run of one hear_ced model: ``hear_ced.<size>`` (also given as
    the bare size), or :data:`CUSTOM` with ``model``."""
    if "." not in module:
        module = f"hear_ced.{module}"
    if module != CUSTOM and size_of_module(module) is None:
        raise RunError(f"unknown module {module!r}: use hear_ced.<size> or {CUSTOM}")
    if module == CUSTOM and not model:
        raise RunError(f"{CUSTOM} needs --model: it has no default weights")
    return module


def resolved_model(model: str | None) -> str | None:
    """The weights file's absolute path: checked when a run starts, not when settings are made."""
    if model and not Path(model).is_file():
        raise RunError(f"model file {model} does not exist")
    return str(Path(model).resolve()) if model else None


@dataclass(frozen=True)
class Machine:
    """The GPUs and CPU cores this process may use."""

    gpus: tuple[str, ...]  # the CUDA_VISIBLE_DEVICES entry of each visible GPU, by index
    cores: int

    @classmethod
    def detect(cls, environ: Mapping[str, str]) -> Machine:
        """GPUs as torch counts them, named as the parent's CUDA_VISIBLE_DEVICES names them.

        Cores are those this process may run on (a cluster's CPU allocation), not the machine's.
        """
        count = visible_gpu_count()
        named = [e.strip() for e in environ.get("CUDA_VISIBLE_DEVICES", "").split(",")]
        gpus = named[:count] if "CUDA_VISIBLE_DEVICES" in environ else []
        gpus += [str(index) for index in range(len(gpus), count)]
        return cls(gpus=tuple(gpus), cores=available_cores())


def visible_gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def available_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@dataclass(frozen=True)
class Job:
    """One parallel job: the GPU its steps see (None without GPUs) and their environment."""

    device: str | None
    environment: dict[str, str]

    @property
    def threads(self) -> int | None:
        """CPU threads of the job's in-process work (None: the libraries' defaults)."""
        value = self.environment.get("OMP_NUM_THREADS", "")
        return int(value) if value.isdigit() and int(value) > 0 else None


def job_devices(settings: RunSettings, machine: Machine) -> list[str | None]:
    """The GPU of each job (see the module's docstring); RunError for a GPU that is not there."""
    count = len(machine.gpus)
    bad = [index for index in settings.devices if not 0 <= index < count]
    if bad:
        seen = f"GPUs 0-{count - 1}" if count > 1 else "GPU 0" if count else "no GPU"
        raise RunError(f"--devices {','.join(map(str, settings.devices))}: GPU {bad[0]} is not "
                       f"there (this process sees {seen})")  # fmt: skip
    order = settings.devices or tuple(range(count))
    return [
        machine.gpus[order[job % len(order)]] if order else None for job in range(settings.jobs)
    ]


def job_environment(
    settings: RunSettings, device: str | None, machine: Machine, environ: Mapping[str, str]
) -> dict[str, str]:
    """Environment of the processes a job starts: its GPU and its share of the CPU threads.

    Parallel jobs get ``cores // jobs`` threads each (at least 1) unless the
    user set OMP_NUM_THREADS, which is then left to govern every job.
    """
    environment = dict(environ)
    if device is not None:
        environment["CUDA_VISIBLE_DEVICES"] = device
    if settings.jobs > 1 and "OMP_NUM_THREADS" not in environ:
        threads = str(max(1, machine.cores // settings.jobs))
        environment.update({name: threads for name in THREAD_VARIABLES})
    return environment


def plan_jobs(settings: RunSettings, machine: Machine, environ: Mapping[str, str]) -> list[Job]:
    return [
        Job(device, job_environment(settings, device, machine, environ))
        for device in job_devices(settings, machine)
    ]
