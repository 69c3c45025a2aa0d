"""Command-line parsing shared by every subcommand."""

from __future__ import annotations

import pytest

from histo_gedl.cli import _build_parser, main


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["info", "slide.svs"], 0),
        (["-v", "info", "slide.svs"], 1),
        (["info", "slide.svs", "-vv"], 2),
    ],
)
def test_verbose_before_or_after_subcommand(argv, expected):
    assert _build_parser().parse_args(argv).verbose == expected


def test_every_subcommand_has_help(capsys):
    for command in ("info", "tile", "infer", "train", "finetune", "evaluate", "export-model"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert command in capsys.readouterr().out


def test_missing_subcommand_is_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err
