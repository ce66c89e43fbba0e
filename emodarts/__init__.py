"""emodarts: joint CNN + sequential differentiable architecture search for speech emotion recognition.

Importing the package needs only torch and numpy; librosa, torchaudio, triton and the compiled
extension are imported where they are used.
"""
__version__ = "0.1.0"

_API = ("Config", "search", "train", "evaluate", "load")


def __getattr__(name: str):
    """The Python API (emodarts/api.py), imported on first use: `import emodarts` stays light."""
    if name in _API:
        from emodarts import api

        return getattr(api, name)
    raise AttributeError(f"module 'emodarts' has no attribute {name!r}")


__all__ = list(_API)
