"""The command line refuses bad numbers and output paths up front, with a message instead of a traceback."""

from __future__ import annotations

import pytest

from backend.cli import main


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["train", "CAP", "--out", "A", "--iterations", "0"], "argument --iterations: 0 is outside 1..1000000000"),
        (["train", "CAP", "--out", "A", "--resolution", "8"], "argument --resolution: 8 is outside 16..4096"),
        (["train", "CAP", "--out", "A", "--batch-size", "x"], "argument --batch-size: expected an integer, got 'x'"),
        (["render", "AV", "--tracking", "T", "--out", "O", "--resolution", "-8"], "argument --resolution: -8 is outside 16..8192"),
        (["render", "AV", "--tracking", "T", "--out", "O", "--first-frame", "-1"], "argument --first-frame: -1 is outside"),
        (["eval", "AV", "CAP", "--resolution", "8"], "argument --resolution: 8 is outside 16..8192"),
    ],
)
def test_bad_numbers_are_usage_errors(arguments, message, capsys):
    with pytest.raises(SystemExit) as exit:
        main(arguments)
    assert exit.value.code == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error


@pytest.mark.parametrize("command", ["train", "render", "eval"])
def test_an_output_path_that_is_a_file_is_refused_before_any_work(command, tmp_path, capsys):
    in_the_way = tmp_path / "out"
    in_the_way.write_text("not a folder")
    missing = str(tmp_path / "missing")
    arguments = {
        "train": ["train", missing, "--out", str(in_the_way)],
        "render": ["render", missing, "--tracking", missing, "--out", str(in_the_way)],
        "eval": ["eval", missing, missing, "--out", str(in_the_way)],
    }[command]
    assert main(["--progress", "none", *arguments]) == 2
    assert f"{in_the_way}: is a file, not a folder" in capsys.readouterr().err
