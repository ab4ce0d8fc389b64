"""``xaiexplain-train froc-summary``: FROC studies run with different seeds (renderings, splits, classifiers)
in one table, and that table put into the README between its marker comments (``--readme``).

Per method: the sensitivity at 10 false positives per image per seed, the relative change per seed with
its bootstrap interval over the images, and over seeds the mean, the sample standard deviation and the
bootstrap interval of the mean (images resampled within each seed, ``froc_bootstrap``). Over all (seed,
method) configurations: the mean and standard deviation, the closest to what paper 2's +/- spans.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from xaiexplain.errors import XAIExplainError
from xaiexplain.io.files import atomic_path, output_set

from . import froc_bootstrap
from .froc_study import PAPER_2_RELATIVE_CHANGE, PAPER_2_SPREAD, interval_text, percent, rendered_images

README_START = "<!-- froc-summary:start -->"
README_END = "<!-- froc-summary:end -->"


def _mean_and_sd(values) -> tuple[float | None, float | None]:
    values = np.array([v for v in values if v is not None], float)
    return (float(values.mean()) if values.size else None, float(values.std(ddof=1)) if values.size > 1 else None)


def _replicates(bootstrap: dict | None) -> list:
    return (bootstrap or {}).get("replicates") or []


def _interval_of_mean(replicate_lists) -> list[float] | None:
    """The bootstrap interval of a mean over seeds (None unless every seed has replicates)."""
    if not replicate_lists or not all(replicate_lists):
        return None
    return froc_bootstrap.interval(froc_bootstrap.mean_replicates(replicate_lists))


def summarize(study_folders, out: Path, command: str = "", readme: Path | None = None) -> dict:
    """Combine the ``froc.json`` of each study folder into ``froc-summary.json`` and ``.md`` in ``out`` (one
    output set); with ``readme``, put the table into that file between ``README_START`` and ``README_END``."""
    runs = []
    for folder in study_folders:
        manifest = Path(folder) / "froc.json"
        if not manifest.is_file():
            raise XAIExplainError(f"{folder} holds no froc.json: run xaiexplain-train froc-study --out {folder} first")
        run = json.loads(manifest.read_text())
        if "images" not in run and (Path(folder) / "data" / "dataset.json").is_file():  # a study before it recorded them
            run["images"] = rendered_images(json.loads((Path(folder) / "data" / "dataset.json").read_text()))
        runs.append(run)
    if readme is not None:
        readme_text(Path(readme), "")  # refused before anything is written when it has no markers
    methods = [m for m in runs[0]["methods"] if all(m in run["methods"] for run in runs)]
    table = {}
    for method in methods:
        entries = [run["methods"][method] for run in runs]
        changes = [e["relative_change"] for e in entries]
        mean, sd = _mean_and_sd(changes)
        table[method] = {
            "initial": [e["initial"]["sensitivity_at_10_fp"] for e in entries],
            "augmented": [e["augmented"]["sensitivity_at_10_fp"] for e in entries],
            "relative_change": changes,
            "relative_change_interval_95": [(e.get("relative_change_bootstrap") or {}).get("interval_95")
                                            for e in entries],
            "relative_change_mean": mean, "relative_change_sd": sd,
            "relative_change_mean_interval_95": _interval_of_mean(
                [_replicates(e.get("relative_change_bootstrap")) for e in entries]),
            "iterations_mean": float(np.mean([e["iterations_mean"] for e in entries])),
        }
    every_change = [change for entry in table.values() for change in entry["relative_change"]]
    mean, sd = _mean_and_sd(every_change)
    summary = {
        "command": command, "studies": [str(f) for f in study_folders], "seeds": [run.get("seed") for run in runs],
        "dates": [run.get("date") for run in runs], "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "detection_radius_px": runs[0]["detection_radius_px"],
        "candidate_rule": [run.get("candidate_rule", "up to 40 local maxima per map") for run in runs],
        "normalisation": [run.get("normalisation") for run in runs],
        "premise": [run.get("premise") for run in runs],
        "runs": [{"command": run.get("command"), "images": run.get("images"), "seconds": run.get("seconds"),
                  "validation_auc": (run.get("classifier_metrics") or {}).get("validation_auc")} for run in runs],
        "paired_negatives": [run.get("paired_negatives", 0) for run in runs],
        "bootstrap": runs[0].get("bootstrap"),
        "methods": table,
        "configurations": {"count": sum(c is not None for c in every_change), "relative_change_mean": mean,
                           "relative_change_sd": sd,
                           "relative_change_mean_interval_95": _interval_of_mean(
                               [_replicates(run.get("relative_change_mean_bootstrap")) for run in runs])},
        "paper_2": PAPER_2_RELATIVE_CHANGE, "paper_2_spread": PAPER_2_SPREAD}
    text = summary_markdown(summary, runs)
    with output_set(out, "froc-summary.json") as written:
        written.path("froc-summary.md").write_text(text)
        written.manifest_data = summary
    if readme is not None:
        put_in_readme(Path(readme), readme_block(summary, text))
    return summary


def _per_seed(values, digits: str = ".3f") -> str:
    return " / ".join("n/a" if v is None else f"{v:{digits}}" for v in values)


def _stated_once(values) -> str:
    """One text for all seeds, or each seed's (a dict as its keys and values)."""
    texts = ["; ".join(f"{key.replace('_', ' ')}: {text}" for key, text in v.items()) if isinstance(v, dict)
             else "not stated" if v is None else str(v) for v in values]
    return texts[0] if len(set(texts)) == 1 else " / ".join(f"seed {n}: {t}" for n, t in enumerate(texts))


def _premises(premises: list[dict | None]) -> str:
    """Algorithm 1's premise per seed, in one sentence."""
    checked = [p for p in premises if p]
    if not checked:
        return "Premise of Algorithm 1 not checked."
    per_seed = " / ".join("not checked" if not p else f"{p['called_negative']} of {p['images']} "
                          f"({percent(p['share'], sign=False)})" for p in premises)
    met = sum(bool(p["holds"]) for p in checked)
    return (f"Premise of Algorithm 1 (truly positive test images called positive that are called negative once "
            f"their malignant nodules are removed; target >= {100 * checked[0]['target']:.0f} %): {per_seed}; met "
            f"in {met} of {len(premises)} seeds; removal: {_stated_once([p['removal'] for p in checked])}.")


def _runs(runs: list[dict]) -> str:
    """How each seed's study was run: the images it rendered, its classifier, its time and command."""
    commands = "; ".join(f"`{r['command']}`" for r in runs if r["command"]) or "not recorded"
    return (f"Images rendered per seed: {_per_seed([r['images'] for r in runs], 'd')}; the classifiers' best "
            f"validation AUC: {_per_seed([r['validation_auc'] for r in runs])}; seconds each study ran (rendering "
            f"and training where it did them, and the methods): {_per_seed([r['seconds'] for r in runs], '.0f')}. "
            f"Study commands: {commands}.")


def summary_markdown(summary: dict, runs: list[dict]) -> str:
    lines = ["| method | SE/10 FPs initial (per seed) | augmented (per seed) | relative change per seed "
             "[95 % interval] | over seeds: mean +/- sd [95 % interval] | mean iterations |",
             "|---|---|---|---|---|---|"]
    for method, entry in summary["methods"].items():
        per_seed = " / ".join(percent(change) + interval_text({"interval_95": bounds})
                              for change, bounds in zip(entry["relative_change"], entry["relative_change_interval_95"]))
        sd = entry["relative_change_sd"]
        over_seeds = (percent(entry["relative_change_mean"]) + ("" if sd is None else f" +/- {percent(sd, False)}")
                      + interval_text({"interval_95": entry["relative_change_mean_interval_95"]}))
        lines.append(f"| {method} | {_per_seed(entry['initial'])} | {_per_seed(entry['augmented'])} | {per_seed} | "
                     f"{over_seeds} | {entry['iterations_mean']:.1f} |")
    positives = ", ".join(f"{run['called_positive']} of {run['test_images']}" for run in runs)
    premises = _premises(summary["premise"])
    bootstrap = summary["bootstrap"] or {}
    configurations = summary["configurations"]
    sd = configurations["relative_change_sd"]
    return "\n".join(lines) + (
        f"\n\n{len(runs)} seeds ({', '.join(str(s) for s in summary['seeds'])}); test images called positive: "
        f"{positives}; paired negatives in training: {_per_seed(summary['paired_negatives'], 'd')}. {premises}\n\n"
        f"{_runs(summary['runs'])}\n\n"
        f"Candidates: {_stated_once(summary['candidate_rule'])}; detection radius "
        f"{summary['detection_radius_px']:.1f} px (1.9 % of the image side, as paper 2 for AMD). Normalisation: "
        f"{_stated_once(summary['normalisation'])}. Intervals: per seed, "
        f"{bootstrap.get('interval', 'no bootstrap')} over the test images called positive "
        f"({bootstrap.get('samples', 0)} resamples); over seeds, of the mean over seeds with the images resampled "
        f"within each seed (the spread from the images evaluated; the sd is the spread over seeds).\n\n"
        f"Over all {configurations['count']} (seed, method) configurations the relative change is "
        f"{percent(configurations['relative_change_mean'])}"
        f"{'' if sd is None else f' +/- {percent(sd, False)} (sd)'}"
        f"{interval_text({'interval_95': configurations['relative_change_mean_interval_95']})}; paper 2 on fundus "
        f"images: {summary['paper_2']} ({summary['paper_2_spread']}).\n")


def readme_block(summary: dict, text: str) -> str:
    dates = sorted({d for d in summary["dates"] if d})
    run = "on " + (dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}") if dates else "on unrecorded dates"
    return (f"*Written by `xaiexplain-train froc-summary` on {summary['date']} from the studies run {run} "
            f"(`{summary['command']}`).*\n\n{text}")


def readme_text(readme: Path, block: str) -> str:
    """The README's text with ``block`` between its marker comments; refused unless each marker is in it
    once, the start before the end."""
    text = readme.read_text() if readme.is_file() else ""
    start, end = text.find(README_START), text.find(README_END)
    if text.count(README_START) != 1 or text.count(README_END) != 1 or end < start:
        raise XAIExplainError(f"{readme} needs the lines {README_START} and {README_END}, once each and in that "
                              "order, around the place of the FROC table")
    return text[:start + len(README_START)] + "\n" + block.strip() + "\n" + text[end:]


def put_in_readme(readme: Path, block: str) -> None:
    """Replace what stands between the README's marker comments with ``block`` (the rest unchanged)."""
    text = readme_text(readme, block)
    with atomic_path(readme) as temporary:
        temporary.write_text(text)
