"""Where a checkpoint's files are on this machine: a local directory as given, or a Hugging Face hub id's snapshot.

`model.path` (and each checkpoint in `scale.sizes`) is either a local directory saved with `save_pretrained`, or
a hub id `org/name` with a `model.revision` (a branch, tag or commit: Pythia's `step143000`). A hub id is
resolved to the directory `huggingface_hub` keeps its snapshot in (`$HF_HUB_CACHE`, by default
~/.cache/huggingface/hub/models--org--name/snapshots/<commit>), so every reader downstream (the config, weight and
tokenizer checks, the loader, the memory plan) reads a local directory and nothing else knows about the hub.

Why the cache is looked at first and the hub only when the snapshot is missing: a run (and each point of a
sweep, and the checks before it) resolves its checkpoint several times; once downloaded, a revision resolves
without a network, so a run on a cluster node without internet works after `hf download ID --revision R` on a
login node, and a cached branch stays what it was downloaded as (the commit hash in the world's fingerprint
says which). Offline (`HF_HUB_OFFLINE=1`, or no network) with no snapshot cached, resolution fails in one line
naming the three ways out. Only what a causal LM needs is downloaded: configs, tokenizer files and one weight
format (safetensors when the revision has them, else the PyTorch .bin files).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi, constants, snapshot_download, try_to_load_from_cache
from huggingface_hub.utils import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

from influence.errors import InfluenceError

#: `org/name`, as the hub spells repository ids (a bare `name`, or a path with more parts, is a local path)
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
#: the files of a revision a causal LM needs besides its weights: configs, tokenizers, vocabularies
NEEDED = ["*.json", "*.txt", "*.model", "*.tiktoken", "tokenizer*"]
WEIGHTS = ("*.safetensors", "*.bin")


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint as the run reads it: its local directory, a name safe as a directory name, and its identity."""

    path: str  # a local directory with config.json, weights and tokenizer
    name: str  # the stem of the world's name (the directory's name, or org--name[-revision])
    key: str  # what the world's fingerprint hashes: the resolved local path, or `org/name@<commit hash>`


def is_hub_id(path: str) -> bool:
    """A hub id: `org/name` that is not an existing local path (a local directory always wins)."""
    p = str(path)
    return bool(HUB_ID.fullmatch(p)) and ".." not in p and "--" not in p and not Path(p).expanduser().exists()


def split_revision(spec: str) -> tuple[str, str | None]:
    """`org/name@revision` (a `scale.sizes` entry) as (id, revision); without `@`, (spec, None)."""
    spec = str(spec)
    if "@" in spec and is_hub_id(spec.split("@", 1)[0]):
        repo_id, revision = spec.split("@", 1)
        return repo_id, revision or None
    return spec, None


def safe_name(repo_id: str, revision: str | None) -> str:
    """`org--name[-revision]`: a hub checkpoint's name as a directory name (a revision's `/` becomes `_`)."""
    name = repo_id.replace("/", "--")
    return name if revision is None else f"{name}-{re.sub(r'[^A-Za-z0-9._-]+', '_', str(revision))[:40]}"


def cache_dir() -> str:
    """The hub cache, read when called (`HF_HUB_CACHE`, else under `HF_HOME`), so a changed environment counts."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return str(constants.HF_HUB_CACHE)


def offline() -> bool:
    """`HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) set to a true value, read when called."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def cached_snapshot(repo_id: str, revision: str | None, cache: str) -> Path | None:
    """The cached snapshot directory of `repo_id` at `revision` (a branch or tag through `refs/`, or a commit),
    when it holds a config.json and some weights; None when it is missing or was left without weights."""
    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache, revision=revision or "main")
    if not isinstance(found, str):
        return None
    snapshot = Path(found).parent
    return snapshot if any(any(snapshot.glob(w)) for w in WEIGHTS) else None


def _patterns(files: list[str]) -> list[str]:
    """What to download of a revision listing `files`: one weight format, safetensors when it has them."""
    return NEEDED + (["*.safetensors"] if any(f.endswith(".safetensors") for f in files) else ["*.bin"])


def offline_error(where: str, repo_id: str, revision: str | None, cache: str, why: str) -> InfluenceError:
    """The one line for a hub checkpoint that is not cached and cannot be downloaded: connect, pre-download it, or
    use a local directory."""
    rev, key = f" --revision {revision}" if revision else "", where.split("=")[0].split(" ")[0]
    return InfluenceError(
        f"{where} is not in the Hugging Face cache ({cache}) and cannot be downloaded ({why}): connect to the network, "
        f"or pre-download it with `hf download {repo_id}{rev}` (`huggingface-cli download` in huggingface_hub < 1.0), "
        f"or give {key} a local checkpoint directory instead"
    )


def download(repo_id: str, revision: str | None, cache: str, where: str) -> Path:
    """Download what a causal LM needs of `repo_id` at `revision` into the cache; a missing repository or revision
    fails in one line, a hub that cannot be reached in the offline line."""
    try:
        info = HfApi().model_info(repo_id, revision=revision)  # one request, not retried: no network fails at once
        files = [f.rfilename for f in info.siblings or []]
        path = snapshot_download(repo_id, revision=revision, cache_dir=cache, allow_patterns=_patterns(files))
    except GatedRepoError:
        raise InfluenceError(
            f"{where} is gated on the hub: accept its terms on huggingface.co/{repo_id} and log in (`hf auth login`)"
        ) from None
    except RevisionNotFoundError:
        raise InfluenceError(
            f"{where}: {repo_id} has no revision {revision!r} on the hub: give one of its branches, tags or commits"
        ) from None
    except RepositoryNotFoundError:
        raise InfluenceError(
            f"{where} is no model on the hub (or a private one: log in with `hf auth login`): check the id"
        ) from None
    except Exception as e:  # noqa: BLE001 - no network shows as httpx/requests/OSError/LocalEntryNotFound errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise offline_error(where, repo_id, revision, cache, f"{type(e).__name__}: {first[:120]}") from None
    return Path(path)


def snapshot(repo_id: str, revision: str | None, where: str, local_files_only: bool | None = None) -> Path:
    """The local snapshot directory of hub id `repo_id` at `revision` (None: `main`): the cached one, else
    downloaded, unless `local_files_only` (None: `HF_HUB_OFFLINE` decides), when a missing one fails in one line."""
    cache = cache_dir()
    found = cached_snapshot(repo_id, revision, cache)
    if found is not None:
        return found
    if offline() if local_files_only is None else local_files_only:
        why = "HF_HUB_OFFLINE is set" if local_files_only is None else "local_files_only"
        raise offline_error(where, repo_id, revision, cache, why)
    return download(repo_id, revision, cache, where)


def locate(path: str, revision=None, where: str | None = None, local_files_only: bool | None = None) -> Checkpoint:
    """`model.path` (and `model.revision`) as a `Checkpoint`: a local directory as given, or a hub id's snapshot.

    A revision names a hub revision, so one given with a local directory is refused rather than ignored."""
    path, revision = str(path), None if revision is None else str(revision)
    if not is_hub_id(path):
        if revision is not None:
            raise InfluenceError(
                f"model.revision={revision} is given, but model.path={path} is a local directory, not a hub id "
                "(org/name): drop model.revision, or give the hub id"
            )
        return Checkpoint(path, Path(path).expanduser().resolve().name, str(Path(path).expanduser().resolve()))
    label = where or f"model.path={path}" + (f" at model.revision={revision}" if revision else "")
    found = snapshot(path, revision, label, local_files_only)
    return Checkpoint(str(found), safe_name(path, revision), f"{path}@{found.name}")
