"""The README says what the code does: the commands it lists, the defaults it names, the recipes it gives."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from instag.config import parse

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def code_blocks(text: str) -> list[str]:
    return re.findall(r"```(?:bash)?\n(.*?)```", text, flags=re.S)


def section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 3)
    return README[start:end if end > 0 else None]


def test_readme_lists_every_command():
    from instag.cli import COMMANDS

    listed = re.search(r"thin wrapper over one `instag` command:\s*`instag ([a-z|-]+)`", README)
    assert listed, "the README's list of commands is gone"
    assert listed.group(1).split("|") == list(COMMANDS)


def test_dilate_has_one_default_and_the_readme_names_it():
    from instag.infer.stream import StreamConfig
    from instag.infer.synthesize import SynthesizeConfig
    from instag.serve.app import ServeConfig
    from instag.train.adapt import AdaptConfig
    from instag.train.refine import RefineConfig

    base = ["-S", "d", "-M", "m"]
    configs = {SynthesizeConfig: [*base, "--audio", "a.wav"], StreamConfig: [*base, "--audio", "a.wav"], ServeConfig: base,
               RefineConfig: [*base, "--add", "x"], AdaptConfig: base}
    assert {cls.__name__: parse(cls, args).dilate for cls, args in configs.items()} == dict.fromkeys(
        (cls.__name__ for cls in configs), True)
    tip = next(line for line in README.split("\n* ") if line.startswith("`--dilate`"))
    assert "on by default in\n  `synthesize`, `stream`, `serve`, `refine`" in tip and "recommended" not in tip
    assert "`--dilate false`" in tip


def test_cpu_recipe_processes_pretraining_clips_with_the_offset_fix():
    """The README asks for --fix_av_offset on pre-training clips; its CPU recipe and the bench that times it use it."""
    assert "process those clips with --fix_av_offset" in README
    recipe = code_blocks(section("A CPU recipe that finishes in minutes"))[0]
    pretrain_clips = [shlex.split(line.split("#")[0]) for line in recipe.splitlines()
                      if line.startswith("instag process") and "data/pretrain/" in line]
    assert len(pretrain_clips) == 2 and all("--fix_av_offset" in args for args in pretrain_clips)
    spec = importlib.util.spec_from_file_location("cpu_recipe", REPO / "bench" / "cpu_recipe.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    steps = [args for _, args in bench.recipe(Path("/w")) if args[0] == "process" and "/w/data/pretrain/" in " ".join(args)]
    assert len(steps) == 2 and all("--fix_av_offset" in args for args in steps)
@pytest.mark.parametrize("flag", ["--expression", "--blink", "--performance"])
def test_readme_says_which_pretraining_the_controls_need(flag):
    control = section("Conversational control: expression, blinks, head pose, pauses")
    assert "CPU recipe" in control and "cannot show" in control and flag in control
