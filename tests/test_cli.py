"""The CLI's help teaches it; unknown arguments are refused."""

import pytest

from flmm_probe.cli import build_parser, main


COMMANDS = ["demo", "backbones", "record", "record-image", "analyze", "counterfactual", "fit", "evaluate", "segment", "chat",
            "gcg", "reason", "cot", "view", "report", "figures", "organism"]
# The test file that runs each command end to end, and how its call reads there (besides --help, below).
RUN_BY = {"demo": ("test_demo.py", 'main(["demo"'), "backbones": ("test_cli.py", 'main(["backbones"])'),
          "record": ("test_cli_record.py", '"record", "--backbone"'), "record-image": ("test_cli.py", 'main(["record-image"'),
          "analyze": ("test_cli.py", 'main(["analyze"'), "counterfactual": ("test_cli.py", 'main(["counterfactual"'),
          "fit": ("test_benchmark_formats_end_to_end.py", 'fit = ["fit"'),
          "evaluate": ("test_benchmark_formats_end_to_end.py", 'run(capsys, "evaluate"'), "segment": ("test_cli.py", 'main(["segment"'),
          "chat": ("test_cli.py", 'main(["chat"'), "gcg": ("test_cli.py", 'for task, key in (("gcg"'),
          "reason": ("test_cli.py", 'main(["reason"'), "cot": ("test_cli.py", '("cot", "cot/accuracy")'), "view": ("test_viewer.py", 'main(["view"'),
          "report": ("test_demo.py", 'main(["report"'), "figures": ("test_figures.py", "main([str(tmp_path)])"),
          "organism": ("test_organism.py", 'main(["--out"')}


def test_the_parser_has_exactly_the_documented_commands_and_each_is_run_by_a_test(capsys):
    from pathlib import Path

    assert list(build_parser()._subparsers._group_actions[0].choices) == COMMANDS
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    tests = Path(__file__).parent
    for command in COMMANDS:
        assert f"\n  {command} " in text, f"`flmm-probe --help` lists {command}"
        where, call = RUN_BY[command]
        assert call in (tests / where).read_text(), f"{where} runs {command}"


@pytest.mark.parametrize("command", [c for c in COMMANDS if c not in ("figures", "report", "organism")])
def test_each_command_answers_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0 and f"usage: flmm-probe {command}" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["demo", "record", "analyze", "counterfactual", "fit", "evaluate", "segment", "chat",
                                     "gcg", "reason", "cot", "view"])
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


def test_counterfactual_and_analyze_report_words_or_position(tmp_path, capsys):
    data = "shapes:test:6:caption"
    assert main(["counterfactual", "--data", data, "--out", str(tmp_path / "cf")]) == 0
    out = capsys.readouterr().out
    assert "points at the object the phrase names" in out and "skipped: " in out
    assert (tmp_path / "cf" / "counterfactual_table.parquet").exists()
    assert main(["record", "--data", data, "--store", str(tmp_path / "store")]) == 0
    assert main(["analyze", "--store", str(tmp_path / "store"), "--data", data, "--out", str(tmp_path / "run"),
                 "--backbone", "organism"]) == 0
    out = capsys.readouterr().out
    assert "head_table: " in out and "points at the object the phrase names" in out


def test_chat_gcg_reason_and_cot_end_to_end(tmp_path, capsys):
    import json

    from PIL import Image

    from flmm_probe.data.shapes import make_scene

    data, run = "shapes:train:4:mix", str(tmp_path / "fit")
    assert main(["record", "--data", data, "--store", str(tmp_path / "store")]) == 0
    assert main(["fit", "--store", str(tmp_path / "store"), "--data", data, "--out", run, "--epochs", "1",
                 "--base-channels", "8", "--long-side", "16"]) == 0
    Image.fromarray(make_scene("test", 1).image).save(tmp_path / "scene.png")
    capsys.readouterr()
    assert main(["segment", "--run", run, "--image", str(tmp_path / "scene.png"), "--text", "a red cross and a blue circle",
                 "--phrase", "a red cross", "--phrase", "a blue circle", "--out", str(tmp_path / "segment")]) == 0
    assert "overlay -> " in capsys.readouterr().out and (tmp_path / "segment" / "mask_1.png").exists()
    assert main(["record-image", "--image", str(tmp_path / "scene.png"), "--text", "a red cross", "--phrase", "red cross",
                 "--out", str(tmp_path / "one.safetensors")]) == 0
    assert "1 phrases -> " in capsys.readouterr().out
    assert main(["chat", "--run", run, "--image", str(tmp_path / "scene.png"), "--question",
                 "Please give me a description of the image.", "--out", str(tmp_path / "chat")]) == 0
    out = capsys.readouterr().out
    assert "overlay -> " in out and (tmp_path / "chat" / "mask_0.png").exists()
    for task, key in (("gcg", "recall"), ("reason", "giou"), ("cot", "cot/accuracy")):
        assert main([task, "--run", run, "--scenes", "3", "--out", str(tmp_path / task)]) == 0
        assert key in capsys.readouterr().out and (tmp_path / task / f"{task}.parquet").exists()
    folder = tmp_path / "reasonseg" / "val"
    folder.mkdir(parents=True)
    Image.fromarray(make_scene("test", 1).image).save(folder / "one.jpg")
    (folder / "one.json").write_text(json.dumps({"text": ["what is the largest?"], "is_sentence": False,
                                                 "shapes": [{"label": "target", "points": [[5, 5], [30, 5], [30, 30]]}]}))
    assert main(["reason", "--run", run, "--reasonseg", f"{tmp_path / 'reasonseg'}:val", "--out", str(tmp_path / "rs")]) == 0
    assert "giou" in capsys.readouterr().out
