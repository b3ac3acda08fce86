"""Writes report.html (Jinja2, autoescaped, self-contained), report.md and leaderboard.csv.

Numbers are formatted here, in one place, so the HTML, the Markdown and the
CSV agree. The CSV keeps full precision (``repr`` of floats) and a fixed
column order, so the same runs always give the same bytes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from transferlab.report.table import RESULT_COLUMNS, Table, replicate_key

TEMPLATES = Path(__file__).parent / "templates"
ERROR_TAGS = ("transferlab.error", "error", "mlflow.note.content")


def fnum(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.{digits}f}"


def fdelta(x, digits: int = 3) -> str:
    return "—" if x is None else f"{x:+.{digits}f}"


def fint(x) -> str:
    return "—" if x is None else f"{int(round(x)):,}"


def fp(p) -> str:
    if p is None:
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def fval(v) -> str:
    return "—" if v is None else str(v)


def md(text) -> str:
    """Escapes a value for a Markdown table cell (no raw HTML, no table breaks)."""
    s = str(text).replace("\r", " ").replace("\n", " ")
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"([\\`*_\[\]|#~!])", r"\\\1", s)


def redact(uri: str | None) -> str:
    """The tracking URI without user:password."""
    if not uri:
        return "(MLflow default)"
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return uri


def run_url(ui_url: str | None, experiment_id: str, run_id: str) -> str | None:
    if not ui_url:
        return None
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def _csv_value(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return str(int(v)) if v.is_integer() and abs(v) < 2 ** 53 else repr(v)
    return str(v)


def leaderboard_csv(table: Table, rows: list[dict], ui_url: str | None) -> str:
    cols = list(table.shown) + ["run_name", "status", *RESULT_COLUMNS, "run_id",
                                "experiment_id"] + (["mlflow_url"] if ui_url else [])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        r = dict(r, mlflow_url=run_url(ui_url, r["experiment_id"], r["run_id"]))
        w.writerow([_csv_value(r.get(c)) for c in cols])
    return buf.getvalue()


def _env(autoescape: bool) -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=autoescape,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                      keep_trailing_newline=True)
    env.filters.update(num=fnum, delta=fdelta, int=fint, p=fp, val=fval, md=md)
    return env


def incomplete_runs(table: Table) -> list[dict]:
    out = []
    for rec in table.records:
        if table.complete(rec):
            continue
        f = table.fields[rec.run_id]
        epochs = max((len(h) for h in rec.history.values()), default=0)
        reason = next((rec.tags[t] for t in ERROR_TAGS if rec.tags.get(t)), "")
        if rec.finished and "test_acc" not in rec.metrics:
            reason = reason or "finished without test_acc"
        out.append(dict(name=rec.name, status=rec.status, run_id=rec.run_id,
                        experiment_id=rec.experiment_id, epochs=epochs, reason=reason[:300],
                        config=" · ".join(f"{k}={f.get(k)}" for k in table.shown)))
    for cfg in table.configs:
        newer = cfg.seeds
        for rec in cfg.superseded:
            f = table.fields[rec.run_id]
            latest = newer[replicate_key(rec)].run_id
            out.append(dict(name=rec.name, status=rec.status, run_id=rec.run_id,
                            experiment_id=rec.experiment_id,
                            epochs=max((len(h) for h in rec.history.values()), default=0),
                            reason=f"superseded by the later run {latest} of the same "
                                   "configuration and seed (not in the matrix)",
                            config=" · ".join(f"{k}={f.get(k)}" for k in table.shown)))
    return sorted(out, key=lambda r: (r["status"], r["name"], r["run_id"]))


def alerts(context: dict) -> list[str]:
    """Every flag and warning the report carries, one line each (the sweep prints them)."""
    table = context["table"]
    names = {r.run_id: r.name for r in table.records}
    out = [f"warning: {w}" for w in context["warnings"]]
    out += [f"flagged run {names.get(rid, rid)}: {f}" for rid, fs in table.flags.items() for f in fs]
    for d in context.get("data_sections") or []:
        if d.get("leaks") and d.get("policy") != "drop":
            out.append(f"warning: data {d['fingerprint']}: {d['leaks']} duplicate pair(s) across "
                       "splits inflate validation and test scores (dataset.duplicates=drop)")
    out += [f"note: {m.group}: {m.reason}" for m in context["no_baseline"]]
    return out


def summary(context: dict) -> dict:
    """The report's answer as plain data (``summary.json``): what a sweep's parent run shows."""
    sel = context["chosen"]
    chosen = None
    if sel.chosen is not None:
        chosen = dict(label=sel.label, values={k: sel.chosen.get(k) for k in context["table"].axes},
                      score=sel.score, n_seeds=sel.n_seeds, n_folds=sel.n_folds,
                      estimates={m: v[0] for m, v in sel.estimates.items()},
                      interval=list(sel.interval) if sel.interval else None,
                      interval_kind=sel.interval_kind, flags=sel.flags,
                      run_ids=[r.run_id for r in sel.chosen.runs])
    return dict(title=context["title"], metric=context["metric"], chosen=chosen,
                note=sel.note, warnings=context["warnings"], alerts=alerts(context),
                comparisons=[dict(key=c.key, group=c.group, candidate=c.candidate_value,
                                  baseline=c.baseline_value, diff=c.diff, low=c.low, high=c.high,
                                  p=c.p_value, p_holm=c.p_adjusted, seeds=len(c.pairs),
                                  method=c.method, note=c.note, verdict=c.verdict,
                                  real=c.verdict.startswith(("better than", "worse than")))
                             for c in context["comparisons"]])


def final_lines(s: dict) -> list[str]:
    """A sweep's last lines from its ``summary.json``: the chosen configuration and its
    estimate with its interval, each real verdict, every flag and warning; one line each."""
    chosen = s.get("chosen")
    if not chosen:
        lines = [f"no configuration chosen: {s.get('note')}"]
    else:
        runs = (f"{chosen['n_seeds']} runs over {chosen['n_folds']} folds" if chosen.get("n_folds")
                else f"{chosen['n_seeds']} seed(s)")
        test = chosen["estimates"].get("test_acc")
        line = f"chosen on validation: {chosen['label']} ({s['metric']} {chosen['score']:.3f}, {runs})"
        if test is not None:
            iv = chosen.get("interval")
            line += f"; its test accuracy {test:.3f} is the estimate" + (
                f", 95% interval [{iv[0]:.3f}, {iv[1]:.3f}] ({chosen['interval_kind']})" if iv else "")
        lines = [line]
        if chosen.get("flags"):
            lines.append("warning: the chosen configuration is flagged, so its estimate is not a "
                         f"trained model's: {'; '.join(chosen['flags'])}")
    comps = s.get("comparisons", [])
    real = [c for c in comps if c.get("real")]
    for c in real:
        lines.append(f"verdict: {c['key']}={c['candidate']} {c['verdict']} ({c['group']}): "
                     f"Δ test acc {c['diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}], "
                     f"Holm p {c['p_holm']:.3g}")
    if comps and not real:
        lines.append(f"verdicts: none of the {len(comps)} comparison(s) is a real difference "
                     "(report: 'Is the difference real?')")
    return lines + list(s.get("alerts", []))


def _finite(obj):
    """NaN/inf as null, so summary.json is strict JSON (a diverged run logs NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_files(out_dir: Path, context: dict, table: Table, rows: list[dict],
                ui_url: str | None) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"html": out_dir / "report.html", "md": out_dir / "report.md",
             "csv": out_dir / "leaderboard.csv", "json": out_dir / "summary.json"}
    paths["json"].write_text(json.dumps(_finite(summary(context)), indent=1, sort_keys=True,
                                        ensure_ascii=False, default=str)
                             + "\n", encoding="utf-8")
    html = _env(True).get_template("report.html.j2").render(**context)
    text = _env(False).get_template("report.md.j2").render(**context)
    paths["html"].write_text(html, encoding="utf-8")
    paths["md"].write_text(text, encoding="utf-8")
    paths["csv"].write_text(leaderboard_csv(table, rows, ui_url), encoding="utf-8", newline="")
    return paths
