"""Settings through one door: `eval`'s and `lab`'s flags are generated from their models."""

from __future__ import annotations

import argparse
import typing

from pydantic import Field

from mergekit_layerswap import cli
from mergekit_layerswap.evaluate.settings import EvalSettings
from mergekit_layerswap.flags import add_flags, given
from mergekit_layerswap.lab.settings import LabSettings


def subcommand(name: str) -> argparse.ArgumentParser:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    command = sub.choices[name]
    if command.later is not None:  # the flags a lazy parser adds when it first parses
        command.later, later = None, command.later
        later(command)
    return command


def flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {action.dest: action for action in parser._actions if action.option_strings}


def test_every_eval_setting_is_one_flag_explained_by_its_field():
    found = flags(subcommand("eval"))
    for name, info in EvalSettings.model_fields.items():
        assert found[name].option_strings == ["--" + name.replace("_", "-")]
        assert info.description and found[name].help.startswith(info.description)
    assert set(found) - set(EvalSettings.model_fields) == {"help", "output", "cache_dir"}


def test_a_new_setting_gets_its_flag_and_reaches_the_model():
    class More(EvalSettings):
        temperature: float = Field(0.0, description="sampling temperature")

    parser = argparse.ArgumentParser()
    add_flags(parser, More, More.model_fields)
    args = parser.parse_args(["--temperature", "0.5", "--languages", "sw", "--log-samples"])
    settings = More(**given(args, More))
    assert (settings.temperature, settings.languages, settings.log_samples) == (0.5, ("sw",), True)
    assert "[default: 0.0]" in parser.format_help()


def test_lab_flags_take_their_choices_and_defaults_from_lab_settings():
    found = flags(subcommand("lab"))
    for name in cli.LAB_FLAGS:
        info = LabSettings.model_fields[name]
        literal = typing.get_origin(info.annotation) is typing.Literal
        choices = typing.get_args(info.annotation) if literal else None
        assert tuple(found[name].choices or ()) == (choices or ())
        assert f"[default: {info.default}]" in found[name].help
    args = subcommand("demo").parse_args(["out"])
    assert given(args, LabSettings) == {"seeds": 1}  # the demo's one seed; the rest: defaults
