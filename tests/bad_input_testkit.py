"""Checks of the bad-input tests: a command fails in one line, exit 2, and leaves the file system as it was
(importable from every test folder)."""


def tree(*folders):
    """Every path under `folders` (sorted): a snapshot to compare before and after a command."""
    from pathlib import Path

    return sorted(str(p) for f in folders if Path(f).exists() for p in Path(f).rglob("*"))


def fails_cleanly(capsys, argv, text, *watch):
    """Run the CLI in-process: exit 2, one line `meanflow: error: ...` containing `text`, no traceback,
    and nothing created or removed under the `watch` folders. Returns the line."""
    from meanflow.cli import main

    before = tree(*watch)
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("meanflow: error: "), err
    assert text in lines[0], lines[0]
    assert tree(*watch) == before
    return lines[0]
