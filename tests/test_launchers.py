"""Sweeps through Hydra launchers: joblib runs jobs in parallel here; the SLURM config composes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import TINY, run_cli

pytestmark = pytest.mark.slow  # end-to-end: the real CLI in a subprocess (make test-fast skips them)

pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="needs the extra: pip install 'unetseg[joblib]'")


def test_joblib_launcher_runs_jobs_in_parallel_and_the_summary_works(tmp_path: Path, dataset: Path) -> None:
    result = run_cli(
        "train",
        "-m",
        "hydra/launcher=parallel",
        "model=bilinear,transposed",
        "data=folder",
        f"data.root={dataset}",
        *TINY,
        "trainer.epochs=2",
        "trainer.loggers=[mlflow]",  # both jobs open one new MLflow store at once
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "logging failed" not in result.stdout
    (sweep_dir,) = list((tmp_path / "outputs" / "sweep").iterdir())
    rows = list(csv.DictReader((sweep_dir / "summary.csv").open()))
    assert [r["status"] for r in rows] == ["completed", "completed"]
    jobs = [json.loads((sweep_dir / r["job"] / "metrics.json").read_text())["process"] for r in rows]
    assert jobs[0]["pid"] != jobs[1]["pid"]  # each job in its own worker process ...
    assert jobs[0]["started_unix"] < jobs[1]["finished_unix"] and jobs[1]["started_unix"] < jobs[0]["finished_unix"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("unetseg")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert sorted((r.info.run_name, r.info.status) for r in runs) == [("0", "FINISHED"), ("1", "FINISHED")]


def test_slurm_launcher_config_composes(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the extra: pip install 'unetseg[slurm]'")
    result = run_cli("train", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg", "hydra", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in result.stdout
    assert "partition: gpu" in result.stdout and "gpus_per_node: 1" in result.stdout


def test_missing_launcher_plugin_is_one_line(tmp_path: Path) -> None:
    result = run_cli("train", "-m", "hydra/launcher=ray", "model=bilinear,transposed", cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "unetseg[joblib]" in result.stderr
