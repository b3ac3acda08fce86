"""``dataset.folds=K`` without ``dataset.fold`` on the command line: every fold, as a sweep.

One job trains one fold. So that ``run.py -m ... dataset.folds=5`` (and
``transferlab.sweep([..., "dataset.folds=5"])``) runs each configuration five
times, the command line gets ``dataset.fold=0,1,2,3,4`` before Hydra sees it:
Hydra's own sweeper then makes one job per fold and configuration, each its own
MLflow run with its ``dataset.fold`` param. A plain ``run.py dataset.folds=5``
becomes such a sweep too (it says so). Done on the command line, not in a
custom sweeper, so every launcher and sweeper plugin sees ordinary overrides.
"""

from __future__ import annotations

import re

from transferlab.config.overrides import hydra_overrides
from transferlab.config.schema import ConfigError

FOLDS, FOLD = "dataset.folds", "dataset.fold"


def _value(args: list[str], key: str) -> str | None:
    """The raw value of the last ``key=value`` (also ``+key=``/``++key=``) override, else None."""
    out = None
    for a in args:
        m = re.match(r"\+{0,2}([\w.]+)=(.*)$", a)
        if m and m.group(1) == key:
            out = m.group(2)
    return out


def expand(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` with ``dataset.fold=0,...,K-1`` (and ``-m``) added where every fold must run.

    Returns:
        ``(argv, expanded)``; unchanged when ``dataset.folds`` is not given on
        the command line, is null, or ``dataset.fold`` is given (one fold, or
        the user's own fold sweep).

    Raises:
        ConfigError: ``dataset.folds`` is swept (``3,5``) or not an integer,
            without ``dataset.fold``.
    """
    from hydra._internal.utils import get_args_parser

    flags, _ = get_args_parser().parse_known_args(argv)
    if flags.cfg or flags.info or flags.help or flags.hydra_help:
        return argv, False  # printing the config or help: nothing runs
    args = hydra_overrides(argv)
    if not args or _value(args, FOLD) is not None:
        return argv, False
    raw = _value(args, FOLDS)
    if raw is None or raw.strip() in ("null", "None", "~"):
        return argv, False
    try:
        k = int(raw)
    except ValueError:
        raise ConfigError(f"{FOLDS}={raw}: one integer >= 2 expected (every fold of each "
                          f"configuration runs); to sweep several k, give {FOLD} too, or run one "
                          "command per k.") from None
    if k < 2:
        return argv, False  # validate() names the value
    out = list(argv) + [f"{FOLD}={','.join(str(i) for i in range(k))}"]
    if not ({"-m", "--multirun"} & set(argv)):
        print(f"[transferlab] {FOLDS}={k}: every fold runs, as a sweep of {k} jobs per "
              f"configuration ({FOLD}=0..{k - 1}); pass {FOLD}=<i> for one fold")
        out = ["-m", *out]
    return out, True
