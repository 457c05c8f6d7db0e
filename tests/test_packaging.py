"""The configs travel with the package: a regular wheel install works from any directory, and an editable
install reads the checkout's conf/ so that edits there take effect.

Each install goes into a fresh virtualenv whose only link to the test environment is a .pth file that
makes the already-installed dependencies (torch, hydra, ...) importable, so nothing is downloaded twice.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import REPO, TINY

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("git") is None, reason="needs git to copy the checkout"),
]


def copy_checkout(dest: Path) -> Path:
    """The tracked files of this checkout (what a clone has), with local edits, in ``dest``."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def fresh_venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def pip_install(python: Path, *args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def unetseg(venv_python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(venv_python.parent / "unetseg"), *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_wheel_install_finds_its_configs_from_any_directory(tmp_path: Path) -> None:
    checkout = copy_checkout(tmp_path / "checkout")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(checkout)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    wheel = next((tmp_path / "dist").glob("unetseg-*.whl"))
    python = fresh_venv(tmp_path / "venv")
    pip_install(python, str(wheel))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [str(python), "-c", "from unetseg.runtime.paths import config_dir; print(config_dir())"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert where.startswith(str(tmp_path / "venv")) and where.endswith("unetseg/conf")
    result = unetseg(python, "train", "--cfg", "job", "model=transposed", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert "upsampling: transposed" in result.stdout
    synth = unetseg(python, "synthesize", "output=s", "count=1", "size=16", cwd=elsewhere)
    assert synth.returncode == 0 and (elsewhere / "s" / "image" / "0.png").is_file(), synth.stderr
    train = unetseg(python, "train", *TINY, "hydra.run.dir=run", cwd=elsewhere)  # the report's templates ship too
    assert train.returncode == 0 and "warning" not in train.stdout, train.stdout[-2000:] + train.stderr[-2000:]
    assert 'id="figures"' in (elsewhere / "run" / "report.html").read_text()


def test_editable_install_reads_the_checkout_conf(tmp_path: Path) -> None:
    checkout = copy_checkout(tmp_path / "checkout")
    python = fresh_venv(tmp_path / "venv")
    pip_install(python, "-e", str(checkout))
    model_yaml = checkout / "conf" / "model" / "bilinear.yaml"
    model_yaml.write_text(model_yaml.read_text().replace("base_channels: 64", "base_channels: 24"))
    result = unetseg(python, "train", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "base_channels: 24" in result.stdout
