"""Optional experiment loggers (``trainer.loggers=[tensorboard,mlflow]``) beside the always-written
curves.png and report.html.

- ``tensorboard``: event files in ``<run dir>/tensorboard/`` through ``torch.utils.tensorboard`` (it ships
  with PyTorch and needs only the ``tensorboard`` package, which ``tensorboard --logdir`` needs anyway).
- ``mlflow``: a run in a local store (``mlruns/mlflow.db`` next to the runs folder; artifacts in
  ``mlruns/artifacts``) or any tracking URI. MLflow 3 keeps its file store in maintenance mode and
  recommends a database, so the local default is SQLite: one file, no server, ``mlflow ui`` reads it.

Logging must never cost a run: a logger that fails (disk full, tracking server gone) is reported once and
dropped, and training goes on. Only the main process of a torchrun job logs (the caller decides).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unetseg.io.atomic import exclusive_lock
from unetseg.runtime.console import console
from unetseg.runtime.errors import UserError

log = logging.getLogger(__name__)

# logger name → (the module it needs, the extra that installs it)
LOGGER_PACKAGES = {"tensorboard": ("tensorboard", "unetseg[tensorboard]"), "mlflow": ("mlflow", "unetseg[mlflow]")}


def check_logger_packages(names: Sequence[str]) -> None:
    """Stop before training when a logger's package is missing, naming the extra to install."""
    for name in names:
        module, extra = LOGGER_PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise UserError(
                f"trainer.loggers has {name}, but the {module} package is not installed: "
                f"pip install '{extra}' (or remove {name} from trainer.loggers)"
            )


class RunLogger:
    """What the trainer tells a logger; every method does nothing unless a logger overrides it."""

    name = "logger"
    takes_pictures = False

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_step(self, step: int, values: Mapping[str, float]) -> None: ...

    def log_epoch(self, epoch: int, values: Mapping[str, float]) -> None: ...

    def log_pictures(self, epoch: int, pictures: Mapping[str, np.ndarray]) -> None: ...

    def log_best(self, epoch: int, values: Mapping[str, float]) -> None:
        """The figures of the epoch best.pt holds (what runs should be compared by)."""

    def log_files(self, paths: Sequence[Path]) -> None: ...

    def close(self, status: str) -> None: ...


class TensorBoardLogger(RunLogger):
    name = "tensorboard"
    takes_pictures = True

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log_params(self, params: Mapping[str, Any]) -> None:
        lines = "\n".join(f"    {key}: {value}" for key, value in params.items())  # markdown code block
        self.writer.add_text("config", lines, 0)

    def log_step(self, step: int, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"step/{key}", value, step)

    def log_epoch(self, epoch: int, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"epoch/{key}", value, epoch)
        self.writer.flush()  # visible in a running `tensorboard --logdir` after every epoch

    def log_pictures(self, epoch: int, pictures: Mapping[str, np.ndarray]) -> None:
        for name, rgb in pictures.items():
            self.writer.add_image(f"best/{name}", rgb, epoch, dataformats="HWC")
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.close()


class MlflowLogger(RunLogger):
    name = "mlflow"

    def __init__(
        self, tracking_uri: str | None, experiment: str, runs_root: Path, run_name: str, tags: dict[str, str]
    ) -> None:
        # A tracking server that does not answer costs one 10-s timeout, not MLflow's minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines about creating tables
        logging.getLogger("alembic").setLevel(logging.WARNING)
        artifact_location, lock = None, contextlib.nullcontext()
        if tracking_uri is None:
            store = (runs_root.parent / "mlruns").resolve()
            store.mkdir(parents=True, exist_ok=True)
            tracking_uri = f"sqlite:///{store / 'mlflow.db'}"
            artifact_location = (store / "artifacts").as_uri()
            # Parallel sweep jobs opening a new store at once would race to create its tables.
            lock = exclusive_lock(store / ".unetseg.lock")
        self.tracking_uri = tracking_uri
        with lock:
            self.client = MlflowClient(tracking_uri)
            self.run_id = self._start_run(experiment, artifact_location, run_name, tags)

    def _start_run(self, experiment: str, artifact_location: str | None, run_name: str, tags: dict[str, str]) -> str:
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            try:
                experiment_id = self.client.create_experiment(experiment, artifact_location=artifact_location)
            except Exception:  # a parallel sweep job created it first
                found = self.client.get_experiment_by_name(experiment)
                if found is None:
                    raise
                experiment_id = found.experiment_id
        else:
            experiment_id = found.experiment_id
        return str(self.client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(key[:250], str(value)[:6000]) for key, value in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def _metrics(self, step: int, values: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        metrics = [Metric(key, float(value), timestamp, step) for key, value in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_step(self, step: int, values: Mapping[str, float]) -> None:
        self._metrics(step, values)

    def log_epoch(self, epoch: int, values: Mapping[str, float]) -> None:
        self._metrics(epoch, values)

    def log_best(self, epoch: int, values: Mapping[str, float]) -> None:
        self._metrics(epoch, {"best_epoch": epoch, **{f"best_{key}": value for key, value in values.items()}})

    def log_files(self, paths: Sequence[Path]) -> None:
        for path in paths:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


class Loggers:
    """The loggers of one run. A call that fails is reported once and that logger is dropped."""

    def __init__(self, loggers: Sequence[RunLogger] = ()) -> None:
        self.loggers = list(loggers)
        self.spent_s = 0.0  # time spent in the loggers' calls (the run's logging overhead)

    @property
    def active(self) -> bool:
        return bool(self.loggers)

    @property
    def takes_pictures(self) -> bool:
        return any(logger.takes_pictures for logger in self.loggers)

    def _each(self, call: Callable[[RunLogger], None]) -> None:
        started = time.perf_counter()
        for logger in list(self.loggers):
            try:
                call(logger)
            except Exception as error:  # the checkpoint matters more than the log
                self.loggers.remove(logger)
                drop(logger.name, error)
        self.spent_s += time.perf_counter() - started

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._each(lambda logger: logger.log_params(params))

    def log_step(self, step: int, values: Mapping[str, float]) -> None:
        self._each(lambda logger: logger.log_step(step, values))

    def log_epoch(self, epoch: int, values: Mapping[str, float]) -> None:
        self._each(lambda logger: logger.log_epoch(epoch, values))

    def log_pictures(self, epoch: int, pictures: Mapping[str, np.ndarray]) -> None:
        self._each(lambda logger: logger.log_pictures(epoch, pictures))

    def log_best(self, epoch: int, values: Mapping[str, float]) -> None:
        self._each(lambda logger: logger.log_best(epoch, values))

    def log_files(self, paths: Sequence[Path]) -> None:
        self._each(lambda logger: logger.log_files(paths))

    def close(self, status: str) -> None:
        self._each(lambda logger: logger.close(status))
        self.loggers.clear()


def drop(name: str, error: BaseException) -> None:
    reason = " ".join(str(error).split())
    reason = reason if len(reason) <= 200 else reason[:197] + "..."
    message = f"{name} logging failed ({type(error).__name__}: {reason}); training goes on without it"
    console.print(f"[yellow]warning:[/] {message}")
    log.warning("%s", message)


def open_loggers(
    names: Sequence[str],
    run_dir: Path,
    runs_root: Path,
    mlflow_tracking_uri: str | None,
    mlflow_experiment: str,
    tags: dict[str, str],
) -> Loggers:
    """The loggers ``names`` asks for; one that cannot start (e.g. an unreachable tracking server) is
    reported and left out."""
    opened: list[RunLogger] = []
    for name in names:
        try:
            if name == "tensorboard":
                opened.append(TensorBoardLogger(run_dir / "tensorboard"))
            elif name == "mlflow":
                opened.append(MlflowLogger(mlflow_tracking_uri, mlflow_experiment, runs_root, run_dir.name, tags))
        except Exception as error:
            drop(name, error)
    return Loggers(opened)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys (``optim.lr``): MLflow's and TensorBoard's parameters."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat
