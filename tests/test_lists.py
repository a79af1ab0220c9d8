"""NOAH list parsing and every bad-input case, at the library level."""

from __future__ import annotations

from pathlib import Path

import pytest

from suites import DataError, get_stage, get_suite, resolve_tasks
from suites.lists import list_fingerprint, read_list
from tests.conftest import write_task


def test_reads_entries_in_order(tmp_path: Path):
    task = write_task(tmp_path / "t", num_classes=3)
    entries = read_list(task, "train800.txt", 3)
    assert len(entries) == 24
    assert entries[0].path == task / "images/train800/000000.png"
    assert [e.label for e in entries[:4]] == [0, 1, 2, 0]
    assert entries[5].source.endswith("train800.txt:6")


def test_paths_with_spaces_and_blank_lines(tmp_path: Path):
    (tmp_path / "a b").mkdir()
    (tmp_path / "l.txt").write_text("\ufeffa b/x.jpg 1\n\n  a b/y.jpg 0  \r\n")
    entries = read_list(tmp_path, "l.txt", 2)
    assert [(e.path.name, e.label) for e in entries] == [("x.jpg", 1), ("y.jpg", 0)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("images/a.jpg\n", r"l\.txt:1: expected '<relative image path> <integer label>'"),
        ("images/a.jpg 1\nimages/b.jpg one\n", r"l\.txt:2: expected"),
        ("images/a.jpg 3\n", r"l\.txt:1: label 3 is out of range \(0\.\.2 for 3 classes\)"),
        ("images/a.jpg -1\n", r"l\.txt:1: label -1 is out of range"),
        ("../other/a.jpg 0\n", r"l\.txt:1: path '\.\./other/a\.jpg' escapes the task folder"),
        ("images/../../a.jpg 0\n", r"escapes the task folder"),
        ("/etc/passwd 0\n", r"l\.txt:1: path '/etc/passwd' is absolute"),
        ("\n\n", r"l\.txt has no entries"),
    ],
)
def test_bad_lines_name_file_line_and_fix(tmp_path: Path, content: str, message: str):
    (tmp_path / "l.txt").write_text(content)
    with pytest.raises(DataError, match=message):
        read_list(tmp_path, "l.txt", 3)


def test_missing_list_names_the_file(tmp_path: Path):
    with pytest.raises(DataError, match=r"list file .*train800\.txt is missing"):
        read_list(tmp_path, "train800.txt")


def test_fingerprint_changes_with_list_content(tmp_path: Path):
    task = write_task(tmp_path / "t")
    before = list_fingerprint(task, ["train800.txt", "val200.txt"])
    assert before == list_fingerprint(task, ["val200.txt", "train800.txt"])
    with (task / "val200.txt").open("a") as f:
        f.write("images/val200/000000.png 1\n")
    assert list_fingerprint(task, ["train800.txt", "val200.txt"]) != before


def test_vtab1k_resolves_aliases_and_counts(tmp_path: Path):
    write_task(tmp_path / "cifar100", num_classes=4)  # alias of `cifar`
    write_task(tmp_path / "Oxford-IIIT_Pet", num_classes=3)  # case and -/_ insensitive
    tasks = resolve_tasks(get_suite("vtab1k"), tmp_path, ["cifar", "pets"], get_stage("final"))
    assert [(t.name, t.directory.name, t.num_classes) for t in tasks] == [
        ("cifar", "cifar100", 100),
        ("oxford_iiit_pet", "Oxford-IIIT_Pet", 37),
    ]
    with pytest.raises(DataError, match=r"no folder for task dtd"):
        resolve_tasks(get_suite("vtab1k"), tmp_path, ["dtd"], get_stage("final"))
    with pytest.raises(DataError, match=r"unknown task 'cifar10' for suite 'vtab1k'"):
        resolve_tasks(get_suite("vtab1k"), tmp_path, ["cifar10"], get_stage("final"))


def test_folder_suite_reads_classes_from_labels(noah_root: Path):
    tasks = resolve_tasks(get_suite("folder"), noah_root, None, get_stage("final"))
    assert [(t.name, t.num_classes) for t in tasks] == [("alpha", 3), ("beta", 2)]
    (noah_root / "alpha" / "classes.txt").write_text("a\nb\nc\nd\n")
    assert resolve_tasks(get_suite("folder"), noah_root, ["alpha"], get_stage("final"))[0].num_classes == 4


def test_missing_data_root(tmp_path: Path):
    with pytest.raises(DataError, match=r"data root .*nowhere does not exist"):
        resolve_tasks(get_suite("folder"), tmp_path / "nowhere", None, get_stage("final"))
    with pytest.raises(DataError, match=r"needs --data-root"):
        resolve_tasks(get_suite("vtab1k"), None, None, get_stage("final"))


def test_tune_stage_does_not_need_test_list(tmp_path: Path):
    task = write_task(tmp_path / "t")
    (task / "test.txt").unlink()
    [resolved] = resolve_tasks(get_suite("folder"), tmp_path, None, get_stage("tune"))
    train, val = resolved.stage_lists(get_stage("tune"))
    assert (len(train), len(val)) == (24, 9)
