"""Config layers -> typed RLConfig: configs/<section>.yaml, then the recipe's presets, the recipe, CLI overrides.

Every leaf remembers which layer set it, so an error names the file or override a bad value came from.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from rlpost.atomic import atomic_file
from rlpost.config import verl
from rlpost.config.schema import RLConfig
from rlpost.config.verl import Translation
from rlpost.registry import did_you_mean

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

Path_ = tuple[str, ...]


class ConfigError(ValueError):
    """All problems found in a config, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid config:\n  " + "\n  ".join(problems))


def _read_yaml(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ConfigError([f"{what} '{path}' does not exist"])
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError([f"{path}: not valid YAML: {e}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: expected a mapping at the top level, got {type(data).__name__}"])
    return data


def parse_override(text: str) -> tuple[Path_, Any]:
    """'a.b=value' -> (('a', 'b'), value); the value is read as YAML so 3, 1e-5, true, null and [a, b] work. Hydra's
    forms are accepted: `+a.b=value` and `++a.b=value` set, `~a.b` (or `~a.b=value`) goes back to the default."""
    key, sep, raw = text.partition("=")
    delete = key.startswith("~")
    key = key.lstrip("+~").strip()
    if (not sep and not delete) or not key or any(not part for part in key.split(".")):
        raise ConfigError([f"override '{text}' is not of the form section.key=value"])
    if delete:
        return tuple(key.split(".")), verl.DELETE
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return tuple(key.split(".")), value


def _nest(path: Path_, value: Any) -> dict:
    for part in reversed(path):
        value = {part: value}
    return value


class Whole(dict):
    """A mapping that replaces the value under its key instead of merging into it (`~key` of a dict setting)."""


def _merge(dst: dict, src: dict, path: Path_, source: str, prov: dict[Path_, str]) -> None:
    for key, value in src.items():
        here = path + (str(key),)
        if isinstance(value, dict) and isinstance(dst.get(key), dict) and not isinstance(value, Whole):
            _merge(dst[key], value, here, source, prov)
            continue
        dst[key] = dict(copy.deepcopy(value)) if isinstance(value, Whole) else copy.deepcopy(value)
        for old in [p for p in prov if p[: len(here)] == here]:
            del prov[old]
        prov[here] = source


def _source(prov: dict[Path_, str], path: Path_) -> str:
    """The layer that set this path, or the nearest enclosing path that a layer set as a whole."""
    for n in range(len(path), 0, -1):
        if path[:n] in prov:
            return prov[path[:n]]
    return "defaults"


def _dotted(path: Path_) -> str:
    return ".".join(path)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


class _Builder:
    def __init__(self, prov: dict[Path_, str]):
        self.prov = prov
        self.problems: list[str] = []

    def fail(self, path: Path_, value: Any, expected: str) -> None:
        self.problems.append(f"{_dotted(path)} = {value!r} (from {_source(self.prov, path)}): expected {expected}")

    def build(self, cls: type, data: Any, path: Path_) -> Any:
        if not isinstance(data, dict):
            self.fail(path, data, "a mapping")
            return None
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                here = path + (str(key),)
                where = f"key '{_dotted(here)}' in section '{_dotted(path)}'" if path else f"section '{key}'"
                self.problems.append(
                    f"unknown {where} (from {_source(self.prov, here)}){did_you_mean(key, names)}"
                )
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            here = path + (f.name,)
            if f.name not in data:
                self.problems.append(f"missing key '{_dotted(here)}': no default in configs/ and none given")
                continue
            before = len(self.problems)
            values[f.name] = self.coerce(hints[f.name], data[f.name], here)
            if len(self.problems) == before:
                self.check(f.metadata, values[f.name], here)
        return cls(**values) if len(values) == len(names) else None

    def coerce(self, tp: Any, value: Any, path: Path_) -> Any:
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            if value is None:
                return None
            inner = [a for a in typing.get_args(tp) if a is not type(None)]
            return self.coerce(inner[0], value, path)
        if origin is typing.Literal:
            choices = typing.get_args(tp)
            if value not in choices:
                self.fail(path, value, _type_name(tp) + did_you_mean(value, [str(c) for c in choices]))
            return value
        if origin is list:
            items = value if isinstance(value, list) else [value]
            return [self.coerce(typing.get_args(tp)[0], v, path + (str(i),)) for i, v in enumerate(items)]
        if origin is dict:
            if not isinstance(value, dict):
                self.fail(path, value, "a mapping")
            return value
        if dataclasses.is_dataclass(tp):
            return self.build(tp, value, path)
        if tp is Any:
            return value
        if tp is bool:
            if not isinstance(value, bool):
                self.fail(path, value, "true or false")
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                self.fail(path, value, "an integer")
            return value
        if tp is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
                try:
                    return float(value)
                except ValueError:
                    pass
            self.fail(path, value, "a number")
            return value
        if tp is str:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
            if not isinstance(value, str):
                self.fail(path, value, "a string")
            return value
        raise TypeError(f"config schema type {tp} at {_dotted(path)} is not supported")

    def check(self, rules: typing.Mapping, value: Any, path: Path_) -> None:
        if value is None or not rules:
            return
        if "choices" in rules:
            names = rules["choices"]()
            if value not in names:
                self.fail(path, value, "one of " + ", ".join(names) + did_you_mean(value, names))
            return
        bounds = [("min", ">=", lambda v, b: v >= b), ("max", "<=", lambda v, b: v <= b),
                  ("gt", ">", lambda v, b: v > b), ("lt", "<", lambda v, b: v < b)]
        for name, symbol, ok in bounds:
            if name in rules and not ok(value, rules[name]):
                self.fail(path, value, f"a value {symbol} {rules[name]}")


def collect_layers(recipe: str | Path | None, overrides: Iterable[str], config_dir: Path
                   ) -> tuple[list[tuple[str, dict]], Translation]:
    """The layers in order, every key of the recipe and overrides read through rlpost.config.verl (rlpost's keys
    pass as they are, verl's are translated), and what that translation ignored or noted."""
    defaults = [
        (f"configs/{f.name}.yaml", {f.name: _read_yaml(config_dir / f"{f.name}.yaml", "default config")})
        for f in dataclasses.fields(RLConfig)
    ]
    layers, given, rlpost_recipe = list(defaults), [], False
    if recipe is not None:
        body = _read_yaml(Path(recipe), "recipe")
        if verl.is_verl_experiment(body):
            body = verl.experiment_body(Path(recipe), body)
        else:
            layers += _presets(recipe, body.pop("defaults", []) or [], config_dir)
            rlpost_recipe = True
        given.append((str(recipe), body))
    for text in overrides:
        path, value = parse_override(text)
        given.append((f"override '{text}'", _nest(path, value)))
    default_values: dict = {}
    for _, layer in defaults:
        _merge(default_values, layer, (), "defaults", {})
    leaves = verl.rlpost_leaves(RLConfig)
    known = leaves | set(verl.RULES)
    flat_defaults = verl.flatten(default_values, known)
    entries = [(source, key, value) for source, tree in given for key, value in verl.flatten(tree, known).items()]
    verl_defaults = "configs/verl/defaults.yaml (verl's default)"
    verl_line = not rlpost_recipe and any(verl.is_verl_key(key, leaves) for _, key, _ in entries)
    if verl_line:  # a verl command line: verl's defaults where they differ, under everything given
        preset = _read_yaml(config_dir / "verl" / "defaults.yaml", "preset")
        entries = [(verl_defaults, key, value) for key, value in verl.flatten(preset, known).items()] + entries
    entries = verl.resolve_interpolations(entries, verl.verl_names(flat_defaults))
    translation = verl.translate(entries, leaves, flat_defaults)
    if translation.refused:
        raise ConfigError(translation.refused)
    if verl_line:
        translation.notes.insert(0, ("defaults", "verl's where they differ from rlpost's in what runs "
                                                 "(configs/verl/defaults.yaml: gae, n 1, 30 epochs, ...)"))
    reset_to = dict(flat_defaults)  # what `~key` goes back to: verl's defaults on a verl command line
    for source, key, value in translation.settings:
        if value is verl.DELETE:
            value = reset_to.get(key)
            value = Whole(value) if isinstance(value, dict) else value
        elif source.startswith(verl_defaults):
            reset_to[key] = value
        layers.append((source, _nest(tuple(key.split(".")), value)))
    return layers, translation


def _presets(recipe: str | Path, presets: list | str, config_dir: Path) -> list[tuple[str, dict]]:
    if isinstance(presets, str):
        presets = [presets]
    available = sorted(p.stem for p in (config_dir / "presets").glob("*.yaml"))
    out = []
    for name in presets:
        path = config_dir / "presets" / f"{name}.yaml"
        if not path.is_file():
            raise ConfigError([
                f"{recipe}: defaults names preset '{name}', which is not in configs/presets/"
                f"{did_you_mean(name, available)}; available: {', '.join(available)}"
            ])
        out.append((f"configs/presets/{name}.yaml", _read_yaml(path, "preset")))
    return out


def load_config(
    recipe: str | Path | None = None,
    overrides: Iterable[str] = (),
    config_dir: Path = CONFIG_DIR,
    check_files: bool = True,
) -> RLConfig:
    """Resolve and validate a config. Raises ConfigError listing every problem at once."""
    return load_config_explained(recipe, overrides, config_dir, check_files)[0]


def load_config_explained(
    recipe: str | Path | None = None,
    overrides: Iterable[str] = (),
    config_dir: Path = CONFIG_DIR,
    check_files: bool = True,
) -> tuple[RLConfig, Translation]:
    """load_config, and what became of verl keys (ignored ones with their reasons, notes)."""
    from rlpost.config.validate import cross_check

    merged: dict = {}
    prov: dict[Path_, str] = {}
    layers, translation = collect_layers(recipe, overrides, config_dir)
    for source, layer in layers:
        _merge(merged, layer, (), source, prov)
    builder = _Builder(prov)
    cfg = builder.build(RLConfig, merged, ())
    if builder.problems:
        raise ConfigError(builder.problems)
    problems = cross_check(cfg, check_files=check_files)
    if problems:
        raise ConfigError(problems)
    return cfg, translation


def config_to_dict(cfg: RLConfig) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: RLConfig, path: str | Path) -> Path:
    """Write the resolved config atomically; it loads back as a recipe that needs no other file."""
    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    return path


def run_dir(cfg: RLConfig) -> Path:
    return Path(cfg.trainer.output_dir) / cfg.trainer.project_name / cfg.trainer.experiment_name
