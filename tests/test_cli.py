"""The CLI's help teaches it; unknown arguments are refused."""

import pytest

from flmm_probe.cli import build_parser, main


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for command in ("demo", "backbones", "record", "record-image", "analyze", "fit", "evaluate", "segment", "figures", "organism train"):
        assert command in text


@pytest.mark.parametrize("command", ["demo", "record", "analyze", "fit", "evaluate", "segment"])
def test_every_option_is_explained(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert "(default: None)" not in text and "(default: False)" not in text
    parser = build_parser()._subparsers._group_actions[0].choices[command]
    undocumented = [a.option_strings for a in parser._actions if a.help is None]
    assert not undocumented, f"options without help: {undocumented}"


def test_backbones_command(capsys):
    assert main(["backbones"]) == 0
    assert "llava_next" in capsys.readouterr().out.split()


def test_unknown_arguments_are_refused():
    with pytest.raises(SystemExit):
        main(["backbones", "--bogus"])


def test_record_defaults_to_the_organism():
    args = build_parser().parse_args(["record", "--data", "shapes:test:2", "--store", "s"])
    assert args.backbone == "organism" and args.batch_size == 1
