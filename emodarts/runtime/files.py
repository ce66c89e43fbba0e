"""Atomic, durable file writes (a crash never leaves a half-written checkpoint, genotype or cache entry)
and JSON-lines logs that survive a write cut off by a kill."""
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any, Callable, List, Tuple

from emodarts.runtime.errors import EmodartsError

# `.NAME.XXXXXXXX.tmp`: the temporary files of atomic_write (8 characters of mkstemp's or our own alphabet)
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def fsync_file(path: Path) -> None:
    """Flush a written file's data to the disk, so that a rename over the old file never exposes an
    empty or partial file after a power loss."""
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable; a no-op where directories cannot be opened (Windows) or
    synced (some network file systems)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _new_temp(folder: Path, name: str) -> Path:
    """Create an empty `.NAME.XXXXXXXX.tmp` in `folder` with the user's umask (mkstemp would make it 0600,
    and the rename would keep that mode)."""
    while True:
        tmp = folder / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def make_temp_dir(folder: Path, name: str) -> Path:
    """Create an empty `.NAME.XXXXXXXX` folder in `folder` with the user's umask (mkdtemp makes 0700)."""
    while True:
        tmp = Path(folder) / f".{name}.{secrets.token_hex(4)}"
        try:
            os.mkdir(tmp, 0o777)
            return tmp
        except FileExistsError:
            continue


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp_path), fsync it, rename it over `path` (same folder, so the rename is atomic) and
    fsync the folder: after a crash `path` is either the old file or the new one, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(path.parent, path.name)
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def remove_stale_temps(folder: Path) -> List[Path]:
    """Delete the temporary files of atomic writes that a kill left in `folder` (not in subfolders).
    Only safe where no other process writes into `folder`: call it when a run folder is opened for resume
    (a run folder has one writer, and its own writes of this process are finished by then)."""
    folder, removed = Path(folder), []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if _TEMP_NAME.match(p.name) and p.is_file() and not p.is_symlink():
            try:
                p.unlink()
                removed.append(p)
            except FileNotFoundError:
                pass
    return removed


def append_jsonl(path: Path, record: Any) -> None:
    """Append one record as one line, flushed to the disk (so that it is there before the checkpoint that
    follows it; a kill mid-write leaves a last line without its newline, which read_jsonl recognises)."""
    with open(path, "a") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: Path, required: Tuple[str, ...] = ()) -> Tuple[List[dict], bool]:
    """(records, torn) of a JSON-lines log; torn: its last line was cut off by a kill (no newline and not
    valid JSON) and is left out. Any other line that is not a JSON object with the `required` keys raises
    an EmodartsError naming the file and the line number. A missing file has no records."""
    path = Path(path)
    if not path.exists():
        return [], False
    text = path.read_text(errors="replace")
    lines = text.split("\n")  # the part after the last newline: "" or a torn line
    records, torn = [], False
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        last = number == len(lines)
        try:
            rec = json.loads(line)
        except ValueError as exc:
            if last:
                torn = True
                break
            raise EmodartsError(f"{path}, line {number}: not valid JSON ({exc}); fix or delete that line") from None
        if not isinstance(rec, dict):
            raise EmodartsError(f"{path}, line {number}: not a JSON object; fix or delete that line")
        missing = [k for k in required if k not in rec]
        if missing:
            raise EmodartsError(f"{path}, line {number}: no {', '.join(map(repr, missing))} field; fix or "
                                f"delete that line")
        records.append(rec)
    return records, torn


def torn_line_note(path: Path) -> str:
    """The one line that says a torn last line was left out."""
    return f"{path}: its last line was cut off by an interrupted write and is left out"
