"""``bench data fetch``: download a suite's data from its public source (thin by design).

VTAB-1K comes from the Hugging Face Hub dataset ``XiN0919/VTAB-1k`` (one ``vtab-1k.zip`` of NOAH
task folders, the copy V-PETL Bench points to). The commit actually downloaded is written to
``SOURCE.json`` next to the data, so a run's data can be traced to a revision.

Few-shot FGVC: NOAH's lists are fetched from GitHub at the commit bench pins
(``suites.noah_lists``), each checked against its pinned sha256. The images have no pinned public
copy; each dataset's official page is named instead (``bench data verify`` lists what is missing).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from .base import DataError

VTAB1K_REPO = "XiN0919/VTAB-1k"
VTAB1K_FILE = "vtab-1k.zip"
# The Hub revision bench pins. Offline, its commit sha could not be looked up, so the default is
# the branch and the resolved commit is recorded; pass --revision <sha> to pin exactly.
VTAB1K_REVISION = "main"


def _download(repo: str, filename: str, revision: str) -> tuple[Path, str]:
    from huggingface_hub import hf_hub_download

    try:
        path = Path(hf_hub_download(repo, filename, repo_type="dataset", revision=revision))
    except Exception as exc:
        raise DataError(
            f"could not download {filename} from the Hub dataset {repo}@{revision} ({type(exc).__name__}); "
            "check the network, or download it by hand and pass its folder as --data-root"
        ) from None
    commit = path.parent.name  # hub cache layout: snapshots/<commit>/<file>
    return path, commit


def extract_task_folders(archive: Path, to: Path) -> Path:
    """Unpack ``archive`` into ``to`` and return the folder that holds the task folders."""
    to.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as zf:
        for member in zf.infolist():  # refuse members that would land outside `to`
            target = (to / member.filename).resolve()
            if not target.is_relative_to(to.resolve()):
                raise DataError(f"archive {archive} holds a path escaping the target folder: {member.filename}")
        zf.extractall(to)
    for candidate in [to, *sorted(p for p in to.iterdir() if p.is_dir())]:
        if any((sub / "train800val200.txt").is_file() for sub in candidate.iterdir() if sub.is_dir()):
            return candidate
    raise DataError(f"archive {archive} has no NOAH task folders (no */train800val200.txt)")


NOAH_RAW_URL = "https://raw.githubusercontent.com/{repo}/{commit}/data/few-shot/{folder}/annotations/{name}"


def _download_bytes(url: str) -> bytes:
    """One file over HTTPS (tests replace this; nothing else in bench reaches the network this way)."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.read()
    except Exception as exc:
        raise DataError(
            f"could not download {url} ({type(exc).__name__}); check the network, or copy NOAH's "
            "data/few-shot/<dataset>/annotations/ folders by hand into <dataset>/annotations/"
        ) from None


def fetch_fewshot_lists(to: Path, revision: str | None = None) -> Path:
    """NOAH's few-shot lists into ``to/<dataset>/annotations/``, every file checked against its sha256.

    A dataset folder that already exists under an accepted name (``oxford_flowers``, ``food-101``,
    …) receives the lists there. Lists already present with the pinned content are kept; a list
    with other content is never overwritten.
    """
    from .base import get_suite
    from .fewshot import NOAH_FOLDERS
    from .noah_lists import NOAH_COMMIT, NOAH_LIST_SHA256, NOAH_REPO
    from .resolve import find_task_folder

    if revision not in (None, NOAH_COMMIT):
        raise DataError(
            f"--revision {revision}: the few-shot lists are pinned to {NOAH_REPO}@{NOAH_COMMIT} (their sha256 "
            "are known for that commit only); leave --revision out"
        )
    suite = get_suite("fgvc_fewshot")
    to.mkdir(parents=True, exist_ok=True)
    fetched = {}
    for task in suite.tasks:
        folder = find_task_folder(to, task) or to / task.name
        target = folder / "annotations"
        noah = NOAH_FOLDERS[task.name]
        for name, digest in NOAH_LIST_SHA256[noah].items():
            path = target / name
            if path.is_file():
                if hashlib.sha256(path.read_bytes()).hexdigest() == digest:
                    continue
                raise DataError(f"{path} exists and differs from NOAH's list; move it away and fetch again")
            url = NOAH_RAW_URL.format(repo=NOAH_REPO, commit=NOAH_COMMIT, folder=noah, name=name)
            data = _download_bytes(url)
            if hashlib.sha256(data).hexdigest() != digest:
                raise DataError(f"{url} does not have the pinned sha256 {digest[:12]}…; nothing was written for it")
            target.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target, prefix=".fetch-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        fetched[task.name] = str(folder.relative_to(to))
    (to / "SOURCE.json").write_text(
        json.dumps(
            {
                "lists": {"repo": NOAH_REPO, "commit": NOAH_COMMIT, "path": "data/few-shot/<dataset>/annotations"},
                "folders": fetched,
                "images": {t.name: t.source for t in suite.tasks},
            },
            indent=2,
        )
    )
    return to


def fetch_notes(suite: str) -> list[str]:
    """What ``fetch_suite`` leaves to the user, one line each (nothing for vtab1k)."""
    if suite != "fgvc_fewshot":
        return []
    from .fewshot import IMAGE_SOURCES

    return [
        "the lists are in <dataset>/annotations/; the images have no pinned public copy and are not downloaded:",
        *(f"  {name}: {where}" for name, where in IMAGE_SOURCES.items()),
    ]


def fetch_suite(suite: str, to: Path, revision: str | None = None) -> Path:
    if suite == "fgvc_fewshot":
        return fetch_fewshot_lists(to, revision)
    if suite != "vtab1k":
        raise DataError(
            f"suite {suite!r} has no public source bench can download; put its task folders under a folder "
            "and pass it as --data-root"
        )
    archive, commit = _download(VTAB1K_REPO, VTAB1K_FILE, revision or VTAB1K_REVISION)
    root = extract_task_folders(archive, to)
    (root / "SOURCE.json").write_text(
        json.dumps(
            {
                "repo": VTAB1K_REPO,
                "file": VTAB1K_FILE,
                "revision": revision or VTAB1K_REVISION,
                "commit": commit,
            },
            indent=2,
        )
    )
    return root
