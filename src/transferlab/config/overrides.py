"""The override check that runs before Hydra composes (``run.py``, ``transferlab run``).

Hydra rejects a misspelt key too, but advises ``+key=value`` (append), which
is wrong for a typo and fails against the schema anyway; this names the
closest keys instead. Command lines are split by Hydra's own argument parser,
so every Hydra flag (``-m``, ``-c job``, ``-sc install=bash``, ``--info``,
``-cp``/``-cn``, ``--experimental-rerun``) keeps its meaning.
"""

from __future__ import annotations

import difflib
import re

from transferlab.config.schema import ConfigError, RuntimeConf, schema_keys

# Keys that moved to the runtime group (outside the config hash).
MOVED = {f"trainer.{k}": f"runtime.{k}" for k in RuntimeConf.__dataclass_fields__}


def hydra_overrides(argv: list[str]) -> list[str] | None:
    """The ``key=value`` overrides of a Hydra command line, as Hydra's own parser splits it.

    Returns None for ``-sc``/``--shell-completion``, whose ``install=bash``
    style arguments are Hydra's, not config overrides.
    """
    from hydra._internal.utils import get_args_parser

    args, _unknown = get_args_parser().parse_known_args(argv)
    if args.shell_completion:
        return None
    return list(args.overrides)


def check_override_keys(args: list[str]) -> None:
    """Rejects a misspelt ``key=value`` override, naming the closest keys.

    Hydra rejects them too, but advises ``+key=value`` (append), which is
    wrong for a typo and would fail against the schema anyway.

    Raises:
        ConfigError: naming the key and the closest valid ones.
    """
    argv = list(args)
    args = hydra_overrides(argv)
    if args is None:
        return  # -sc/--shell-completion: Hydra reads install=/uninstall=/query= itself
    keys = schema_keys() | {"experiment"}
    # Options may come from the user's own config folders: then Hydra alone knows them.
    own_configs = any(a.startswith(("-cd", "--config-dir", "-cp", "--config-path")) for a in argv) or any(
        "hydra.searchpath" in a for a in args)
    for arg in args:
        home = re.match(r"([A-Za-z_][\w.]*)=~(/.*)?$", arg)
        if home:  # the shell expands ~ only at a word's start; Hydra's grammar then fails on it
            raise ConfigError(f"{arg}: the shell did not expand '~' here. Fix: "
                              f"{home.group(1)}=$HOME{home.group(2) or ''} (the shell expands "
                              "$HOME), or an absolute path.")
        plus = re.match(r"\+\+?([A-Za-z_][\w.]*)=", arg)
        if plus and plus.group(1).split(".")[0] != "hydra" and plus.group(1) not in keys:
            raise ConfigError(_unknown(plus.group(1), keys, f" ({arg}: '+' adds a key the schema "
                                       "does not have; nothing would read it, and the run would "
                                       "record a setting that never applied.)"))
        if (plus and arg.startswith("+") and not arg.startswith("++") and plus.group(1) in keys
                and plus.group(1) not in {*group_options(), "experiment"}):  # Hydra: "Could not append"
            raise ConfigError(f"{arg}: {plus.group(1)} is a config key already ('+' appends a new "
                              f"one). Fix: {arg[1:]}")
        m = re.match(r"([A-Za-z_][\w.]*)=", arg)  # not +key, ~key, hydra/launcher=, -m
        if m and not own_configs and m.group(1) in group_options():
            _check_group_option(arg, m.group(1))
        if not m or m.group(1).split(".")[0] == "hydra" or m.group(1) in keys:
            continue
        key = m.group(1)
        if key in MOVED:
            raise ConfigError(f"{key} is now {MOVED[key]} (the runtime group: settings that cannot "
                              f"change a job's numbers, outside the config hash). Fix: {MOVED[key]}="
                              f"{arg.split('=', 1)[1]}")
        raise ConfigError(_unknown(key, keys))


def _unknown(key: str, keys: set[str], why: str = "") -> str:
    """'Unknown config key', the closest keys and the keys of its group."""
    close = difflib.get_close_matches(key, sorted(keys), n=3, cutoff=0.6)
    group = key.rsplit(".", 1)[0] if "." in key else None
    siblings = sorted(k for k in keys if group and k.startswith(group + ".")
                      and k.count(".") == key.count("."))
    return (f"Unknown config key {key!r}.{why}"
            + (f" Did you mean {' or '.join(close)}?" if close else "")
            + (f" Keys of {group}: {', '.join(siblings)}." if siblings else "")
            + " (python run.py --cfg job prints the whole config.)")


def group_options() -> dict[str, list[str]]:
    """Config group -> its option names (the YAML files of ``transferlab.conf``)."""
    from importlib.resources import files

    root = files("transferlab.conf")
    return {g.name: sorted(f.name[:-5] for f in g.iterdir() if f.name.endswith(".yaml"))
            for g in root.iterdir() if g.is_dir() and g.name not in ("hydra", "__pycache__")}


def _check_group_option(arg: str, group: str) -> None:
    """``backbone=resnet5O``: names the closest options instead of Hydra's "Could not find"
    and its search path. Values Hydra's grammar expands itself (``glob(...)``) pass."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        o = OverridesParser.create().parse_overrides([arg])[0]
        values = (list(o.sweep_string_iterator()) if o.is_sweep_override()
                  else [o.get_value_element_as_str()])
    except Exception:  # glob(), interpolations, a syntax error: Hydra says what it says
        return
    options = group_options()[group]
    for v in values:
        if v not in options:
            close = difflib.get_close_matches(v, options, n=3, cutoff=0.5)
            raise ConfigError(
                f"{group}={v}: no such option."
                + (f" Did you mean {' or '.join(close)}?" if close else "")
                + f" Options of {group}: {', '.join(options)}."
                + (" (freeze=last_n freeze.n=N for the last N layers.)" if group == "freeze" else ""))
