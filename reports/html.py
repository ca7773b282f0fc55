"""The run report: report/index.html, static and offline (inline CSS, PNGs beside it, no scripts).

Each section reads its own artifacts; a section whose inputs are missing says "not run" and which
stage makes them, so the report renders at any point of a run.
"""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from fashion_stack.core import atomic, predictions
from fashion_stack.core.config import as_plugin_spec, dump_config
from fashion_stack.core.context import StageContext
from fashion_stack.core.rundir import derived_stage
from fashion_stack.core.labels import LabelError
from fashion_stack.core.metrics import THRESHOLD_GRID, best_global_threshold, f1, per_label_f1
from fashion_stack.core.predictions import PredictionError
from fashion_stack.datasets.folds import FoldsError
from fashion_stack.datasets.manifest import ManifestError
from fashion_stack.reports import plots
from fashion_stack.ensemble.decide_stage import LabelSetsError
from fashion_stack.reports.run_data import (BEST_MEMBER_RULE, USABLE, RunDataError, floor_check, label_frequencies,
                                            read_label_sets, read_manifest, true_labels)
from fashion_stack.reports.tables import html_table

ARTIFACT_ERRORS = (RunDataError, ManifestError, FoldsError, PredictionError, LabelError, LabelSetsError)
LABELS_SHOWN = 10  # best and worst labels listed
FREQUENT_SHOWN = 30


class NotRun(Exception):
    """A section's input artifact is absent; the message says which stage makes it."""


def _report_inputs(ctx: StageContext) -> list:
    run = ctx.run
    files = [run.manifest, run.folds, *[run.member_dir(m.name) / "scores.json" for m in ctx.config.members],
             *[run.stacker_dir(as_plugin_spec(s).name) / "scores.json" for s in ctx.config.stack.stackers], *sorted(run.decision_dir.glob("*")),
             *sorted(run.report_dir.glob("*.csv")), *sorted(run.report_dir.glob("*.json"))]
    return [path for path in files if path.is_file()]


@derived_stage("report", inputs=_report_inputs, outputs=lambda ctx: [ctx.run.report_dir / "index.html"],
               config_sections=("name", "data", "folds", "members", "stack", "decision", "ablation"))
def run_report(ctx: StageContext) -> dict:
    log = ctx.logger("report")
    report = ctx.run.report_dir
    report.mkdir(parents=True, exist_ok=True)
    inputs = _Inputs(ctx)
    parts, not_run = [], []
    for anchor, title, render in SECTIONS:
        try:
            body = render(inputs)
        except (NotRun, FileNotFoundError) as err:
            body = f'<p class="notrun">not run: {html.escape(str(err))}</p>'
            not_run.append(anchor)
        except ARTIFACT_ERRORS as err:  # a broken artifact spoils its section, not the whole report
            body = f'<p class="notrun">could not render: {html.escape(str(err))}</p>'
            not_run.append(anchor)
        parts.append(f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{body}</section>')
    path = report / "index.html"
    atomic.write_text(path, _page(ctx, parts))
    log.info("wrote %s (%d sections, not run: %s)", path, len(SECTIONS), ", ".join(not_run) or "none")
    return {"path": str(path), "sections": len(SECTIONS), "not_run": not_run}


class _Inputs:
    """Lazy, cached access to the run's artifacts, shared by the sections."""

    def __init__(self, ctx: StageContext):
        self.ctx, self.run, self.report = ctx, ctx.run, ctx.run.report_dir
        self._cache: dict = {}

    def _cached(self, key, load):
        if key not in self._cache:
            self._cache[key] = load()
        return self._cache[key]

    @property
    def label_space(self):
        return self._cached("label_space", self.ctx.label_space)

    @property
    def manifest(self) -> pd.DataFrame:
        return self._cached("manifest", lambda: read_manifest(self.run))

    @property
    def rule(self) -> dict:
        return atomic.read_json(require(self.run.decision_dir / "rule.json", "decide"))

    def oof_labels(self) -> tuple:
        """(image ids, true multi-hot, predicted multi-hot) of decision/oof_labels.csv."""
        def load():
            label_sets = read_label_sets(require(self.run.decision_dir / "oof_labels.csv", "decide"))
            ids = list(label_sets)
            return ids, true_labels(self.manifest, ids, self.label_space, self.ctx.config.data.pool), \
                self.label_space.encode(label_sets.values())
        return self._cached("oof_labels", load)

    def scores(self, kind: str) -> dict:
        """name -> scores.json of the configured members ("members") or stackers ("ensemble") that
        have one: the config says what the run is made of, not folders an earlier config left."""
        config = self.ctx.config
        names = [m.name for m in config.members] if kind == "members" else [as_plugin_spec(s).name for s in config.stack.stackers]
        paths = [self.run.root / kind / name / "scores.json" for name in names]
        return {p.parent.name: atomic.read_json(p) for p in paths if p.is_file()}


def require(path: Path, stage: str) -> Path:
    if not Path(path).exists():
        raise NotRun(f"{Path(path).name} is missing (made by --stages {stage})")
    return Path(path)


def _img(name: str, alt: str) -> str:
    return f'<img src="{html.escape(name)}" alt="{html.escape(alt)}">'


# ---- sections ------------------------------------------------------------------------------

def config_section(inputs: _Inputs) -> str:
    config = inputs.ctx.config
    path = inputs.run.root / "config.yaml"
    text = path.read_text(encoding="utf-8") if path.exists() else dump_config(config)
    source = "config.yaml of the run" if path.exists() else "resolved config (config.yaml not saved yet)"
    facts = pd.DataFrame([
        ("members", ", ".join(f"{m.name} ({m.backbone}, {_input_text(m.input_size)} px, {m.mode})"
                              for m in config.members) or "none"),
        ("data", f"{config.data.dir or 'built-in demo'}; pool {config.data.pool}; label map {config.data.label_map}"),
        ("folds", f"k = {config.folds.k}, seed {config.folds.seed}"),
        ("stackers", ", ".join(as_plugin_spec(spec).name for spec in config.stack.stackers)),
        ("decision", f"rules {', '.join(as_plugin_spec(spec).name for spec in config.decision.rules)}; metric {config.decision.metric}; "
                     f"{config.decision.min_labels}..{config.decision.max_labels} labels per image"),
    ], columns=["setting", "value"])
    return (html_table(facts) + f"<details><summary>full {source}</summary><pre>{html.escape(text)}</pre>"
            "</details>")


def data_section(inputs: _Inputs) -> str:
    manifest = inputs.manifest
    statuses = pd.crosstab(manifest["split"], manifest["status"], margins=True, margins_name="all")
    statuses = statuses.reset_index().rename(columns={"split": "split \\ status"})
    labelled = manifest[(manifest["split"] != "test") & manifest["status"].isin(USABLE)]
    cardinality = labelled["labels"].str.split().str.len()
    card_table = cardinality.groupby(labelled["split"]).describe()[["count", "min", "mean", "50%", "max"]]
    card_table = card_table.rename(columns={"50%": "median"}).astype({"count": int, "min": int, "max": int})
    card_table = card_table.reset_index()
    frequencies = label_frequencies(manifest, inputs.label_space)
    names = dict(zip(inputs.label_space.label_ids, inputs.label_space.names))
    top = frequencies.sort_values(ascending=False, kind="stable").head(FREQUENT_SHOWN)
    plots.bars(inputs.report / "label_frequencies.png", [f"{i} {names[i]}" for i in top.index], top.to_numpy(),
               ylabel="labelled usable images", title=f"{len(top)} most frequent labels", horizontal=True)
    never = int((frequencies == 0).sum())
    return ("<h3>Manifest statuses</h3>" + html_table(statuses)
            + "<h3>Labels per image (labelled, usable)</h3>" + html_table(card_table, digits=2)
            + f"<h3>Label frequencies</h3><p>{len(frequencies)} labels, {never} of them never seen in the "
              f"labelled usable images.</p>" + _img("label_frequencies.png", "label frequencies"))


def fold_section(inputs: _Inputs) -> str:
    table = pd.read_csv(require(inputs.report / "fold_scores.csv", "compare"), dtype={"fold": str})
    summary = table[table["fold"].isin(["mean", "std"])]
    best = table.loc[table["best"].astype(bool), "member"].iloc[0]
    highlight = [i for i, m in enumerate(summary["member"]) if m == best]
    folds_img = _img("fold_scores.png", "fold scores") if (inputs.report / "fold_scores.png").exists() else ""
    floor_path = inputs.report / "frequency_floor.json"
    floor = ""
    if floor_path.exists():
        record = atomic.read_json(floor_path)
        floor = (f" Frequency floor (the k most frequent labels of the other folds for every image): "
                 f"<b>{record['oof']:.4f}</b>.")
    correlation = ""
    correlation_path = inputs.report / "member_correlation.csv"
    if correlation_path.exists():
        correlation = ("<h3>Members' pairwise correlation</h3><p>Pearson correlation over every image x label "
                       "cell of the pool, of the members' OOF logits and of their errors (truth minus "
                       "probability): members whose errors correlate near 1 make the same mistakes, and a "
                       "stacker has little to combine.</p>" + html_table(pd.read_csv(correlation_path), digits=3))
    return (f"<p>Best member: <b>{html.escape(best)}</b> ({html.escape(BEST_MEMBER_RULE.format(metric='micro'))})."
            f"{floor} d_* columns: fold-paired "
            "difference member - best (mean and sample std over folds).</p>"
            + html_table(summary, highlight_rows=highlight) + folds_img
            + "<details><summary>per fold</summary>" + html_table(table) + "</details>" + correlation)


def stacking_section(inputs: _Inputs) -> str:
    members, stackers = inputs.scores("members"), inputs.scores("ensemble")
    if not members:
        raise NotRun("members/*/scores.json are missing (made by --stages members)")
    if not stackers:
        raise NotRun("ensemble/*/scores.json are missing (made by --stages stack)")
    rows = [{"source": n, "kind": "member", **_oof_scores(s)} for n, s in members.items()]
    rows += [{"source": n, "kind": "stacker", **_oof_scores(s)} for n, s in stackers.items()]
    table = pd.DataFrame(rows)
    best_member = table[table["kind"] == "member"]["micro_f1@best"].max()
    table["gain_vs_best_member"] = table["micro_f1@best"] - best_member
    cv_threshold = _cv_threshold_scores(inputs)
    if cv_threshold is not None:
        table = table.merge(cv_threshold, on=["source", "kind"], how="left")
    floor_path = inputs.report / "frequency_floor.json"
    floor = atomic.read_json(floor_path)["oof"] if floor_path.exists() else None
    plots.bars(inputs.report / "stacking_gain.png", table["source"], table["micro_f1@best"],
               ylabel="OOF micro-F1 at best threshold", title="Members and stackers (pool OOF)",
               highlight=table.loc[table["micro_f1@best"].idxmax(), "source"],
               reference=None if floor is None else (floor, f"frequency floor {floor:.4f}"))
    return ("<p>OOF scores over the whole pool (stackers: second-level OOF). <b>micro_f1@best and "
            "samples_f1@best use the one threshold that is best for the very rows they score</b> (in-sample, "
            "optimistic); micro_f1@cv_threshold is the decide stage's global rule, its threshold chosen on "
            "the other folds (nested CV). Gain = micro_f1@best minus the best member's.</p>"
            + html_table(table) + _img("stacking_gain.png", "stacking gain"))


def _cv_threshold_scores(inputs: _Inputs):
    """(source, kind, micro_f1@cv_threshold) from decision/scores.csv's global-rule rows, or None."""
    path = inputs.run.decision_dir / "scores.csv"
    if not path.exists():
        return None
    scores = pd.read_csv(path)
    scores = scores[scores["rule"] == "global"]
    return scores[["source", "kind", "micro_f1"]].rename(columns={"micro_f1": "micro_f1@cv_threshold"})


def _oof_scores(record: dict) -> dict:
    oof = record.get("oof", {})
    return {key: oof.get(key, np.nan) for key in ("micro_f1@best", "samples_f1@best", "loss", "mAP")}


def decision_section(inputs: _Inputs) -> str:
    rule = inputs.rule
    scores = pd.read_csv(require(inputs.run.decision_dir / "scores.csv", "decide"))
    metric_column = f"{rule.get('metric', inputs.ctx.config.decision.metric)}_f1"
    if metric_column in scores.columns:
        scores = scores.sort_values(metric_column, ascending=False, kind="stable").reset_index(drop=True)
    kinds = scores["kind"] if "kind" in scores.columns else pd.Series([None] * len(scores))
    chosen = [i for i, (s, k, r) in enumerate(zip(scores["source"], kinds, scores["rule"]))
              if str(s) == str(rule["source"]) and r == rule["rule"] and k in (None, rule.get("kind", k))]
    return (f"<p>Chosen: source <b>{html.escape(str(rule['source']))}</b>, rule <b>{html.escape(rule['rule'])}"
            f"</b> (nested-CV {html.escape(metric_column)} {rule.get('score', float('nan')):.4f}, the best of "
            f"{len(scores)} candidates scored on the same folds, so optimistic).</p>"
            + _honest_paragraph(rule.get("honest")) + "<p>All candidates, nested cross-validated on the OOF pool:</p>"
            + html_table(scores, highlight_rows=chosen) + _vs_best_member_paragraph(inputs) + _vs_mean_paragraph(inputs))


def _honest_paragraph(honest) -> str:
    """The chosen candidate's headline from the outer loop (ensemble.selection), with each fold's choice."""
    if not honest or honest.get("method") is None:
        reason = (honest or {}).get("reason", "the decide stage predates it")
        return f"<p>Honest headline: not measured ({html.escape(reason)}).</p>"
    per_fold = pd.DataFrame(honest["per_fold"])
    return (f"<p><b>Honest headline</b>: micro-F1 <b>{honest['micro_f1']:.4f}</b>, sample-F1 "
            f"<b>{honest['samples_f1']:.4f}</b>. For each fold the whole choice among the "
            f"{honest['n_candidates']} candidates was repeated on the other folds only, and that choice "
            "predicted the fold; the fold's labels never took part in the choice that scored it.</p>"
            + html_table(per_fold))


def _vs_best_member_paragraph(inputs: _Inputs) -> str:
    path = inputs.run.decision_dir / "vs_best_member.csv"
    if not path.exists():
        return ""
    return ("<h3>The stack's gain over its best member</h3><p>The honest headline (outer loop) against the best "
            "single member with its best rule (nested CV; a maximum over the member candidates, so the "
            "comparison is conservative for the stack), with a 95% fold-paired bootstrap interval (images "
            "resampled within folds) and the fold-paired t interval over the folds' differences.</p>"
            + html_table(pd.read_csv(path)))


def _vs_mean_paragraph(inputs: _Inputs) -> str:
    path = inputs.run.decision_dir / "vs_mean.csv"
    if not path.exists():
        return ""
    table = pd.read_csv(path)
    return ("<h3>Each stacker against the mean, rule by rule</h3><p>Nested-CV change against the mean stacker "
            "under the same rule, with a 95% fold-paired bootstrap interval (images resampled within folds).</p>"
            + html_table(table))


def ablation_section(inputs: _Inputs) -> str:
    table = pd.read_csv(require(inputs.report / "ablation.csv", "ablate"))
    shown = [c for c in table.columns if not (c.startswith("delta_fold") or "_fold" in c)]
    image = _img("ablation.png", "ablation") if (inputs.report / "ablation.png").exists() else ""
    return ("<p>Stacker and decision rule refitted per member subset on the cached member OOF; "
            "delta vs all members with a 95% paired bootstrap interval (images resampled within folds).</p>"
            + html_table(table[shown], highlight_rows=[0]) + image)


def per_label_section(inputs: _Inputs) -> str:
    _, truth, predicted = inputs.oof_labels()
    space = inputs.label_space
    table = pd.DataFrame({"labelId": space.label_ids, "name": space.names,
                          "group": space.groups if space.has_groups() else "",
                          "true": truth.sum(axis=0), "predicted": predicted.sum(axis=0),
                          "f1": per_label_f1(truth, predicted)})
    if not space.has_groups():
        table = table.drop(columns=["group"])
    present = table[table["true"] > 0].sort_values(["f1", "true"], ascending=[False, False], kind="stable")
    intro = (f"<p>Decision-stage OOF labels against the truth: {len(present)} labels that occur in the pool "
             f"(left out, never occurring there: {len(table) - len(present)}).</p>")
    if len(present) <= 2 * LABELS_SHOWN:  # best and worst lists would overlap
        return intro + "<h3>All labels, best first</h3>" + html_table(present, digits=3)
    return (intro + "<div class='pair'><div><h3>Best</h3>" + html_table(present.head(LABELS_SHOWN), digits=3)
            + "</div><div><h3>Worst</h3>" + html_table(present.tail(LABELS_SHOWN).iloc[::-1], digits=3)
            + "</div></div>")


def cardinality_section(inputs: _Inputs) -> str:
    _, truth, predicted = inputs.oof_labels()
    true_counts, predicted_counts = truth.sum(axis=1), predicted.sum(axis=1)
    plots.count_histograms(inputs.report / "cardinality.png",
                           {"true": true_counts, "predicted": predicted_counts},
                           xlabel="labels per image", title="Labels per image: predicted (OOF) vs true")
    error = np.abs(true_counts.astype(int) - predicted_counts.astype(int)).mean()
    return (f"<p>Mean true {true_counts.mean():.2f}, mean predicted {predicted_counts.mean():.2f}, "
            f"mean absolute difference {error:.2f} labels per image.</p>" + _img("cardinality.png", "cardinality"))


def threshold_section(inputs: _Inputs) -> str:
    source = str(inputs.rule["source"])
    folder = inputs.run.member_dir(source) if inputs.rule.get("kind") == "member" else inputs.run.stacker_dir(source)
    path = require(folder / "oof.parquet", "members" if inputs.rule.get("kind") == "member" else "stack")
    oof = predictions.read(path, inputs.label_space.label_ids)
    truth = true_labels(inputs.manifest, list(oof.index), inputs.label_space, inputs.ctx.config.data.pool)
    probs = oof.to_numpy()
    curves = {m: [f1(truth, probs >= th, m) for th in THRESHOLD_GRID] for m in ("micro", "samples")}
    best_th, best_score = best_global_threshold(truth, probs, "micro", THRESHOLD_GRID)
    plots.curve(inputs.report / "threshold_curve.png", THRESHOLD_GRID,
                {f"{m}-F1": v for m, v in curves.items()}, xlabel="global threshold", ylabel="F1",
                title=f"F1 vs one global threshold on {source}'s OOF",
                mark=(best_th, best_score, f"best micro {best_score:.4f} at {best_th:.2f}"))
    return (f"<p>One threshold for every label on the chosen source's OOF ({html.escape(source)}); "
            f"in-sample over the pool, so an upper bound for the global rule.</p>"
            + _img("threshold_curve.png", "threshold curve"))


def summary_section(inputs: _Inputs) -> str:
    """The answer first: what was chosen, how good it honestly is, against the floor, the best
    member, where the submission is and what the run cost; warnings when it does not work."""
    from fashion_stack.reports.summary import headline_lines
    run, metric = inputs.run, inputs.ctx.config.decision.metric
    lines = headline_lines(run, metric, {m.name for m in inputs.ctx.config.members})
    if not lines:
        raise NotRun("decision/rule.json and members/*/scores.json are missing (made by --stages members,decide)")
    submission = run.submission
    lines.append(f"Submission: {submission.resolve()}" if submission.exists() else
                 "Submission: not written yet (made by --stages submit)")
    times_path = run.root / "stage_times.json"
    if times_path.exists():
        times = atomic.read_json(times_path)
        total = sum(t.get("seconds", 0) for name, t in times.items() if name != "report")
        peak = max((t.get("peak_memory_mb") or 0 for t in times.values()), default=0)
        lines.append(f"Run time: {total / 60:.1f} min over {len([n for n in times if n != 'report'])} stage(s) "
                     f"(each stage's latest run), peak memory {peak / 1024:.1f} GB (stage_times.json)")
    warnings = floor_check(run, metric, among={m.name for m in inputs.ctx.config.members})
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    alerts = "".join(f'<p class="warn">{html.escape(line)}</p>' for line in warnings)
    return f'<div class="box"><ul>{items}</ul></div>{alerts}'


SECTIONS = [
    ("summary", "Summary", summary_section),
    ("config", "Run config", config_section),
    ("data", "Data summary", data_section),
    ("folds", "Fold scores per member", fold_section),
    ("stacking", "Stacking gain over members", stacking_section),
    ("decision", "Decision rule scores", decision_section),
    ("ablation", "Ablation", ablation_section),
    ("per-label", "Per-label F1", per_label_section),
    ("cardinality", "Predicted vs true cardinality", cardinality_section),
    ("threshold", "Threshold curve", threshold_section),
]

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1150px;padding:0 24px 48px;
color:#1d2330;line-height:1.4}
h1{margin:24px 0 4px}h2{border-bottom:2px solid #d9dee8;padding-bottom:4px;margin-top:36px}h3{margin:18px 0 6px}
nav{position:sticky;top:0;background:#fff;padding:8px 0;border-bottom:1px solid #e4e7ee;font-size:14px}
nav a{margin-right:14px;color:#2456a6;text-decoration:none}
table{border-collapse:collapse;font-size:13px;margin:8px 0;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d9dee8;padding:3px 8px;text-align:left}th{background:#f1f4f9}td.num{text-align:right}tr.hl td{background:#fff4e0;font-weight:600}
img{max-width:100%;margin:8px 0;border:1px solid #eef0f4}
pre{background:#f6f8fa;padding:10px;font-size:12px;overflow:auto;max-height:420px}
.notrun{color:#8a5a00;background:#fff8e6;border-left:4px solid #f0b429;padding:6px 10px}
.pair{display:flex;gap:24px;flex-wrap:wrap}.meta{color:#5b6475;font-size:14px}
.box{background:#f1f6ff;border:1px solid #b9cdf0;padding:4px 14px;font-size:15px}
.warn{color:#8a1c1c;background:#fdecec;border-left:4px solid #d64545;padding:6px 10px;font-weight:600}
"""


def _page(ctx: StageContext, parts: list) -> str:
    nav = "".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t, _ in SECTIONS)
    title = f"Run report: {html.escape(ctx.config.name)}"
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{STYLE}</style></head><body><h1>{title}</h1>"
            f"<p class='meta'>Run directory <code>{html.escape(ctx.run.root.name)}</code>. "
            f"Static page, no external resources; plots are the PNG files beside it.</p>"
            f"<nav>{nav}</nav>{''.join(parts)}</body></html>\n")


def _input_text(input_size) -> str:
    """"224" for a square input, "320x224" (height x width) otherwise, "native" for the backbone's."""
    if input_size is None:
        return "native"
    height, width = input_size
    return str(width) if height == width else f"{height}x{width}"
