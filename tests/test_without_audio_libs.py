"""The GPU machine has torch, torchaudio and triton but no soundfile, cffi or librosa: there PCM WAV is read
and written with the standard library (as soundfile does, sample for sample and byte for byte), features come
from the torchaudio extractor (`auto`), the GPU tests collect, and `emodarts search --fused --corpus
synthetic` runs. Checked here with those packages made unimportable."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import GPU_MACHINE_MISSING, env_without

import emodarts.data.wav as wav
import emodarts.features.audio as audio
from emodarts.features import AudioError, read_audio
from emodarts.features import extractor_choice
from emodarts.runtime.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def sf():
    return pytest.importorskip("soundfile", reason="compares the standard-library WAV path with soundfile's")


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32"])
@pytest.mark.parametrize("channels", [1, 2, 3])
def test_pcm_wav_reads_as_soundfile_does(sf, tmp_path, subtype, channels):
    rng = np.random.default_rng(channels)
    x = rng.uniform(-1, 1, (1237, channels)).astype(np.float32)
    x[:2] = [[1.0] * channels, [-1.0] * channels]
    path = str(tmp_path / "a.wav")
    sf.write(path, x, 22050, subtype=subtype)
    ours, rate, facts = wav.read_pcm_wav(path)
    theirs = sf.read(path, dtype="float32", always_2d=True)[0]
    assert rate == 22050 and facts == {"channels": channels, "subtype": subtype, "format": "WAV"}
    np.testing.assert_array_equal(ours, theirs)
    assert wav.pcm_wav_facts(path) == {"sr": 22050, "channels": channels, "subtype": subtype, "frames": 1237}


def test_wav_writer_gives_soundfiles_bytes(sf, tmp_path, monkeypatch):
    """Random samples, full scale and values a hair either side of a rounding boundary: the same bytes."""
    rng = np.random.default_rng(0)
    k = rng.integers(-32768, 32767, 20000)
    y = np.concatenate([rng.uniform(-1, 1, 50000), (k + rng.uniform(-3e-5, 3e-5, k.size)) / 32768,
                        [1.0, -1.0, 0.99999, -0.99999, 0.0, 0.00088500965]]).astype(np.float32)
    sf.write(str(tmp_path / "sf.wav"), y, 16000, subtype="PCM_16", format="WAV")
    monkeypatch.setattr(wav, "soundfile_installed", lambda: False)
    wav.write_wav(tmp_path / "ours.wav", y, 16000)
    assert (tmp_path / "ours.wav").read_bytes() == (tmp_path / "sf.wav").read_bytes()


def test_without_soundfile_other_formats_are_unreadable_with_the_reason(sf, tmp_path, monkeypatch):
    flac, float_wav = str(tmp_path / "a.flac"), str(tmp_path / "f.wav")
    sf.write(flac, np.zeros(4000, np.float32), 16000)
    sf.write(float_wav, np.zeros(4000, np.float32), 16000, subtype="FLOAT")
    monkeypatch.setattr(audio, "soundfile_installed", lambda: False)
    for path in (flac, float_wav):
        with pytest.raises(AudioError, match="soundfile is not installed") as err:
            read_audio(path)
        assert err.value.kind == "unreadable" and path in str(err.value)
        assert audio.audio_facts(path) is None


def test_auto_extractor_is_torchaudio_without_librosa(monkeypatch):
    monkeypatch.setattr(extractor_choice, "librosa_installed", lambda: False)
    assert extractor_choice.resolve_extractor("auto") == "torchaudio"
    assert extractor_choice.resolve_extractor("torchaudio") == "torchaudio"
    assert extractor_choice.resolve_extractor("librosa", kind="npy") == "librosa"  # .npy needs no librosa
    with pytest.raises(DataError, match="librosa is not installed here; use --backend torchaudio"):
        extractor_choice.resolve_extractor("librosa")
    with pytest.raises(DataError, match="unknown feature extractor .*'sox'"):
        extractor_choice.resolve_extractor("sox")
    monkeypatch.setattr(extractor_choice, "librosa_installed", lambda: True)
    assert extractor_choice.resolve_extractor("auto") == "librosa"


def test_gpu_tests_collect_without_soundfile_and_librosa(tmp_path):
    """`pytest -m gpu` on the GPU machine: every module imports, nothing errors at collection."""
    env = env_without(GPU_MACHINE_MISSING, tmp_path / "block")
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "-p",
                           "no:cacheprovider", "tests"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "error" not in out.lower().split("collected")[-1] and "ModuleNotFoundError" not in out, out[-4000:]
    collected = [line for line in proc.stdout.splitlines() if "::" in line]
    assert any("test_gpu_kernels.py" in c for c in collected) and any("test_gpu_supernet.py" in c
                                                                       for c in collected), out[-2000:]


def test_fused_search_on_the_synthetic_corpus_without_soundfile_and_librosa(tmp_path):
    """The GPU machine's command, on this CPU: the synthetic corpus written with the standard library, its
    features from the torchaudio extractor, one fused search epoch and one training epoch; then `predict`
    computes a clip's features with torchaudio too."""
    env = env_without(GPU_MACHINE_MISSING, tmp_path / "block")
    env["EMODARTS_HOME"] = str(tmp_path / "home")
    run = tmp_path / "run"
    cli = [sys.executable, "-c", "from emodarts.cli.commands import main; main()"]
    proc = subprocess.run([*cli, "run", "--fused", "--corpus", "synthetic", "--preset", "tiny", "--epochs", "1",
                           "--train-epochs", "1", "--out", str(run), "--no-progress"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert (run / "genotype.json").exists()
    clip = next((tmp_path / "home" / "synthetic").rglob("*.wav"))
    proc = subprocess.run([*cli, "predict", str(run), str(clip), "--json"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert set(json.loads(proc.stdout)[0]["probs"]) == {"angry", "happy", "neutral", "sad"}
    assert not (run / "report").exists()  # no matplotlib there either: the run says so and ends well
    indexes = list((tmp_path / "home" / "features").glob("*/index.json"))
    assert len(indexes) == 1 and '"backend": "torchaudio"' in indexes[0].read_text()
    probe = subprocess.run([sys.executable, "-c", "import soundfile"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "soundfile" in probe.stderr  # the block held in the child processes too
