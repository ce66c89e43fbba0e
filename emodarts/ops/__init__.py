"""Candidate operations, mixed operations and the backend switch (reference | fused)."""
