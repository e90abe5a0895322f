"""Files on disk: written atomically (temp name, then rename) and carrying a checksum of their content.

A cache is only as good as its bytes: a flipped bit in a factor file or a scan chunk would change scores
silently. Every tensor file records the SHA-256 of its tensors in its metadata and `load_tensors` checks it;
a directory of files (a trained model, a corpus) records one per file in `checksums.json`. A mismatch raises
`CorruptFileError`, which callers turn into a recomputation (factors, a scan chunk, a breakdown) or one line
naming the file. Temporary files carry their writer's host and pid, so a process cleaning up after a kill
removes only the temporaries of writers that are gone, never a live writer's.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .errors import InfluenceError

log = logging.getLogger(__name__)

#: the metadata key of a tensor file's content checksum
CHECKSUM_KEY = "content_sha256"
#: the per-file checksums of a directory written by `write_checksums`
CHECKSUMS_FILE = "checksums.json"
#: write failures that no retry fixes: the user must free space or choose a writable directory
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


class CorruptFileError(InfluenceError):
    """A file whose bytes do not match what was written (checksum mismatch, truncation, garbage)."""

    def __init__(self, path: str | Path, what: str, fix: str):
        self.path = Path(path)
        super().__init__(f"{path} {what}: {fix}")


def write_failure(path: str | Path, e: OSError) -> InfluenceError:
    """One line for a failed write: the file, the system's reason and what to do."""
    reason = e.strerror or str(e)
    return InfluenceError(f"could not write {path}: {reason} (free disk space or choose a writable paths.output_dir)")


def _owner_tag() -> str:
    return f"{host_tag()}-{os.getpid()}"


def _temp_name(path: Path) -> str:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_owner_tag()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return tmp


def atomic_write(path: str | Path, write) -> None:
    """Call `write(tmp_path)` then rename onto `path`; on any failure no partial file remains."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def host_tag() -> str:
    """This host's name as temporaries and run statuses record it (no dots, so names split on them)."""
    return socket.gethostname().replace(".", "_")


def process_alive(host: str, pid) -> bool:
    """Whether process `pid` on `host` still runs. One on another host, or one this process cannot look up, is
    presumed alive (never delete or take over what might be in use)."""
    if host not in (host_tag(), socket.gethostname()):
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError, TypeError):  # another user's, or not a pid
        return True
    return True


def probe_writable(directory: str | Path) -> None:
    """Create `directory` and a file in it (removed again): raises the OSError a real write there would."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tempfile.NamedTemporaryFile(dir=directory, prefix=".write-probe-").close()


def _writer_gone(name: str) -> bool:
    """Whether the temporary `name` (".<file>.<host>-<pid>.<random>.tmp") was left by a process that has ended."""
    parts = name.split(".")
    if len(parts) < 4 or "-" not in parts[-3]:
        return False
    host, _, pid = parts[-3].rpartition("-")
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    return not process_alive(host, pid)


def remove_stale_temporaries(directory: str | Path, pattern: str = ".*.tmp") -> list[Path]:
    """Delete the temporaries in `directory` whose writer has ended (cut off by a kill); keep live writers'."""
    removed = []
    for p in Path(directory).glob(pattern):
        if _writer_gone(p.name):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike):
    """Yield a temporary directory beside `final`; rename it to `final` only if the block succeeds, with a
    `checksums.json` of every file it holds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{_owner_tag()}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        write_checksums(tmp)
        if final.exists():  # another process finished first: keep its result
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != CHECKSUMS_FILE)


def write_checksums(directory: str | Path) -> None:
    """`checksums.json` in `directory`: the SHA-256 of every file below it, by relative path."""
    directory = Path(directory)
    sums = {str(p.relative_to(directory)): file_sha256(p) for p in _files(directory)}
    atomic_write_text(directory / CHECKSUMS_FILE, json.dumps(sums, indent=1, sort_keys=True))


def verify_checksums(directory: str | Path, fix: str) -> bool:
    """Check every file listed in `directory/checksums.json`; False when the directory has none (written by an
    older version). A missing, changed or unreadable file raises CorruptFileError naming it, with `fix`."""
    directory = Path(directory)
    listing = directory / CHECKSUMS_FILE
    if not listing.exists():
        return False
    try:
        sums = json.loads(listing.read_text())
    except (OSError, ValueError):
        raise CorruptFileError(listing, "is corrupt", fix) from None
    for name, digest in sums.items():
        p = directory / name
        if not p.exists():
            raise CorruptFileError(p, "is missing", fix)
        if file_sha256(p) != digest:
            raise CorruptFileError(p, "does not match its checksum (the file is corrupt)", fix)
    return True


def check_dir(directory: str | Path, fix: str) -> None:
    """Verify `directory` against its `checksums.json`. One written before checksums existed has them recorded
    now (trusted on first use; nothing earlier can tell its bytes are the ones written)."""
    if verify_checksums(directory, fix):
        return
    log.info("recording checksums of %s (written by an older version)", directory)
    with contextlib.suppress(OSError):  # a read-only directory stays unrecorded
        write_checksums(directory)


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of named tensors: names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Safetensors with string metadata and the content checksum, written atomically."""
    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {k: str(v) for k, v in metadata.items()} | {CHECKSUM_KEY: tensors_sha256(clean)}
    try:
        atomic_write(path, lambda tmp: save_file(clean, tmp, metadata=meta))
    except OSError as e:
        raise write_failure(path, e) from None
    except SafetensorError as e:  # safetensors reports its OS errors in its own type
        reason = str(e).split(":")[-1].strip()
        raise InfluenceError(
            f"could not write {path}: {reason} (free disk space or choose a writable paths.output_dir)"
        ) from None


def load_tensors(
    path: str | Path, require_checksum: bool = False, fix: str = "delete it so it is recomputed"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A tensor file and its metadata (less the checksum), verified against the checksum it carries.

    Unreadable bytes or a mismatch raise CorruptFileError; so does a file without a checksum when
    `require_checksum` (a cache written by an older version, which cannot be verified)."""
    path = Path(path)
    if not path.exists():
        raise InfluenceError(f"no file at {path}: fit it first or fix the path")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CorruptFileError(path, f"is corrupt or not a safetensors file ({e})", fix) from None
    digest = meta.pop(CHECKSUM_KEY, None)
    if digest is None and require_checksum:
        raise CorruptFileError(path, "carries no checksum (written by an older version)", fix)
    if digest is not None and tensors_sha256(tensors) != digest:
        raise CorruptFileError(path, "does not match its checksum (the file is corrupt)", fix)
    return tensors, meta
