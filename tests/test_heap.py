"""The CLI's heap policy (emodarts/runtime/heap.py): glibc keeps freed memory unless EMODARTS_HEAP=default."""
import sys

import pytest
from click.testing import CliRunner

from emodarts.cli.commands import cli
from emodarts.runtime.heap import DEFAULT_HEAP, apply_heap, heap_mode, keep_freed_memory


def test_mode_from_the_environment(monkeypatch):
    monkeypatch.delenv("EMODARTS_HEAP", raising=False)
    assert heap_mode() == DEFAULT_HEAP
    monkeypatch.setenv("EMODARTS_HEAP", "default")
    assert heap_mode() == "default" and apply_heap("default") is False
    monkeypatch.setenv("EMODARTS_HEAP", "huge")
    with pytest.raises(ValueError, match="EMODARTS_HEAP"):
        heap_mode()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_glibc_accepts_the_settings():
    assert keep_freed_memory() is True


def test_cli_refuses_an_unknown_mode_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("EMODARTS_HEAP", "huge")
    result = CliRunner().invoke(cli, ["search", "--out", str(tmp_path / "r"), "--no-progress"])
    assert result.exit_code == 2 and "EMODARTS_HEAP" in result.output
    assert not (tmp_path / "r").exists()
