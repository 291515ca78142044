"""The command line is generated from the config dataclasses: every field is a flag with the field's
name, help text, default and allowed values; nothing is written twice."""

from __future__ import annotations

import argparse
import dataclasses
import typing

import pytest

from mistudio_widgets.cli.config_flags import config_from_args, flag_name
from mistudio_widgets.cli.main import build_parser
from mistudio_widgets.core.configs import (
    CaptureConfig,
    DatasetConfig,
    ExtractConfig,
    LabelConfig,
    ModelConfig,
    SteerConfig,
    TokenizeConfig,
    TrainConfig,
)

# command -> (config, fields the command takes otherwise: a positional argument, a secret from the
# environment, or a richer flag)
COMMANDS = {
    ("train",): (TrainConfig, ()),
    ("capture",): (CaptureConfig, ()),
    ("datasets", "add"): (DatasetConfig, ("source", "token")),
    ("datasets", "tokenize"): (TokenizeConfig, ()),
    ("models", "add"): (ModelConfig, ("source", "token")),
    ("extract",): (ExtractConfig, ()),
    ("label",): (LabelConfig, ()),
    ("steer",): (SteerConfig, ("features",)),
}


def _subparser(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> argparse.ArgumentParser:
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


@pytest.mark.parametrize("path", list(COMMANDS), ids=" ".join)
def test_every_config_field_is_a_flag_with_its_help_default_and_choices(path):
    cls, elsewhere = COMMANDS[path]
    sp = _subparser(build_parser(), path)
    by_dest = {a.dest: a for a in sp._actions}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in elsewhere:
            continue
        action = by_dest.get(f.name)
        assert action is not None, f"{' '.join(path)} lacks a flag for {cls.__name__}.{f.name}"
        assert flag_name(f.name) in action.option_strings
        assert f.metadata["help"].replace("%", "%%") in action.help and "(default: " in action.help
        if typing.get_origin(hints[f.name]) is typing.Literal:
            assert action.choices == list(typing.get_args(hints[f.name]))
        assert action.default is argparse.SUPPRESS  # unset flags leave the config's value alone
    help_text = sp.format_help()
    assert "(default: " in help_text


def test_flags_parse_into_the_config_with_aliases_negations_lists_and_grids():
    p = build_parser()
    a = p.parse_args(
        ["train", "--arch", "matryoshka_batchtopk", "--matryoshka-widths", "576,1152,4608", "--d-sae", "4608",
         "--no-normalize", "--lr", "none", "--adam-betas", "0.8", "0.99",
         "--sweep", "k: 16, 32; l1_coefficient: 1, 2", "--optimizer", "adam",
         "--hook-out", "blocks.15.hook_mlp_out"]
    )  # fmt: skip
    cfg = config_from_args(TrainConfig, a)
    assert cfg.architecture == "matryoshka_batchtopk" and cfg.matryoshka_widths == [576, 1152, 4608]
    assert cfg.normalize is False and cfg.lr is None and cfg.adam_betas == (0.8, 0.99)
    assert cfg.sweep == {"k": [16, 32], "l1_coefficient": [1, 2]} and cfg.optimizer == "adam"
    assert config_from_args(TrainConfig, p.parse_args(["train"])) == TrainConfig()
    a = p.parse_args(["steer", "s", "--no-chat-template", "--normalise", "--method", "cap"])
    assert (a.chat_template, a.normalise, a.method) == (False, True, "cap")
    a = p.parse_args(["datasets", "tokenize", "d", "--no-bos", "--separator", "none"])
    assert config_from_args(TokenizeConfig, a) == TokenizeConfig(prepend_bos=False, separator="none")
    for bad in (["train", "--arch", "dense"], ["train", "--k", "many"], ["train", "--sweep", "k 16"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)
