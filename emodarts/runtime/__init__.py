"""Process-level helpers every layer may use: errors, atomic files, threads, heap, precision, progress, ranks."""
