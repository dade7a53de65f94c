"""Every command an error suggests works as printed: the instag commands in the one-line errors of a wrong turn
(-S and -M swapped, features of another extractor, a missing AU csv, a missing clip, a missing model) are real
commands whose flags parse and whose input paths exist, and nothing is said before the error."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from badinputs import fused_model, one_line_error, run_cli, synthetic_dataset
from synthetic_clip import speech

from instag.config import parse
from instag.io.wav import write_wav

REPO = Path(__file__).resolve().parents[1]
# the input paths of each command a hint may name (flags whose path must exist before the command runs)
INPUTS = {"adapt": ("-S", "--pretrain_path"), "synthesize": ("-S", "-M", "--audio", "--au_csv", "--performance"),
          "features": ("--wav",), "refine": ("-S", "-M", "--add"), "pretrain": ("-S",), "process": ()}


def config_of(command: str):
    from instag.audio.cli import FeaturesConfig
    from instag.infer.synthesize import SynthesizeConfig
    from instag.preprocess.pipeline import ProcessConfig
    from instag.train.adapt import AdaptConfig
    from instag.train.pretrain import PretrainConfig
    from instag.train.refine import RefineConfig

    return {"adapt": AdaptConfig, "synthesize": SynthesizeConfig, "features": FeaturesConfig, "refine": RefineConfig,
            "pretrain": PretrainConfig, "process": ProcessConfig}[command]


def hint_commands(line: str) -> list[list[str]]:
    """The ``instag <command> ...`` commands in an error line (up to a comma, semicolon, bracket or the end)."""
    return [shlex.split(c) for c in re.findall(r"\binstag ((?![a-z-]+:)[a-z-]+(?: [^\s,;()]+)*)", line)]


def flag_values(args: list[str]) -> dict[str, str]:
    return {a: b for a, b in zip(args, args[1:]) if a.startswith("-")}


def check_works(args: list[str], cwd: Path, placeholders: dict[str, str] | None = None) -> None:
    """``instag <args>`` names a command, its flags parse, and its input paths exist (relative to ``cwd``)."""
    from instag.cli import COMMANDS

    command, rest = args[0], [(placeholders or {}).get(a, a) for a in args[1:]]
    assert command in COMMANDS, args
    if command == "process":  # its first argument is the video
        rest = ["--path", *rest]
    parse(config_of(command), rest)  # a flag it does not take exits
    for flag, value in flag_values(rest).items():
        if flag in INPUTS[command]:
            assert (cwd / value).exists(), f"{' '.join(args)}: {value} does not exist"


@pytest.fixture(autouse=True)
def this_checkout(monkeypatch):
    """The commands run in the clip's folder: they import this checkout's instag, whatever is installed."""
    import os

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("hints")
    synthetic_dataset(root / "data" / "p", size=32, n_train=8, n_val=4)
    fused_model(root / "output" / "p")
    fused_model(root / "output" / "pw", extractor="whisper")
    adapted = fused_model(root / "output" / "adapted")  # as adaptation writes it: the clip it was adapted on
    meta_path = adapted / "chkpnt_fuse_latest.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta_path.write_text(json.dumps({**meta, "source_path": "data/p"}), encoding="utf-8")
    write_wav(root / "new.wav", speech(25, seed=1)[0], 16000)
    return root


def synthesize(world: Path, *args: str):
    return run_cli("synthesize", *args, "--device", "cpu", "--quiet", cwd=world)


def test_swapped_source_and_model(world):
    line = one_line_error(synthesize(world, "-S", "output/p", "-M", "data/p", "--audio", "new.wav"), "swapped")
    given = flag_values(shlex.split(line.split("give ", 1)[1]))
    assert given == {"-S": "data/p", "-M": "output/p"}
    assert (world / given["-S"] / "transforms_train.json").is_file()
    assert (world / given["-M"] / "chkpnt_fuse_latest.safetensors").is_file()
    assert "instag adapt" not in line and "data/p/chkpnt" not in line
    line = one_line_error(run_cli("refine", "-S", "output/p", "-M", "data/p", "--add", "data/p", "--device", "cpu", cwd=world),
                          "swapped")
    assert flag_values(shlex.split(line.split("give ", 1)[1])) == given


def test_features_of_another_extractor(world):
    line = one_line_error(synthesize(world, "-S", "data/p", "-M", "output/pw", "--audio", "data/p/aud_mel.npy"),
                          "whisper files are")
    [command] = hint_commands(line)
    assert command[:2] == ["features", "--wav"]
    check_works(command, world)
    assert flag_values(command) == {"--wav": "data/p/aud.wav", "--extractor": "whisper"}
    assert "--out" not in command and "writes data/p/aud_wh.npy" in line  # never over the mel file
    lone = world / "lone_mel.npy"
    lone.write_bytes((world / "data" / "p" / "aud_mel.npy").read_bytes())
    line = one_line_error(synthesize(world, "-S", "data/p", "-M", "output/pw", "--audio", "lone_mel.npy"), "no .wav beside it")
    assert all("--wav" not in c for c in hint_commands(line))  # no speech to name: no path made up


def test_readme_performance_example_and_a_missing_au_csv(world):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    example = re.search(r"```json\n(.*?)```", readme, flags=re.S).group(1)
    (world / "perf.json").write_text(example, encoding="utf-8")
    out = synthesize(world, "-S", "data/p", "-M", "output/p", "--audio", "new.wav", "--performance", "perf.json",
                     "--output", "perf.mp4")
    assert out.returncode == 0, out.stderr  # the README's example as printed
    data = json.loads(example)
    (world / "perf_csv.json").write_text(json.dumps({**data, "au_csv": "curve.csv"}), encoding="utf-8")
    line = one_line_error(synthesize(world, "-S", "data/p", "-M", "output/p", "--audio", "new.wav", "--performance",
                                     "perf_csv.json"), "curve.csv does not exist")
    assert "--task" not in line and "preprocessing" not in line
    suggested = re.search(r"--au_csv (\S+)", line).group(1)
    assert (world / suggested).is_file() and suggested == "data/p/au.csv"


def test_missing_clip_is_the_only_line(world):
    """A model adapted on data/p rendered with -S data/nope: the error alone, no note about rendering first."""
    line = one_line_error(synthesize(world, "-S", "data/nope", "-M", "output/adapted", "--audio", "new.wav"),
                          "data/nope does not exist")
    [command] = hint_commands(line)
    check_works(command, world, {"VIDEO": str(world / "new.wav")})
    assert command[0] == "process" and flag_values(command)["--out"] == "data/nope"


def test_missing_model_names_the_readmes_adapt(world):
    line = one_line_error(synthesize(world, "-S", "data/p", "-M", "output/none", "--audio", "new.wav"), "no trained model")
    [command] = hint_commands(line)
    assert command == ["adapt", "-S", "data/p", "-M", "output/none"] and "scripts/" not in line
    check_works(command, world)
    line = one_line_error(run_cli("refine", "-S", "data/p", "-M", "output/none", "--add", "data/p", cwd=world), "adapt one first")
    [command] = hint_commands(line)
    assert command == ["adapt", "-S", "data/p", "-M", "output/none"]
    check_works(command, world)


def test_no_error_hint_names_a_training_script():
    """The README's recipe adapts with instag adapt; no hint in the package sends people to a script instead."""
    sources = [p.read_text(encoding="utf-8") for p in (REPO / "instag").rglob("*.py")]
    assert [m for s in sources for m in re.findall(r"bash scripts/train_\w+\.sh", s)] == []
