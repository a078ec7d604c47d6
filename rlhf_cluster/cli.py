"""Command line → validated config. Every job calls ``parse_config(Model, argv)``.

Accepted forms (later wins): ``--config FILE.yaml``, then overrides in order, each one of
``key.sub=value``, ``--set key.sub=value``, ``--key.sub value`` or ``--key.sub=value``.
Values are parsed as YAML scalars/lists (``3`` → int, ``[1,2]`` → list, ``null`` → None).
``--help`` lists every field with its type, default and description. ``--print-config`` prints the
resolved config as YAML and exits.

Any error (unknown key, wrong type, malformed YAML, missing file) prints one message per problem
naming the key, where it came from and what was expected, and exits with code 2.
"""

from __future__ import annotations

import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)
EXIT_USAGE = 2


class ConfigError(Exception):
    """A config problem a user must fix. ``str(err)`` is the message to print."""


# ----------------------------------------------------------------------------------------- parsing


def parse_config(model: type[M], argv: Sequence[str] | None = None, prog: str | None = None) -> M:
    """Parse argv into ``model``; on any problem print the message and ``sys.exit(2)``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or Path(sys.argv[0]).stem
    if "-h" in argv or "--help" in argv:
        print(help_text(model, prog))
        sys.exit(0)
    try:
        cfg = load_config(model, argv)
    except ConfigError as err:
        print(f"{prog}: config error:\n{err}\n(run with --help for every field)", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    if "--print-config" in argv:
        print(dump_yaml(cfg))
        sys.exit(0)
    return cfg


def resume_argv(argv: Sequence[str] | None, prog: str) -> tuple[list[str], Path | None]:
    """Handle ``--resume RUN_DIR``: the run's own config.yaml becomes the config file and run_dir is
    pinned to RUN_DIR; the other arguments stay overrides. Returns (argv for parse_config, RUN_DIR or None).
    A missing RUN_DIR/config.yaml or a --config next to --resume exits 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    rest, run_dir = [], None
    i = 0
    while i < len(argv):
        if argv[i] == "--resume" and i + 1 < len(argv):
            run_dir, i = argv[i + 1], i + 2
            continue
        if argv[i].startswith("--resume="):
            run_dir = argv[i].split("=", 1)[1]
        elif argv[i] == "--resume":
            _usage_error(prog, "--resume needs a run directory")
        else:
            rest.append(argv[i])
        i += 1
    if run_dir is None:
        return rest, None
    if any(a == "--config" or a.startswith("--config=") for a in rest):
        _usage_error(
            prog, f"--resume {run_dir} reads {run_dir}/config.yaml; pass overrides (key=value) only, not --config"
        )
    config = Path(run_dir) / "config.yaml"
    if not config.is_file():
        _usage_error(prog, f"--resume {run_dir}: {config} not found (is it a run directory of this job?)")
    return ["--config", str(config), *rest, f"run_dir={run_dir}"], Path(run_dir)


def _usage_error(prog: str, message: str) -> None:
    print(f"{prog}: {message}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def load_config(model: type[M], argv: Sequence[str]) -> M:
    """Like ``parse_config`` but raises ``ConfigError`` instead of exiting (for tests and libraries)."""
    config_file, overrides = _split_argv(argv)
    data: dict[str, Any] = _read_yaml(config_file) if config_file else {}
    origins: dict[tuple[str, ...], str] = {}
    for key, raw in overrides:
        path = tuple(key.split("."))
        if not all(path):
            raise ConfigError(f"  override '{key}={raw}': empty key segment")
        _set_dotted(data, path, _parse_value(raw), key)
        origins[path] = f"command-line override '{key}={raw}'"
    try:
        return model.model_validate(data)
    except ValidationError as err:
        where = f"config file {config_file}" if config_file else "defaults"
        raise ConfigError(_format_errors(model, err, origins, where)) from None


def _split_argv(argv: Sequence[str]) -> tuple[str | None, list[tuple[str, str]]]:
    config_file: str | None = None
    overrides: list[tuple[str, str]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--print-config":
            pass
        elif arg == "--config" or arg == "--set":
            if i + 1 >= len(argv):
                raise ConfigError(f"  {arg} needs a value")
            i += 1
            if arg == "--config":
                config_file = argv[i]
            else:
                overrides.append(_split_kv(argv[i]))
        elif arg.startswith("--config="):
            config_file = arg.split("=", 1)[1]
        elif arg.startswith("--"):
            key = arg[2:]
            if "=" in key:
                overrides.append(_split_kv(key))
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                i += 1
                overrides.append((key.replace("-", "_"), argv[i]))
            else:
                raise ConfigError(f"  {arg}: needs a value (--{key} VALUE or --{key}=VALUE)")
        elif "=" in arg:
            overrides.append(_split_kv(arg))
        else:
            raise ConfigError(f"  unexpected argument '{arg}': use key=value, --key value or --config FILE")
        i += 1
    return config_file, overrides


def _split_kv(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"  override '{text}': expected key=value")
    key, value = text.split("=", 1)
    return key.strip().replace("-", "_"), value


def _read_yaml(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"  config file {path}: not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"  config file {path}: malformed YAML{at}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"  config file {path}: expected a mapping of keys at the top, got {type(data).__name__}")
    return data


def _parse_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        return raw  # not YAML: keep the string; the model decides whether a string is allowed


def _set_dotted(data: dict[str, Any], path: tuple[str, ...], value: Any, key: str) -> None:
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"  override '{key}': '{part}' is a value, not a section")
        node = child
    node[path[-1]] = value


# ---------------------------------------------------------------------------------------- messages


def _format_errors(model: type[BaseModel], err: ValidationError, origins: dict, where: str) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        key = ".".join(loc) or "<top>"
        origin = origins.get(loc) or next((o for p, o in origins.items() if loc[: len(p)] == p), where)
        if not loc:  # a model-level check (several fields together): its message says it all
            lines.append(f"  {e['msg'].removeprefix('Value error, ')} (in {where})")
        elif e["type"] == "extra_forbidden":
            known = _known_keys(model, loc[:-1])
            hint = f"; known keys here: {', '.join(known)}" if known else ""
            lines.append(f"  {key}: unknown key (in {origin}){hint}")
        elif e["type"] == "missing":
            lines.append(f"  {key}: required but not given (in {origin}); expected {_expected(model, loc)}")
        else:
            got = e.get("input")
            got_s = f" got {got!r}" if not isinstance(got, dict) else ""
            lines.append(f"  {key}: {e['msg']} (in {origin});{got_s} expected {_expected(model, loc)}")
    return "\n".join(lines)


def _field_at(model: type[BaseModel], loc: Sequence[str]):
    """The pydantic FieldInfo at a dotted location, or None."""
    current: Any = model
    info = None
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        info = current.model_fields.get(part)
        if info is None:
            return None
        current = _unwrap_model(info.annotation)
    return info


def _unwrap_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return annotation


def _known_keys(model: type[BaseModel], loc: Sequence[str]) -> list[str]:
    sub = model if not loc else _unwrap_model(getattr(_field_at(model, loc), "annotation", None))
    if isinstance(sub, type) and issubclass(sub, BaseModel):
        return sorted(sub.model_fields)
    return []


def _expected(model: type[BaseModel], loc: Sequence[str]) -> str:
    info = _field_at(model, loc)
    if info is None:
        return "a valid value"
    text = _type_name(info.annotation)
    return f"{text} — {info.description}" if info.description else text


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("NoneType", "None")


# -------------------------------------------------------------------------------------------- help


def help_text(model: type[BaseModel], prog: str) -> str:
    doc = (model.__doc__ or "").strip()
    lines = [
        f"usage: {prog} [--config FILE.yaml] [key.sub=value | --key.sub VALUE ...] [--print-config]",
        "",
        doc,
        "",
        "fields (type, default: description):",
    ]
    lines += _help_fields(model, prefix="")
    return "\n".join(lines)


def _help_fields(model: type[BaseModel], prefix: str, defaults: BaseModel | None = None) -> list[str]:
    """One line per field. ``defaults``: the section's default instance from its parent's factory (e.g.
    a serving rollout section that defaults to greedy), whose values win over the class defaults."""
    out = []
    for name, info in model.model_fields.items():
        sub = _unwrap_model(info.annotation)
        key = prefix + name
        required = defaults is None and info.is_required()
        default = (
            getattr(defaults, name)
            if defaults is not None
            else (None if required else info.get_default(call_default_factory=True))
        )
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out.append(f"  {key}.  — {info.description or (sub.__doc__ or '').strip().splitlines()[0]}")
            out += _help_fields(sub, key + ".", default if isinstance(default, BaseModel) else None)
            continue
        shown = "REQUIRED" if required else repr(default)
        out.append(f"  {key}  ({_type_name(info.annotation)}, default {shown}): {info.description or ''}")
    return out


def dump_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def prepare_run_dir(cfg: BaseModel, run_dir: str | Path) -> Path:
    """Create the run directory and record the resolved config in it (config.yaml), as every job does."""
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(dump_yaml(cfg))
    return path
