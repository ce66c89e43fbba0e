"""Search, final training, evaluation and cross-validation of a run: what turns a model and data into results."""
