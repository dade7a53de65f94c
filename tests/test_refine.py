"""``instag refine`` / ``instag versions``: guarded continual adaptation with real (tiny, CPU) training runs.

The model starts untrained; more footage of the same generated person is added, and a short refinement on it
raises the validation PSNR by about 2 dB. The guard's decisions are made deterministic through its bars rather than
through training dynamics (the lips of untrained tiny models follow the speech by chance, so their sync scores are
noise): the first refinement must gain 5 dB (``--psnr_tolerance -5``) and is refused; the second is held to the
image bars only (``--lip_tolerance 2``) and is promoted; rollback puts the first version back. ``test_guard_rules``
checks each rule of the guard on given scores.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from badinputs import fused_model, one_line_error, run_cli, synthetic_dataset
from synthetic_clip import speech

from instag.io.wav import write_wav

TINY = ["--preset", "tiny", "--iterations", "40", "--mouth_iterations", "20", "--fuse_iterations", "20", "--device", "cpu",
        "--quiet"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("refine")
    data, more, model = root / "data" / "p", root / "data" / "p_more", root / "output" / "p"
    synthetic_dataset(data, size=32, n_train=10, n_val=4, seed=0)
    synthetic_dataset(more, size=32, n_train=10, n_val=4, seed=1)  # the same drawn person, other speech
    fused_model(model)
    wav = root / "asked.wav"
    talk = speech(25, seed=4)[0]
    write_wav(wav, np.concatenate([talk, np.zeros(16000, np.float32), talk]), 16000)
    return {"data": data, "more": more, "model": model, "wav": wav}


def registry(model) -> dict:
    return json.loads((model / "versions" / "versions.json").read_text(encoding="utf-8"))


def checkpoint(folder) -> bytes:
    return (folder / "chkpnt_fuse_latest.safetensors").read_bytes()


def test_refine_guards_promotes_and_rolls_back(world):
    from instag.cli import main

    model, original = world["model"], checkpoint(world["model"])
    args = ["-S", str(world["data"]), "-M", str(model), "--add", str(world["more"]), *TINY]
    # a logged session: its speech is kept and every version is scored on it too
    assert main(["synthesize", "-S", str(world["data"]), "-M", str(model), "--audio", str(world["wav"]), "--device", "cpu",
                 "--quiet"]) == 0

    assert main(["refine", *args, "--psnr_tolerance", "-5"]) == 0  # a bar the refinement cannot reach: refused
    reg = registry(model)
    v1, v2 = reg["versions"]
    assert reg["current"] == "v1" and checkpoint(model) == original == checkpoint(model / "versions" / "v1")
    assert v1["scores"]["logged_audio"]["speeches"] == 1 and v2["scores"]["logged_audio"]["speeches"] == 1
    gain = v2["scores"]["validation"]["psnr"] - v1["scores"]["validation"]["psnr"]
    assert 1.0 < gain < 5.0  # better images, but not by the 5 dB asked
    assert not v2["decision"]["promoted"] and "psnr" in [c["metric"] for c in v2["decision"]["checks"] if not c["ok"]]
    assert "worse than v1" in v2["decision"]["why"] and (model / "versions" / "v2" / "chkpnt_fuse_latest.json").is_file()
    assert not list((model / "versions").glob(".*partial"))

    assert main(["refine", *args, "--lip_tolerance", "2"]) == 0  # the image bars: promoted
    reg = registry(model)
    v3 = reg["versions"][2]
    assert v3["name"] == "v3" and v3["parent"] == "v1" and v3["decision"]["promoted"]
    assert {c["metric"] for c in v3["decision"]["checks"]} == {"psnr", "ssim", "sync_score"}
    assert all(c["ok"] for c in v3["decision"]["checks"])
    assert reg["current"] == "v3" and checkpoint(model) == checkpoint(model / "versions" / "v3") != original
    assert v3["added"] == [str(world["more"].resolve())]
    meta = json.loads((model / "chkpnt_fuse_latest.json").read_text(encoding="utf-8"))
    assert meta["refined_from"] == "v1"

    listing = run_cli("versions", str(model))
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert any(line.startswith("* v3") for line in lines) and any(line.startswith("  v2") and "kept out" in line for line in lines)

    back = run_cli("versions", str(model), "--rollback", "v1")
    assert back.returncode == 0 and "v1 is current again (was v3)" in back.stdout, back.stderr
    assert checkpoint(model) == original and registry(model)["current"] == "v1"
    assert registry(model)["events"][-1]["event"] == "rolled back from v3 to v1"
    one_line_error(run_cli("versions", str(model), "--rollback", "v9"), "no version 'v9'", "v1, v2, v3")

    # the dashboard shows the versions' scores beside the sessions
    report = run_cli("report", str(model))
    assert report.returncode == 0 and "current version v1" in (model / "logs" / "report.html").read_text(encoding="utf-8")


def test_guard_rules():
    from instag.train.refine import RefineConfig, guard

    cfg = RefineConfig(source_path="d", model_path="m", add=["x"])
    old = {"validation": {"psnr": 30.0, "ssim": 0.95, "lmd": 2.0, "mouth_corr": 0.7}, "logged_audio": {"sync_score": 0.5}}
    same = json.loads(json.dumps(old))
    assert guard(old, same, cfg)[0]
    slightly = {"validation": {"psnr": 29.95, "ssim": 0.9485, "lmd": 2.04, "mouth_corr": 0.69}, "logged_audio": {"sync_score": 0.49}}
    assert guard(old, slightly, cfg)[0]  # within the tolerances
    for group, key, value in (("validation", "psnr", 29.5), ("validation", "ssim", 0.94), ("validation", "lmd", 2.2),
                              ("validation", "mouth_corr", 0.6), ("logged_audio", "sync_score", 0.4)):
        worse = json.loads(json.dumps(old))
        worse[group][key] = value
        ok, checks = guard(old, worse, cfg)
        assert not ok and [c["metric"] for c in checks if not c["ok"]] == [key]
    missing = {"validation": {"psnr": 31.0, "ssim": 0.96, "lmd": None, "mouth_corr": None}, "logged_audio": {"sync_score": None}}
    ok, checks = guard(old, missing, cfg)
    assert ok and [c["metric"] for c in checks] == ["psnr", "ssim"]  # what one side lacks is not compared


def test_refine_refusals(world, tmp_path):
    one_line_error(run_cli("refine", "-S", str(world["data"]), "-M", str(world["model"]), "--add", str(tmp_path / "nope"),
                           *TINY), "nope does not exist", "instag process")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(run_cli("refine", "-S", str(world["data"]), "-M", str(empty), "--add", str(world["more"]), *TINY),
                   "chkpnt_fuse_latest.safetensors does not exist", "adapt one first")
    one_line_error(run_cli("versions", str(empty)), "chkpnt_fuse_latest.safetensors does not exist", "not a trained model")
    # another validation split than the one the versions were scored on
    other = tmp_path / "other"
    synthetic_dataset(other, size=32, n_train=9, n_val=5, seed=0)
    fused_model(tmp_path / "m2")
    (tmp_path / "m2" / "versions").mkdir()
    (tmp_path / "m2" / "versions" / "versions.json").write_text(json.dumps({
        "current": "v1", "validation": {"transforms_sha256": "0" * 64, "source_path": "elsewhere", "frames": 4},
        "versions": [{"name": "v1"}]}))
    one_line_error(run_cli("refine", "-S", str(other), "-M", str(tmp_path / "m2"), "--add", str(world["more"]), *TINY),
                   "validation split", "move versions/ away")


def test_versions_before_any_refine(tmp_path):
    """A model that was never refined has no versions: listing them says so and succeeds; a rollback is refused."""
    model = fused_model(tmp_path / "m")
    listing = run_cli("versions", str(model))
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.strip() == (f"instag versions: {model} has no versions yet: its own checkpoint is the only one "
                                      f"(instag refine -S data/<ID> -M {model} --add <more footage> keeps it as v1 and adds v2)")
    assert not (model / "versions").exists()
    one_line_error(run_cli("versions", str(model), "--rollback", "v1"), "has no versions yet", "none to roll back to")


def _scores(pred, truth, corr_of=None) -> dict:
    from instag.metrics.lips import pearson

    return {"validation": {"psnr": 30.0, "ssim": 0.95, "lmd": 2.0, "mouth_corr": pearson(pred, truth), "frames": len(pred),
                           "mouth_opening": {"ours": list(map(float, pred)), "truth": list(map(float, truth))}}}


def test_mouth_correlation_is_judged_above_its_noise():
    """12 frames: two versions that differ by chance differ by 0.2 in mouth corr, within the measured noise; on 300
    frames a real loss of lip sync is beyond it and refused."""
    from instag.train.refine import RefineConfig, describe_margin, guard

    cfg = RefineConfig(source_path="d", model_path="m", add=["x"])
    rng = np.random.default_rng(11)  # draws of the same quality: mouth corr 0.57 and 0.33
    truth = rng.random(12)
    old, new = _scores(truth + 1.4 * rng.random(12), truth), _scores(truth + 1.4 * rng.random(12), truth)
    drop = old["validation"]["mouth_corr"] - new["validation"]["mouth_corr"]
    assert drop > 0.15  # chance alone
    ok, checks = guard(old, new, cfg)
    corr = next(c for c in checks if c["metric"] == "mouth_corr")
    assert ok and corr["ok"] and corr["tolerance"] > drop and corr["noise"] > 0.1 and corr["frames"] == 12
    assert corr["tolerance"] == pytest.approx(2 * corr["noise"])
    text = describe_margin(checks, cfg)
    assert "noise margin" in text and "12 scored frames" in text and "above --lip_tolerance 0.02" in text

    truth = rng.random(300)
    synced = _scores(truth + 0.3 * rng.random(300), truth)
    lost = _scores(0.5 * truth + rng.random(300), truth)
    ok, checks = guard(synced, lost, cfg)
    corr = next(c for c in checks if c["metric"] == "mouth_corr")
    assert not ok and not corr["ok"] and 0.02 <= corr["tolerance"] < 0.2
    assert corr["old"] - corr["new"] > corr["tolerance"]
    # scores without per-frame openings (a registry from before they were kept): the plain tolerance
    for scores in (synced, lost):
        del scores["validation"]["mouth_opening"]
    corr = next(c for c in guard(synced, lost, cfg)[1] if c["metric"] == "mouth_corr")
    assert corr["tolerance"] == 0.02 and corr["noise"] is None
    assert "--lip_tolerance 0.02 (no per-frame openings" in describe_margin(guard(synced, lost, cfg)[1], cfg)


def test_refine_takes_the_models_own_preset(tmp_path):
    from instag.train.refine import RefineConfig, recipe_preset

    model = fused_model(tmp_path / "m")
    said = []
    cfg = RefineConfig(source_path="d", model_path=str(model), add=["x"])
    assert recipe_preset(cfg, model, said.append) == "default" and "records none" in said[-1]
    meta = json.loads((model / "chkpnt_fuse_latest.json").read_text(encoding="utf-8"))
    (model / "chkpnt_fuse_latest.json").write_text(json.dumps({**meta, "preset": "cpu"}), encoding="utf-8")
    assert recipe_preset(cfg, model, said.append) == "cpu" and "the one m was made with" in said[-1]
    assert recipe_preset(RefineConfig(source_path="d", model_path=str(model), add=["x"], preset="tiny"), model,
                         said.append) == "tiny"
    assert RefineConfig.__dataclass_fields__["preset"].default is None
