"""The conda environment files list the same Python dependencies as pyproject.toml (conda cannot run here)."""

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pip_section(path: Path) -> list[str]:
    """The entries under ``- pip:`` of a conda environment file (a YAML list of strings)."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    indent = len(lines[start]) - len(lines[start].lstrip())
    entries = []
    for line in lines[start + 1 :]:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if len(line) - len(line.lstrip()) <= indent:
            break
        item = line.strip()
        assert item.startswith("- "), f"{path.name}: unexpected line in the pip section: {line!r}"
        entries.append(item[2:].strip())
    return entries


def _core_dependencies() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {_name(r) for r in project["dependencies"]}


@pytest.mark.parametrize("env_file", ["environment.yml", "environment_cu117.yml", "environment_cu121.yml"])
def test_conda_file_matches_pyproject(env_file):
    entries = _pip_section(ROOT / env_file)
    packages = {_name(e) for e in entries if not e.startswith("-")}
    assert packages == _core_dependencies()
    assert "-e ." in entries, f"{env_file} must install the project itself"


def test_core_dependencies_stay_light():
    core = _core_dependencies()
    for heavy in ("torchvision", "librosa", "mmcv", "mmcv-full", "pytorch3d", "tensorflow", "transformers", "opencv-python"):
        assert heavy not in core
    assert "opencv-contrib-python" in core  # the OpenCV wheel MediaPipe requires; two OpenCV wheels clash


def test_entry_points_exist():
    for rel in (
        "synthesize_fuse.py",
        "data_utils/process.py",
        "data_utils/split.py",
        "scripts/pretrain_con.sh",
        "scripts/train_df_few.sh",
        ".ci/run",
        "LICENSE",
        "README.md",
    ):
        assert (ROOT / rel).is_file(), f"missing {rel}"
