"""The command line: every command has help, and bad arguments fail with one clear line."""

from __future__ import annotations

import pytest

from stillroom.cli import build_parser, main

COMMANDS = [["teacher", "add"], ["teacher", "list"], ["teacher", "show"], ["teacher", "grant"],
            ["generate"], ["dataset", "cut"], ["dataset", "list"], ["dataset", "export"],
            ["train"], ["eval"], ["provenance"], ["serve"], ["dashboard"], ["demo"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: stillroom " + " ".join(command) in capsys.readouterr().out


def test_argument_errors_are_one_line_naming_the_flag(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["train", "--dataset", "x", "--name", "s", "--epochs", "many"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("stillroom: error: --epochs: 'many' is not an integer "
                                       "(see `stillroom train --help`)\n")


def test_out_of_range_training_options_are_refused(home, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--dataset", "latest", "--name", "s", "--kd-weight", "1.5"]) == 2
    assert "--kd-weight: must be in [0, 1], not 1.5" in capsys.readouterr().err
    assert not home.exists()  # refused before the catalog was even opened


@pytest.mark.parametrize("text, value", [("1", 1), ("65535", 65535)])
def test_ports_in_range_are_accepted(text: str, value: int) -> None:
    assert build_parser().parse_args(["serve", "--port", text]).port == value


def test_good_endpoints_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STILLROOM_TEST_KEY", "k")
    args = build_parser().parse_args([
        "generate", "--teacher", "t", "--prompts", "p.jsonl", "--backend", "openai",
        "--endpoint", "http://127.0.0.1:8000/v1", "--endpoint", "https://api.example.com",
        "--api-key-env", "STILLROOM_TEST_KEY"])
    assert args.endpoint == ["http://127.0.0.1:8000/v1", "https://api.example.com"]


def test_teacher_add_prints_one_json_line(home, tiny_model, capsys: pytest.CaptureFixture) -> None:
    import json

    assert main(["teacher", "add", "t1", "--model", str(tiny_model), "--license", "mit",
                 "--price-per-1m-tokens", "0.2"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["command"] == "teacher" and summary["teacher"] == "t1"
    assert summary["license"] == "mit" and "seconds" in summary
