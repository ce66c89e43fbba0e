"""emodarts: joint CNN + sequential differentiable architecture search for speech emotion recognition.

Importing the package needs only torch and numpy; librosa, torchaudio, triton and the compiled
extension are imported where they are used.
"""
__version__ = "0.1.0"
