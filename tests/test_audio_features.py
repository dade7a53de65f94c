"""Audio extractors (mel and, with tiny generated weights, the optional ones), windows, CLI."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from instag.audio import ITEM_SHAPES, frame_window, frame_windows, get_extractor, load_features
from instag.audio import ave as ave_mod
from instag.audio import deepspeech as ds
from instag.audio.cli import main as features_main
from instag.audio.cli import upstream_argv
from instag.audio.mel import hz_to_mel, log_mel_windows, mel_to_hz
from instag.data.format import AUDIO_FEATURE_FILES
from instag.errors import InstagError
from instag.io.wav import resample, write_wav

SR = 16000
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise bursts at a syllable rate with a voiced tone: enough structure for the features."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    envelope = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 2
    sig = envelope * (0.3 * np.sin(2 * np.pi * 180 * t) + 0.1 * rng.standard_normal(n))
    return sig.astype(np.float32)


# ---------------------------------------------------------------- registry and mel
def test_registry_shapes_and_names():
    for name, shape in ITEM_SHAPES.items():
        ext = get_extractor(name)  # never loads weights
        assert ext.name == name and ext.item_shape == shape
        assert ext.file_item_shape == shape[::-1]
        assert ext.file_name == AUDIO_FEATURE_FILES[name]
    assert ITEM_SHAPES["mel"] == (80, 16)
    with pytest.raises(InstagError, match="unknown audio extractor"):
        get_extractor("wav2lip")


def test_mel_layout_length_and_centring():
    x = np.zeros(12 * SR, np.float32)
    burst = slice(int(4.0 * SR) - 160, int(4.0 * SR) + 160)  # 20 ms tone at t = 4 s = frame 100
    x[burst] = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(320) / SR)
    feats = get_extractor("mel").extract(x)
    assert feats.shape == (300, 16, 80) and feats.dtype == np.float32
    energy = feats.max(axis=2)  # [T, 16]
    assert energy[100].argmax() == 8  # tap 8 of frame i's window is the mel row at time i/25
    assert energy[99].argmax() == 10 and energy[101].argmax() == 6
    assert feats[:90].max() == pytest.approx(-1.0)  # silence maps to -1
    assert get_extractor("mel").extract(x, num_frames=320).shape == (320, 16, 80)  # padded with silence
    assert get_extractor("mel").extract(x[:SR], num_frames=10).shape == (10, 16, 80)


def test_mel_is_robust_to_recording_level():
    x = _speechlike(3.0)
    loud, quiet = log_mel_windows(x), log_mel_windows(0.05 * x)
    speech = loud > 0
    assert speech.mean() > 0.1
    np.testing.assert_allclose(loud[speech], quiet[speech], atol=0.02)
    assert np.isfinite(log_mel_windows(np.zeros(SR, np.float32))).all()
    assert np.all(log_mel_windows(np.zeros(SR, np.float32)) == -1.0)


def test_slaney_mel_scale():
    assert float(hz_to_mel(1000.0)) == pytest.approx(15.0)
    hz = np.array([55.0, 400.0, 1000.0, 3000.0, 7600.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(hz)), hz, rtol=1e-9)


def test_mel_extraction_speed():
    x = _speechlike(12.0)
    get_extractor("mel").extract(x)
    import time

    start = time.perf_counter()
    get_extractor("mel").extract(x)
    assert time.perf_counter() - start < 1.0


# ---------------------------------------------------------------- windows
def _save(path: Path, arr: np.ndarray) -> Path:
    np.save(path, arr)
    return path


def test_load_features_permutes_and_fits_length(tmp_path):
    arr = np.arange(50 * 16 * 29, dtype=np.float32).reshape(50, 16, 29)
    path = _save(tmp_path / "aud_ds.npy", arr)
    out = load_features(path, "deepspeech", 50)
    assert out.shape == (50, 29, 16)
    np.testing.assert_array_equal(out[3], arr[3].T)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_features(path, "deepspeech", 51).shape == (51, 29, 16)  # one row: silent
    with pytest.warns(UserWarning, match="repeating the last row"):
        padded = load_features(path, "deepspeech", 53)
    np.testing.assert_array_equal(padded[52], arr[49].T)
    with pytest.warns(UserWarning, match="trimming"):
        assert load_features(path, "deepspeech", 47).shape == (47, 29, 16)


def test_load_features_refuses_bad_files(tmp_path):
    with pytest.raises(InstagError, match="not found") as err:
        load_features(tmp_path / "aud_hu.npy", "hubert", 10)
    assert "instag features" in str(err.value)
    path = _save(tmp_path / "aud_hu.npy", np.zeros((10, 16, 29), np.float32))
    with pytest.raises(InstagError, match=r"\[T, 2, 1024\]"):
        load_features(path, "hubert", 10)
    short = _save(tmp_path / "aud_eo.npy", np.zeros((40, 16, 44), np.float32))
    with pytest.raises(InstagError, match="40 rows but the video has 250 frames") as err:
        load_features(short, "esperanto", 250)
    assert str(short) in str(err.value) and "\n" not in str(err.value)
    bad = np.zeros((10, 512, 1), np.float32)
    bad[3, 5, 0] = np.nan
    with pytest.raises(InstagError, match="NaN"):
        load_features(_save(tmp_path / "aud_ave.npy", bad), "ave", 10)
    (tmp_path / "aud_mel.npy").write_bytes(b"garbage")
    with pytest.raises(InstagError, match="cannot read"):
        load_features(tmp_path / "aud_mel.npy", "mel", 10)


def test_deepspeech_file_falls_back_to_upstream_name(tmp_path):
    _save(tmp_path / "aud.npy", np.ones((20, 16, 29), np.float32))
    assert load_features(tmp_path / "aud_ds.npy", "deepspeech", 20).shape == (20, 29, 16)


def test_frame_window_zero_pads_and_batches():
    feats = torch.arange(1, 11, dtype=torch.float32)[:, None, None].expand(10, 3, 2).contiguous()
    w = frame_window(feats, 0)
    assert w.shape == (8, 3, 2)
    assert w[:, 0, 0].tolist() == [0, 0, 0, 0, 1, 2, 3, 4]  # items i-4 .. i+3
    assert frame_window(feats, 9)[:, 0, 0].tolist() == [6, 7, 8, 9, 10, 0, 0, 0]
    batch = frame_windows(feats, torch.tensor([0, 5, 9]))
    assert batch.shape == (3, 8, 3, 2)
    torch.testing.assert_close(batch[1], frame_window(feats, 5))
    np_win = frame_window(feats.numpy(), 5)
    assert isinstance(np_win, np.ndarray) and np_win[:, 0, 0].tolist() == [2, 3, 4, 5, 6, 7, 8, 9]


# ---------------------------------------------------------------- DeepSpeech (front-end always, graph with TF)
def test_deepspeech_front_end_and_windows():
    x = _speechlike(2.0)
    vec = ds.network_input(x)
    assert vec.shape == (100, 19 * 26)  # 199 MFCC rows at 100 Hz (25 ms frames), every second kept
    assert abs(vec.mean()) < 1e-4 and abs(vec.std() - 1) < 1e-3
    cep = ds.mfcc(np.round(x * 32768))
    assert cep.shape == (199, 26) and np.isfinite(cep).all()
    logits = np.tile(np.arange(100, dtype=np.float32)[:, None], (1, 29))  # value = step index
    win = ds.logits_to_windows(logits, 2.0, None)
    assert win.shape == (50, 16, 29)
    assert win[10, 8, 0] == pytest.approx(20.0)  # frame i is centred on step 2i
    assert win[0, :8].max() == 0.0  # zero padding before the start
    assert ds.logits_to_windows(logits, 2.0, 60).shape == (60, 16, 29)


def test_deepspeech_missing_graph_says_where(tmp_path):
    ext = get_extractor("deepspeech", weights=tmp_path / "nope.pb")
    with pytest.raises(InstagError, match="put it at") as err:
        ext.extract(np.zeros(SR, np.float32))
    assert "\n" not in str(err.value)


def test_deepspeech_tiny_frozen_graph(tmp_path):
    tf = pytest.importorskip("tensorflow", reason="tensorflow (the deepspeech extra) is not installed")
    graph = tf.Graph()
    with graph.as_default():
        inputs = tf.compat.v1.placeholder(tf.float32, [1, None, 494], name="input_node")
        tf.compat.v1.placeholder(tf.int32, [None], name="input_lengths")
        weights = tf.constant(np.random.default_rng(0).standard_normal((494, 29)).astype(np.float32) * 0.01)
        logits = tf.transpose(tf.tensordot(inputs, weights, axes=1), [1, 0, 2])  # time-major [T, 1, 29]
        tf.identity(logits, name="logits")
    pb = tmp_path / ds.GRAPH_NAME
    pb.write_bytes(graph.as_graph_def().SerializeToString())
    out = get_extractor("deepspeech", weights=pb).extract(_speechlike(2.0), 50)
    assert out.shape == (50, 16, 29) and np.isfinite(out).all() and np.abs(out[10:40]).max() > 0


# ---------------------------------------------------------------- wav2vec / HuBERT with tiny generated models
def _tiny_hf_kwargs():
    return dict(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8,) * 7,
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        num_conv_pos_embeddings=4,
        num_conv_pos_embedding_groups=2,
    )


def test_esperanto_and_hubert_with_tiny_models(tmp_path):
    transformers = pytest.importorskip(
        "transformers", reason="transformers (the hubert/esperanto extra) is not installed"
    )
    torch.manual_seed(0)
    transformers.Wav2Vec2ForCTC(transformers.Wav2Vec2Config(vocab_size=44, **_tiny_hf_kwargs())).save_pretrained(
        tmp_path / "eo"
    )
    transformers.HubertModel(transformers.HubertConfig(**_tiny_hf_kwargs())).save_pretrained(tmp_path / "hu")
    x = _speechlike(2.5)
    eo = get_extractor("esperanto", weights=tmp_path / "eo", device="cpu")
    logits = eo.logits(x)
    assert logits.shape == (125, 44)  # one per 20 ms
    feats = eo.extract(x)
    assert feats.shape == (63, 16, 44)  # upstream's unfold: M/2 + 1
    np.testing.assert_allclose(feats[10, 8], logits[20], rtol=1e-5)  # window i centred on step 2i
    assert eo.extract(x, 62).shape == (62, 16, 44)
    hu = get_extractor("hubert", weights=tmp_path / "hu", device="cpu")
    states = hu.hidden_states(x)
    assert states.shape == ((x.size - 80) // 320, 16)
    pairs = hu.extract(x)
    assert pairs.shape == (62, 2, 16)
    np.testing.assert_allclose(pairs[3, 1], states[7], rtol=1e-5)
    with pytest.raises(InstagError, match="not found locally"):
        get_extractor("hubert", weights=tmp_path / "missing", device="cpu").extract(x)


# ---------------------------------------------------------------- AVE with a random state dict of SyncTalk's layout
def _random_ave_state(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for i, (cin, cout, k, _stride, _pad, _res) in enumerate(ave_mod._LAYOUT):
        state[f"{i}.conv_block.0.weight"] = torch.randn(cout, cin, k, k, generator=gen) * (2.0 / (cin * k * k)) ** 0.5
        state[f"{i}.conv_block.0.bias"] = torch.randn(cout, generator=gen) * 0.01
        state[f"{i}.conv_block.1.weight"] = 1 + 0.1 * torch.randn(cout, generator=gen)
        state[f"{i}.conv_block.1.bias"] = 0.1 * torch.randn(cout, generator=gen)
        state[f"{i}.conv_block.1.running_mean"] = 0.1 * torch.randn(cout, generator=gen)
        state[f"{i}.conv_block.1.running_var"] = 1 + torch.rand(cout, generator=gen)
        state[f"{i}.conv_block.1.num_batches_tracked"] = torch.tensor(1000)
    return state


def test_ave_loads_synctalk_layout_and_pads(tmp_path):
    state = _random_ave_state()
    assert len(state) == 13 * 7
    pth = tmp_path / "audio_visual_encoder.pth"
    torch.save(state, pth)
    ext = get_extractor("ave", weights=pth, device="cpu")
    x = _speechlike(2.0)
    out = ext.extract(x)
    rows = x.size // 200 + 1
    count = int((rows - 16) / 80 * 25) + 2
    assert out.shape == (count + 4, 512, 1) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], out[2])  # two copies of the first embedding
    np.testing.assert_array_equal(out[-1], out[-3])
    assert ext.extract(x, 50).shape == (50, 512, 1)
    loaded = ext._model.state_dict()
    for key, value in state.items():
        torch.testing.assert_close(loaded[key], value)
    prefixed = tmp_path / "prefixed.pth"
    torch.save({f"audio_encoder.{k}": v for k, v in state.items()}, prefixed)
    np.testing.assert_allclose(
        get_extractor("ave", weights=prefixed, device="cpu").extract(x), out, rtol=1e-5, atol=1e-6
    )


def test_ave_mel_front_end_and_errors(tmp_path):
    mel = ave_mod.wav2lip_mel(_speechlike(1.0))
    assert mel.shape == (81, 80) and float(mel.min()) >= -4 and float(mel.max()) <= 4
    patches = ave_mod.mel_patches(mel)
    assert patches.shape == (int((81 - 16) / 80 * 25) + 2, 1, 80, 16)
    torch.testing.assert_close(patches[5, 0], mel[16:32].T)  # frame 5 starts at int(3.2 * 5) = 16
    with pytest.raises(InstagError, match="put it at"):
        get_extractor("ave", weights=tmp_path / "audio_visual_encoder.pth").extract(np.zeros(SR, np.float32))
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(3)}, wrong)
    with pytest.raises(InstagError, match="does not match"):
        get_extractor("ave", weights=wrong).extract(np.zeros(SR, np.float32))


# ---------------------------------------------------------------- CLI and upstream entry points
def test_features_cli_writes_default_name(tmp_path, capsys):
    wav = tmp_path / "aud.wav"
    write_wav(wav, resample(np.stack([_speechlike(2.0)] * 2, axis=1), SR, 44100), 44100)  # stereo 44.1 kHz
    assert features_main(["--wav", str(wav)]) == 0  # whisper, the default
    out = np.load(tmp_path / "aud_wh.npy")
    assert out.shape == (50, 2, 512)
    assert load_features(tmp_path / "aud_wh.npy", "whisper", 50).shape == (50, 512, 2)
    assert "aud_wh.npy" in capsys.readouterr().out
    assert features_main(["--wav", str(wav), "--extractor", "mel"]) == 0
    out = np.load(tmp_path / "aud_mel.npy")
    assert out.shape == (50, 16, 80)
    assert load_features(tmp_path / "aud_mel.npy", "mel", 50).shape == (50, 80, 16)
    with pytest.raises(InstagError, match="not found"):
        features_main(["--wav", str(tmp_path / "missing.wav")])


def test_upstream_argv_translation():
    assert upstream_argv("esperanto", ["--wav", "d/aud.wav", "--save_feats"]) == [
        "--wav",
        "d/aud.wav",
        "--extractor",
        "esperanto",
        "--out",
        "d/aud_eo.npy",
    ]
    assert upstream_argv("hubert", ["--wav", "d/aud.wav"])[-1] == "d/aud_hu.npy"
    assert upstream_argv("deepspeech", ["--input", "d/aud.wav"])[-1] == "d/aud.npy"
    assert upstream_argv("esperanto", ["--wav", "a.wav", "--model", "m", "-m", "50"])[-2:] == ["--weights", "m"]
