"""Motion fields, audio encoders, the FM hook and the talking head (CPU, random weights)."""

from __future__ import annotations

import pytest
import torch

from instag.errors import InstagError
from instag.model.audio_encoder import AudioEncoder, AudioNet, AudioNetAve
from instag.model.motion import (
    PersonalizedField,
    UniversalFaceField,
    UniversalMouthField,
    face_mouth_hook,
    hook_from_displacement,
)
from instag.model.talking_head import TalkingHead
from instag.render import Camera

ITEM_SHAPES = {"mel": (80, 16), "deepspeech": (29, 16), "esperanto": (44, 16), "hubert": (1024, 2), "ave": (1, 512)}


@pytest.mark.parametrize("name", sorted(ITEM_SHAPES))
def test_audio_encoder_every_extractor_shape(name):
    shape = ITEM_SHAPES[name]
    enc = AudioEncoder(shape)
    assert isinstance(enc.net, AudioNetAve if shape[0] == 1 else AudioNet)
    out = enc(torch.randn(5, 8, *shape))
    assert out.shape == (5, 32) and torch.isfinite(out).all()


def test_audio_encoder_refuses_other_item_shape():
    with pytest.raises(InstagError, match="extractor"):
        AudioEncoder((80, 16))(torch.randn(1, 8, 29, 16))


def test_attention_window_weights_matter():
    enc = AudioEncoder((29, 16))
    w = torch.randn(1, 8, 29, 16)
    w2 = w.clone()
    w2[0, 0] += 5.0
    assert not torch.allclose(enc(w), enc(w2))


def test_face_field_shapes_and_batching():
    torch.manual_seed(0)
    field = UniversalFaceField((80, 16))
    xyz = (torch.rand(50, 3) - 0.5) * 0.2
    audio = field.audio(torch.randn(4, 8, 80, 16))
    au = torch.rand(4, 6)
    m = field(xyz, audio, au)
    assert m.d_xyz.shape == (4, 50, 3) and m.d_rot.shape == (4, 50, 4) and m.d_scale.shape == (4, 50, 3)
    assert m.att_audio.shape == (50,) and m.att_eye.shape == (50,)
    one = field(xyz, audio[2:3], au[2:3])
    assert torch.allclose(one.d_xyz[0], m.d_xyz[2], atol=1e-6)  # frames are independent


def test_gradients_reach_positions_and_audio():
    field = UniversalFaceField((80, 16))
    xyz = ((torch.rand(30, 3) - 0.5) * 0.2).requires_grad_(True)
    window = torch.randn(1, 8, 80, 16)
    m = field(xyz, field.audio(window), torch.rand(1, 6))
    m.d_xyz.sum().backward()
    assert xyz.grad is not None and xyz.grad.abs().sum() > 0
    assert field.audio.net.convs[0].weight.grad.abs().sum() > 0


def test_mouth_field_damps_lateral_motion_and_gates():
    torch.manual_seed(1)
    field = UniversalMouthField((80, 16))
    xyz = (torch.rand(40, 3) - 0.5) * 0.1
    m = field(xyz, torch.randn(2, 32), torch.randn(2, 3))
    assert m.d_xyz.shape == (2, 40, 3) and m.d_rot.shape == (2, 40, 4)
    assert torch.isfinite(m.d_xyz).all()


def test_personalized_aligner_ranges():
    f = PersonalizedField("face", (80, 16))
    p_xyz, p_scale = f.align((torch.rand(20, 3) - 0.5) * 0.2)
    assert p_xyz.shape == (20, 3) and ((p_scale > 0.75) & (p_scale < 1.25)).all()
    m = PersonalizedField("mouth", (80, 16))(torch.zeros(5, 3), torch.randn(3, 32))
    assert m.d_xyz.shape == (3, 5, 3) and m.d_scale is None


def test_shared_audio_is_not_owned():
    face = UniversalFaceField((80, 16))
    p = PersonalizedField("face", (80, 16), shared_audio=face.audio)
    shared = {id(x) for x in face.audio.parameters()}
    assert not any(id(x) in shared for x in p.own_parameters())


def test_hook_values():
    d_y = torch.arange(20, dtype=torch.float32)[None] / 100.0  # 0.00 .. 0.19
    hook = hook_from_displacement(d_y, k=3)
    assert torch.allclose(hook, torch.tensor([[17.0, 2.0, 15.0]]))
    assert hook_from_displacement(torch.zeros(1, 2), k=10).shape == (1, 3)  # k larger than N is clamped


def test_hook_ignores_aus_and_is_the_same_in_training_and_inference():
    """The hook is computed by one function with AUs zeroed: eye AUs cannot move it, and the head's
    inference path (render_frames) and the training path (TalkingHead.hook) give the same value."""
    torch.manual_seed(0)
    head = TalkingHead.create("mel", (80, 16), face_init=200, mouth_init=100, generator=torch.Generator().manual_seed(0))
    window = torch.randn(2, 8, 80, 16)
    audio = head.face_field.audio(window)
    h1 = head.hook(audio, align=True)
    query, _, p_scale = head.face_aligner(True)
    h2 = face_mouth_hook(head.face_field, query, audio, p_scale)
    assert torch.allclose(h1, h2)
    with torch.no_grad():
        for p in head.face_field.expression.parameters():
            p.add_(torch.randn_like(p))
    assert torch.allclose(head.hook(audio, align=True), h1)  # AU branch does not change it


def test_talking_head_render_and_checkpoint_round_trip(tmp_path):
    head = TalkingHead.create("mel", (80, 16), face_init=150, mouth_init=80, generator=torch.Generator().manual_seed(0))
    cam = Camera.look_at((0, 0, 0.7), (0, 0, 0), focal=60, width=32, height=32)
    window, au, bg = torch.randn(8, 80, 16), torch.rand(6), torch.rand(3, 32, 32)
    out = head.render_frame(cam, window, au, bg, dilate=True)
    assert out["image"].shape == (3, 32, 32) and out["face_alpha"].shape == (1, 32, 32)
    assert 0 <= float(out["image"].min()) and float(out["image"].max()) <= 1
    batch = head.render_frames([cam, cam], window[None].repeat(2, 1, 1, 1), au[None].repeat(2, 1), bg[None].repeat(2, 1, 1, 1), dilate=True)
    assert torch.allclose(batch["image"][0], out["image"], atol=1e-5)
    head.save(tmp_path)
    loaded = TalkingHead.load(tmp_path, device="cpu")
    assert loaded.audio_extractor == "mel" and loaded.item_shape == (80, 16)
    again = loaded.render_frame(cam, window, au, bg, dilate=True)
    assert torch.allclose(again["image"], out["image"], atol=1e-5)
    with pytest.raises(InstagError, match="mel"):
        loaded.render_frame(cam, torch.randn(8, 29, 16), au, bg)


def test_load_missing_model_is_clear(tmp_path):
    with pytest.raises(InstagError, match="no trained model"):
        TalkingHead.load(tmp_path / "nothing")
