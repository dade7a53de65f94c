"""Data-parallel pre-training on the CPU (gloo, two processes) against one process; batch preprocessing.

- One round of two processes (one identity each) takes the universal-field step that one process takes on
  the mean of the two identities' gradients, and each process then holds the other's personalized field.
- ``instag pretrain`` under torchrun with 2 processes (3 identities: uneven shards, and an odd iteration
  count, so one process sits out the last round) writes the checkpoint layout of one process; it resumes
  under 1 process and that one under 2 again.
- ``instag process FOLDER --workers 2`` processes each video once, reports a bad one and goes on, and a
  second run (under torchrun) skips what is done and finishes what a killed run left.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from synthetic_clip import make_clip

from instag.data.dataset import FrameDataset, load_clip
from instag.errors import InstagError
from instag.model.motion import UniversalFaceField, UniversalMouthField
from instag.model.talking_head import TalkingHead
from instag.preprocess.batch import plan, shares
from instag.train.checkpoint import read_checkpoint
from instag.train.config import stage_config
from instag.train.distributed import World, merge_logs
from instag.train.engine import Identity, Trainer

REPO = Path(__file__).resolve().parents[1]
POSITIONS = (3, 5)  # the frame each identity trains on in the gradient test


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8", "GLOG_minloglevel": "2"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    for k, name in enumerate(("a", "b", "c")):
        make_clip(root / name, size=32, n_train=10, n_val=4, seed=k)
    return root


def _trainer(root: Path, world: World, names=("a", "b")) -> Trainer:
    """Identities built as ``instag pretrain`` builds them: one seed, all of them in every process."""
    torch.manual_seed(0)
    ff, mf = UniversalFaceField((80, 16)), UniversalMouthField((80, 16))
    gen = torch.Generator().manual_seed(0)
    ids = [Identity(load_clip(root / n, "train", "mel"), TalkingHead.create("mel", (80, 16), 80, 60, 1, ff, mf, False, gen))
           for n in names]
    cfg = stage_config("face", "pretrain", 10).replace(warmup=0)  # moving from the first step: the fields get gradients
    return Trainer(cfg, ids, torch.device("cpu"), lip_head=torch.nn.Linear(32, 80), world=world)


def _spy(trainer: Trainer) -> list[dict]:
    """The universal parameters' gradients at each optimiser step."""
    seen: list[dict] = []
    params = [p for g in trainer.universal_opt.param_groups for p in g["params"]]
    trainer.universal_opt.register_step_pre_hook(
        lambda opt, args, kwargs: seen.append({i: None if p.grad is None else p.grad.clone() for i, p in enumerate(params)}))
    return seen


def _personal(trainer: Trainer, index: int) -> torch.Tensor:
    return torch.nn.utils.parameters_to_vector(trainer.all_ids[index].head.face_personal.own_parameters()).detach().clone()


def _round_worker(rank: int, root: str, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        trainer = _trainer(Path(root), World(rank, 2))
        grads = _spy(trainer)
        sample = FrameDataset([trainer.ids[0].clip])[(0, POSITIONS[rank])]
        trainer.step(1 + rank, sample)  # round 1: process r trains iteration 1 + r
        torch.save({"grads": grads[0], "universal": [p.detach().clone() for p in trainer.universal.parameters()],
                    "personal": [_personal(trainer, 0), _personal(trainer, 1)]}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_step_like_one_process_on_the_mean_gradient(corpus, tmp_path):
    mp.spawn(_round_worker, args=(str(corpus), f"file://{tmp_path / 'rendezvous'}", str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    # one process: each identity's gradient at the same starting point (fresh trainers), then their mean
    single = []
    for k in range(2):
        trainer = _trainer(corpus, World())
        grads = _spy(trainer)
        trainer.step(1 + k, FrameDataset([i.clip for i in trainer.ids])[(k, POSITIONS[k])])
        single.append(grads[0])
    reached = 0
    for i in single[0]:
        ga, gb = single[0][i], single[1][i]
        if ga is None and gb is None:
            assert all(r["grads"][i] is None for r in ranks)
            continue
        mean = ((ga if ga is not None else 0) + (gb if gb is not None else 0)) / 2
        for r in ranks:
            torch.testing.assert_close(r["grads"][i], mean, rtol=1e-5, atol=1e-8)
        reached += 1
    assert reached > 0
    # the step on that mean gradient: both processes hold the universal fields one process would
    reference = _trainer(corpus, World())
    params = [p for g in reference.universal_opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        ga, gb = single[0][i], single[1][i]
        p.grad = None if ga is None and gb is None else ((ga if ga is not None else 0) + (gb if gb is not None else 0)) / 2
    for g in reference.universal_opt.param_groups:
        g["lr"] *= 2  # one step of two processes stands for two steps: twice the rate (linear scaling)
    reference.universal_opt.step()
    for r in ranks:
        for got, want in zip(r["universal"], reference.universal.parameters()):
            torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-7)
    # each process has a current copy of the other's personalized field (for the contrast loss)
    torch.testing.assert_close(ranks[0]["personal"][1], ranks[1]["personal"][1], rtol=0, atol=0)
    torch.testing.assert_close(ranks[1]["personal"][0], ranks[0]["personal"][0], rtol=0, atol=0)
    assert not torch.equal(ranks[0]["personal"][0], _personal(_trainer(corpus, World()), 0))  # it did train


def test_more_processes_than_identities_is_refused(corpus):
    with pytest.raises(InstagError, match="3 training processes for 2 identities"):
        _trainer(corpus, World(2, 3))


def test_merge_logs_joins_the_processes_entries_of_each_log_point():
    rank0 = [(10, 1.0), (20, 0.5), (31, 0.2)]
    rank1 = [(11, 3.0), (21, 1.5), (30, 0.4)]
    assert merge_logs([rank0, rank1], 2) == [(10, 2.0), (20, 1.0), (30, pytest.approx(0.3))]
    assert merge_logs([rank0], 1) == rank0


def _pretrain(corpus: Path, out: Path, processes: int, *extra: str) -> subprocess.CompletedProcess:
    args = ["pretrain", "-S", str(corpus), "-M", str(out), "--audio_extractor", "mel", "--preset", "tiny",
            "--iterations", "31", "--stages", "face", "--device", "cpu", "--workers", "0", "--quiet",
            "--checkpoint_seconds", "1000", *extra]
    if processes == 1:
        cmd = [sys.executable, "-m", "instag", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "-m", "instag", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600, cwd=str(REPO))


def _state(out: Path) -> tuple[dict, dict, dict]:
    return read_checkpoint(out, "train_pretrain_face", with_optim=True)


def test_pretrain_checkpoints_resume_across_process_counts(corpus, tmp_path):
    out = tmp_path / "model"
    # two processes, stopped at the first check (10 steps each): iteration 20
    run = _pretrain(corpus, out, 2, "--stop_after", "0.001")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]  # 0, not 3, under torchrun: it takes 3 for a failure
    tensors, meta, optim = _state(out)
    assert meta["iteration"] == 20 and meta["identities"] == ["a", "b", "c"]
    assert sorted(k for k in optim if k.startswith(("gauss", "personal"))) == ["gauss0", "gauss1", "gauss2",
                                                                               "personal0", "personal1", "personal2"]
    assert sum(optim["seen"]) == 20 and optim["seen"][1] == 10  # process 1 trains identity b alone
    assert {k.split(".")[0] for k in tensors if k.startswith("id")} == {"id0", "id1", "id2"}
    assert (out / "chkpnt_ema_face_latest.safetensors").exists()
    log = json.loads((out / "pretrain_log.json").read_text())
    assert log["stages"]["face"]["reached"] == 20 and log["stages"]["face"]["loss_history"]
    assert (run.stdout + run.stderr).count("saved face iteration 20/") == 1  # one process speaks
    # one process resumes it: 10 more steps, to iteration 30
    single_layout = tensors
    run = _pretrain(corpus, out, 1, "--resume", "--stop_after", "0.001")
    assert run.returncode == 3, run.stdout[-2000:] + run.stderr[-4000:]
    tensors, meta, optim = _state(out)
    assert meta["iteration"] == 30 and sum(optim["seen"]) == 30
    assert {k: v.shape for k, v in tensors.items()} == {k: v.shape for k, v in single_layout.items()}
    # and two processes finish it: iteration 31 is a round in which process 1 has nothing to train
    run = _pretrain(corpus, out, 2, "--resume")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    tensors, meta, optim = _state(out)
    assert meta["iteration"] == 31 and sum(optim["seen"]) == 31
    assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())
    face = json.loads((out / "pretrain_log.json").read_text())["stages"]["face"]
    assert face["pieces"] == 3 and face["reached"] == 31


# ------------------------------------------------------------------------------------------ batch preprocessing
def test_shares_give_each_video_to_one_worker_largest_first():
    sizes = [5, 1, 9, 3, 3, 7]
    split = shares(sizes, 2)
    assert sorted(i for part in split for i in part) == list(range(6))
    assert split == [[2, 3, 4], [5, 0, 1]]  # 9+3+3 = 15 against 7+5+1 = 13
    assert shares(sizes, 1) == [[2, 5, 0, 3, 4, 1]]
    assert shares([4], 3) == [[0], [], []]


def test_plan_refuses_two_videos_of_one_name(tmp_path):
    with pytest.raises(InstagError, match="would both be processed into"):
        plan([tmp_path / "a.mp4", tmp_path / "a.mov"], tmp_path / "out")
    assert plan([tmp_path / "x.mp4"], tmp_path / "out") == [(tmp_path / "x.mp4", tmp_path / "out" / "x")]


CLIP = REPO.parent / "shared" / "data" / "video" / "r3dp_may_5s.mp4"


@pytest.mark.slow
def test_process_a_folder_with_two_workers_and_resume(tmp_path):
    if not CLIP.exists():
        pytest.skip(f"test clip {CLIP} not found (../shared/data beside the repository)")
    pytest.importorskip("mediapipe")
    import imageio_ffmpeg

    videos = tmp_path / "videos"
    videos.mkdir()
    for name, start in (("one", "0"), ("two", "2")):
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-y", "-ss", start, "-i", str(CLIP), "-t", "0.8",
                        "-vf", "scale=256:-2", "-c:v", "libx264", "-crf", "18", "-c:a", "aac", str(videos / f"{name}.mp4")],
                       check=True)
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(2000))
    (videos / "notes.txt").write_text("not a video")
    out = tmp_path / "pretrain"
    cmd = [sys.executable, "-m", "instag", "process", str(videos), "--out", str(out), "--workers", "2"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600, cwd=str(REPO))
    assert first.returncode == 2, first.stdout[-3000:] + first.stderr[-3000:]
    assert "2 of 3 videos processed; failed: broken.mp4" in first.stdout
    assert any("broken.mp4: failed:" in line for line in first.stdout.splitlines())
    for name in ("one", "two"):
        assert (out / name / "transforms_train.json").exists()
        assert (out / "process_logs" / f"{name}.log").read_text().count("[ 1] audio") == 1  # once, by one worker
    assert not (out / "broken").exists() or not any((out / "broken").iterdir())
    # a run killed in "two"'s priors step: meta.json records the steps before it only
    meta_path = out / "two" / "meta.json"
    meta = json.loads(meta_path.read_text())
    for step in ("priors", "debug"):
        meta["steps"].pop(step)
    meta_path.write_text(json.dumps(meta))
    (videos / "broken.mp4").unlink()
    # the second run under torchrun: two processes, one worker each
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "instag",
                "process", str(videos), "--out", str(out)]
    again = subprocess.run(torchrun, capture_output=True, text=True, env=_env(), timeout=600, cwd=str(REPO))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    lines = again.stdout.splitlines()
    assert any("one.mp4" in line and "already processed" in line for line in lines)
    assert any("two.mp4" in line and "(priors, debug)" in line for line in lines)
    assert "2 of 2 videos processed" in again.stdout
    shutil.rmtree(out)
