"""The last screen of a run: what each stage did, where everything is, the headline scores."""
from __future__ import annotations

import json

import pandas as pd

from fashion_stack.reports.run_data import best_member, floor_check, floor_margin


def _short(summary: dict) -> str:
    parts = []
    for key, value in summary.items():
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            # per-member / per-stacker records: show each one's out-of-fold micro-F1
            scores = {name: v.get("oof_micro_f1@best", v.get("micro_f1@best")) for name, v in value.items()}
            # "@best": the best global threshold for the very rows scored (in-sample, optimistic);
            # the decide stage's nested and outer-loop figures below are the honest ones
            parts.append(f"{key} OOF micro-F1@best (threshold tuned on the scored rows): " + ", ".join(
                f"{name}={score:.4f}" for name, score in scores.items() if score is not None))
            cv = {name: v.get("micro_f1@cv_threshold") for name, v in value.items()}
            if any(score is not None for score in cv.values()):
                parts.append("threshold chosen on the other folds: " + ", ".join(
                    f"{name}={score:.4f}" for name, score in cv.items() if score is not None))
            continue
        if key in ("seconds", "up_to_date") or isinstance(value, (dict, list)) and len(str(value)) > 60:
            continue
        if isinstance(value, float):
            value = f"{value:.4g}"
        parts.append(f"{key}={value}")
    return ", ".join(parts)


def honest_line(honest) -> str:
    """The headline measured on rows the choice never saw (decision/rule.json "honest")."""
    if not honest or honest.get("method") is None:
        reason = (honest or {}).get("reason", "the decide stage predates it")
        return f"Honest headline: not measured ({reason})"
    choices = ", ".join(f"{c['source']}+{c['rule']}" for c in honest["per_fold"])
    return (f"Honest headline (outer loop: the choice repeated without each scored fold): micro-F1 "
            f"{honest['micro_f1']:.4f}, sample-F1 {honest['samples_f1']:.4f}; the folds chose {choices}")


def final_screen(ctx, summaries: dict) -> str:
    run = ctx.run
    lines = ["", f"Run directory: {run.root.resolve()}"]
    for stage, summary in summaries.items():
        skipped = " (already done, skipped)" if summary.get("up_to_date") else ""
        lines.append(f"  {stage:<9} {summary.get('seconds', 0):>7.1f} s{skipped}  {_short(summary)}")
    if summaries and all(summary.get("up_to_date") for summary in summaries.values()):
        lines.append("Nothing to do: every stage asked for was already up to date.")
    lines.append("")
    lines += headline_lines(run, ctx.config.decision.metric, {m.name for m in ctx.config.members})
    submit = summaries.get("submit", {})
    if "test_micro_f1" in submit:
        lines.append(f"Submission scored on the hidden test labels: micro-F1 {submit['test_micro_f1']:.4f}, "
                     f"sample-F1 {submit['test_samples_f1']:.4f}")
    for label, path in (("Submission", run.submission), ("Report", run.report_dir / "index.html")):
        if path.exists():
            lines.append(f"{label}: {path.resolve()}")
    warnings = floor_check(run, ctx.config.decision.metric, among={m.name for m in ctx.config.members})
    if warnings:
        lines += [""] + warnings
    return "\n".join(lines)


def headline_lines(run, metric: str = "micro", members=None) -> list:
    """The chosen pair, the honest headline, the frequency floor and the margin, the best member
    (among `members`, the run config's, when given): the same lines on the last screen and in the
    report's summary box."""
    lines = []
    rule_path, scores_path = run.decision_dir / "rule.json", run.decision_dir / "scores.csv"
    if rule_path.exists():
        chosen = json.loads(rule_path.read_text())
        candidates = len(pd.read_csv(scores_path)) if scores_path.exists() else "?"
        lines.append(f"Chosen: {chosen.get('source')} + rule {chosen.get('rule')}: nested-CV "
                     f"{chosen.get('metric', 'micro')}-F1 {chosen.get('score', float('nan')):.4f}"
                     f" (the best of {candidates} candidates on the same folds, so optimistic)")
        lines.append(honest_line(chosen.get("honest")))
        versus = (chosen.get("honest") or {}).get("vs_best_member")
        if versus:
            delta = next(v for k, v in versus.items() if k.startswith("delta_") and k.endswith("_f1"))
            lines.append(f"Stack gain over the best member: honest headline {versus['headline']:.4f} against "
                         f"{versus['best_member']} + {versus['best_member_rule']} {versus['best_member_nested']:.4f}"
                         f" (nested, the best of its rules): {delta:+.4f}, 95% fold-paired interval [{versus['ci_low']:+.4f}, "
                         f"{versus['ci_high']:+.4f}]{'' if versus['excludes_0'] else ', includes 0'}")
    margin = floor_margin(run)
    floor_path = run.report_dir / "frequency_floor.json"
    if margin is not None:
        floor, difference = margin
        verdict = "clears it" if difference > 0 else "does NOT clear it"
        lines.append(f"Frequency floor (the most frequent labels for every image, out of fold): {metric}-F1 "
                     f"{floor:.4f}; the headline {verdict} (margin {difference:+.4f})")
    elif floor_path.exists():
        lines.append(f"Frequency floor (the most frequent labels for every image, out of fold): {metric}-F1 "
                     f"{json.loads(floor_path.read_text())['oof']:.4f}")
    best = best_member(run, metric, among=members)  # the config's members, not folders an earlier config left
    if best is not None:
        lines.append(f"Best member: {best[0]}, pooled OOF {metric}-F1@best {best[1]:.4f} (threshold tuned on the "
                     "scored rows; the same figure in compare, ablate and the report)")
    return lines
