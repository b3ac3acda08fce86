"""The baseline each comparison is against: ``freeze=all``, ``--baseline key=value``, else
the best by the validation metric (significance.py compares every value with it)."""

from __future__ import annotations

from transferlab.report.collect import ReportError
from transferlab.report.metric import rank_key
from transferlab.report.table import BASELINE, RANDOM_INIT, Config, Table


def _same(a, b) -> bool:
    """Equal as text or as numbers (``lr=1e-4`` names the runs logged as ``0.0001``);
    ``backbone.weights=null`` names the runs the report shows as ``random init``."""
    a, b = (RANDOM_INIT if str(v) in ("null", "None") else v for v in (a, b))
    try:
        return str(a) == str(b) or float(a) == float(b)
    except (TypeError, ValueError):
        return False


def check_baselines(table: Table, baselines: dict[str, str] | None) -> dict[str, str]:
    """``--baseline key=value`` pairs, checked against the selection.

    Raises:
        ReportError: the key is not swept, or no run has that value (lists what there is).
    """
    out = {}
    for key, value in (baselines or {}).items():
        if key not in table.axes:
            raise ReportError(f"--baseline {key}={value}: {key} is not a swept key of these "
                              f"runs; swept: {', '.join(table.axes) or '(none)'}")
        have = sorted({str(c.get(key)) for c in table.configs})
        if not any(_same(v, value) for v in have):
            raise ReportError(f"--baseline {key}={value}: no run has {key}={value}; values: "
                              f"{', '.join(have)}")
        out[key] = value
    return out


def baseline_of(key: str, cfgs: list[Config], user: dict, metric: str):
    """(baseline config, why, note) of one group, or (None, reason, "")."""
    if key in user:
        base = next((c for c in cfgs if _same(c.get(key), user[key]) and c.runs), None)
        return (base, "--baseline", "") if base else (
            None, f"no finished {key}={user[key]} run (--baseline)", "")
    if key == BASELINE[0]:
        base = next((c for c in cfgs if c.get(key) == BASELINE[1] and c.runs), None)
        if base is not None:
            return base, "transfer learning", ""
    ranked = sorted((c for c in cfgs if c.runs), key=lambda c: rank_key(c.score, metric))
    if not ranked:
        return None, "no finished run", ""
    why = f"best by {metric}" if ranked[0].score is not None else f"first ({metric} not logged)"
    note = (f"no finished {key}={BASELINE[1]} run (transfer-learning baseline): compared "
            f"against the {why}, {key}={ranked[0].get(key)}") if key == BASELINE[0] else ""
    return ranked[0], why, note
