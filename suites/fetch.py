"""``bench data fetch``: download a suite's data from its public source (thin by design).

VTAB-1K comes from the Hugging Face Hub dataset ``XiN0919/VTAB-1k`` (one ``vtab-1k.zip`` of NOAH
task folders, the copy V-PETL Bench points to). The commit actually downloaded is written to
``SOURCE.json`` next to the data, so a run's data can be traced to a revision.
"""

from __future__ import annotations

import json
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


def fetch_suite(suite: str, to: Path, revision: str | None = None) -> Path:
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
