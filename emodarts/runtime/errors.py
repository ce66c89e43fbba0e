"""User-facing errors: the CLI prints these as one clear message and exits non-zero."""


class EmodartsError(Exception):
    """An error caused by the user's input (a file, a folder, an option), not by a bug."""


class DataError(EmodartsError):
    """Unusable audio, labels, manifests or corpus folders. The message names the file."""


class GenotypeError(EmodartsError):
    """A malformed or mismatching genotype file. The message names the field."""


class CheckpointError(EmodartsError):
    """A checkpoint that cannot be resumed (missing, or from another configuration)."""


class BackendError(EmodartsError):
    """A requested backend (e.g. --fused) that is not available on this machine."""
