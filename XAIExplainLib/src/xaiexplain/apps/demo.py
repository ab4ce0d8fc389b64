"""``xaiexplain demo`` (``make demo``): the embedded default, end to end, on a CPU in minutes.

The phantom series of a real LIDC scan with several nodules, the shipped models, every method; the NRRD
overlays, a Slicer scene, PNG panels in the style of paper 1's Fig. 6, the counterfactual pair per nodule,
the quick benchmark, and ``report.html`` tying them together.
"""
from __future__ import annotations

import html
import sys
import time
from pathlib import Path

import numpy as np

from xaiexplain.io.explanation_files import panel_file_name
from xaiexplain.io.files import output_set

SCENE_METHODS = ("cycle-am", "deep-shap", "lrp", "grad-cam", "iterative:grad-cam")
# The shipped 3D classifier (paper 1's ConvNet with 3D convolutions) and the methods whose volumes the demo
# shows in three orthogonal planes
VOLUME_CLASSIFIER = "demo-classifier-3d"
VOLUME_METHODS = ("integrated-gradients", "grad-cam", "deep-taylor")


def figure_methods() -> list[str]:
    """The base methods in the order of paper 1's Fig. 6 (the registry's ``figure_rank``): cycle-am,
    deep-shap, deep-taylor, lrp, then the others."""
    from xaiexplain.explainers import registry

    return sorted(registry.base_methods(), key=lambda name: registry.get(name).figure_rank)


def _progress_bar(total: int, description: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="method", file=sys.stderr)


def run_demo(out: Path, scan: str = "LIDC-IDRI-0078", seed: int = 0, command: str = "") -> dict:
    from xaiexplain import slicer as mrml
    from xaiexplain.data import lidc
    from xaiexplain.data.sources.phantom_series import write_phantom_series
    from xaiexplain.evaluate.benchmark import QUICK_NODULES, all_methods, held_out_patches, run_benchmark
    from xaiexplain.explainers.counterfactuals import counterfactuals
    from xaiexplain.io.explanation_files import write_series_explanation
    from xaiexplain.io.figures import counterfactual_grid, explanation_panel
    from xaiexplain.io.patch_stack_files import write_patch_stacks
    from xaiexplain.models.bundles import load_bundle

    started = time.time()
    timings = {}
    methods = all_methods()
    # the demo's own files in out; its parts (series, patches, explanations, slicer, benchmark) are sets of their own
    with output_set(out, "demo.json") as top:
        written = write_phantom_series(lidc.find_scan_by_key(scan), out / "series", seed=seed)
        print(f"phantom series: {written.series_folder} ({written.slices} slices, {written.nodules} nodules)")
        write_patch_stacks(written.series_folder, out / "patches", use_lidc=True)
        timings["series and patches"] = time.time() - started

        mark = time.time()
        bar = _progress_bar(len(methods), "explaining the series")
        summary, result = write_series_explanation(written.series_folder, out / "explanations", methods, use_lidc=True,
                                                   command=command, progress=lambda method: bar.update())
        bar.close()
        timings["all methods on the series"] = time.time() - mark

        # one patch per nodule, its largest slice through the consensus: paper 1's Fig. 6 and the counterfactuals
        central = [int(np.argmax([(stack.patches[n] > -400).sum() for n in range(len(stack.patches))]))
                   for stack in result.stacks]
        patches = np.stack([stack.patches[c] for stack, c in zip(result.stacks, central)])
        titles = [_row_title(row["name"], (row.get("lidc") or {}).get("label") or "no label",
                             row["slice_probabilities"][c], row["threshold"])
                  for row, c in zip(result.nodules, central)]
        in_figure = figure_methods()
        shown = [m for m in in_figure if m in methods] + [m for m in methods if m not in in_figure]
        maps = {m: np.stack([result.maps[m][n][c] for n, c in enumerate(central)]) for m in shown}
        explanation_panel(patches, {m: maps[m] for m in shown if m in in_figure},
                          top.path("figure6_methods.png"), titles,
                          title=f"{scan} phantom: each method's map, drawn as its kind says (column titles)")
        explanation_panel(patches, {m: maps[m] for m in shown if m not in in_figure},
                          top.path("figure6_iterative.png"), titles,
                          title=f"{scan} phantom: iterative augmentation of each method's evidence")
        bundle = load_bundle()
        pair = counterfactuals(bundle, patches)
        counterfactual_grid(patches, pair.malignant, pair.benign,
                            [bundle.predict(patches), pair.malignant_probability, pair.benign_probability],
                            top.path("counterfactuals.png"),
                            title=f"{scan} phantom: x, G+(x), G-(x) and R = G+(x) - G-(x)")

        mark = time.time()
        scene_file = mrml.explain_series_folder(written.series_folder, out / "slicer", list(SCENE_METHODS))
        timings["Slicer scene"] = time.time() - mark

        mark = time.time()
        volume_views(written.series_folder, out / "explanations-3d", top.path("views_3d.png"), scan, command)
        timings["3D classifier on the series"] = time.time() - mark

        mark = time.time()
        held_out = held_out_patches(QUICK_NODULES, seed)
        held_out_figure(bundle, held_out, top.path("figure6_held_out.png"))
        benchmark = run_benchmark(out / "benchmark", quick=True, seed=seed, command=command + " (quick benchmark)",
                                  data=held_out)
        timings["held-out examples and quick benchmark"] = time.time() - mark
        timings["total"] = time.time() - started
        write_report(top, scan, summary, titles, scene_file.relative_to(out.absolute()), benchmark, timings)
        top.manifest_data = {"scan": scan, "seed": seed, "command": command, "timings": timings}
    report = out / "report.html"
    print(f"look at: {report} (open it in a browser); the Slicer scene {scene_file}; "
          f"NRRD overlays in {out / 'explanations'}")
    return {"report": report, "timings": timings}


def volume_views(series_folder, out: Path, path: Path, scan: str, command: str = "") -> dict:
    """The series explained by the shipped 3D classifier (one volume per nodule, each method's 3D map back in
    the series' grid, into ``out``), and ``path``: the axial, coronal and sagittal planes through the nodule it
    finds most malignant, each method's relevance volume over the CT. Returns the explanation's summary."""
    from xaiexplain.data.series import read_series
    from xaiexplain.io.explanation_files import write_series_explanation
    from xaiexplain.io.figures import orthogonal_views

    summary, result = write_series_explanation(series_folder, out, list(VOLUME_METHODS), model=VOLUME_CLASSIFIER,
                                               use_lidc=True, command=command + " (3D classifier)")
    row = max(summary["nodules"], key=lambda nodule: nodule["probability"])
    orthogonal_views(read_series(series_folder).image, {m: result.relevance[m] for m in VOLUME_METHODS},
                     row["center_lps"], path,
                     f"{scan} phantom, {row['name']} (readers: {(row.get('lidc') or {}).get('label') or 'no label'}): "
                     f"the 3D classifier's p(malignant) {row['probability']:.2f}\neach method's 3D map in the series' grid")
    return summary


def _row_title(name: str, readers: str, probability: float, threshold: float) -> str:
    """A panel row's title: the nodule, the readers' label, the classifier's probability and decision."""
    return (f"{name}\nreaders: {readers}\n"
            f"p {probability:.2f}: {'malignant' if probability >= threshold else 'benign'}")


def held_out_figure(bundle, data: dict, path: Path, per_label: int = 2) -> None:
    """Paper 1's Fig. 6 for held-out nodules the readers call benign and malignant (``per_label`` each):
    the demo scan's own nodules may all carry one label."""
    from xaiexplain.explainers.on_patches import explain
    from xaiexplain.io.figures import explanation_panel

    labels = np.asarray(data["label"])
    rows = [*np.flatnonzero(labels == 0)[:per_label], *np.flatnonzero(labels == 1)[:per_label]]
    patches = data["images"][rows]
    probabilities = bundle.predict(patches)
    titles = [_row_title(data["names"][n], "malignant" if labels[n] else "benign", p, bundle.threshold)
              for n, p in zip(rows, probabilities)]
    maps = {method: explain(bundle, patches, method) for method in figure_methods()}
    explanation_panel(patches, maps, path, titles,
                      title="Held-out phantom nodules, benign and malignant by the readers: relevance of each method")


def write_report(written, scan: str, summary: dict, titles: list[str], scene_file: Path, benchmark: dict,
                 timings: dict) -> None:
    """``report.html`` into the demo's output set; ``scene_file`` relative to the demo's folder."""
    from xaiexplain.evaluate.benchmark_report import TABLE_HEADER, markdown_report, table_rows

    def image(name, caption):
        return (f'<figure><img src="{html.escape(name)}" alt="{html.escape(caption)}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    nodule_rows = "".join(
        f"<tr><td>{html.escape(row['name'])}</td><td>{html.escape((row.get('lidc') or {}).get('label') or 'not labelled')}</td>"
        f"<td>{row['probability']:.3f}</td><td>{row['decision']}</td><td>{row['slices']}</td>"
        f"<td><a href=\"explanations/{html.escape(panel_file_name(row['name']))}\">panel</a></td></tr>"
        for row in summary["nodules"])
    benchmark_rows = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
                             for row in table_rows(benchmark))
    report = markdown_report(benchmark)
    notes = html.escape(report.split("\n\n", 2)[1])
    costs = "".join(f"<li>{html.escape(line[2:])}</li>" for line in report.splitlines() if line.startswith("- "))
    took = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items())
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>XAIExplain demo: {html.escape(scan)}</title>
<style>body{{font-family:sans-serif;max-width:1400px;margin:auto;padding:1em}}img{{max-width:100%}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}figcaption{{font-size:13px;color:#444}}</style></head><body>
<h1>XAIExplain demo: the {html.escape(scan)} phantom</h1>
<p>A synthetic CT series rendered at the geometry of {html.escape(scan)} with every nodule the LIDC radiologists
annotated, explained by the shipped demo classifier and cycle-am generators with every method. Phantom numbers,
not LIDC numbers. Took: {html.escape(took)}.</p>
<h2>Nodules</h2>
<table><tr><th>nodule</th><th>LIDC readers</th><th>p(malignant)</th><th>decision</th><th>slices</th><th></th></tr>
{nodule_rows}</table>
<h2>Relevance of each method (paper 1, Fig. 6 style)</h2>
{image("figure6_methods.png", "One row per nodule (its largest slice): the original, cycle-am, deep-shap, deep-taylor, lrp, then the others.")}
{image("figure6_held_out.png", "The same for held-out phantom nodules of other patients, benign and malignant by the readers.")}
{image("figure6_iterative.png", "Iterative augmentation of visual evidence around each method (paper 2); zero where the classifier calls the nodule benign.")}
<h2>Counterfactuals (cycle-am)</h2>
{image("counterfactuals.png", "x, G+(x) (towards malignant), G-(x) (towards benign) and R = G+(x) - G-(x), with p(malignant).")}
<h2>A 3D classifier: the same series, one volume per nodule</h2>
{image("views_3d.png", "The shipped 3D classifier reads a 40 x 45 x 45 mm volume about each nodule; each method's 3D map goes back into the series' grid as one volume (explanations-3d/), shown here in the axial, coronal and sagittal planes through the nodule it finds most malignant.")}
<h2>In 3D Slicer</h2>
<p>Open <code>{html.escape(str(scene_file))}</code> in Slicer: relevance overlays, evidence outlines,
counterfactual volumes, the LIDC consensus and the results table are set up. The NRRD overlays of every method are
in <code>explanations/</code>.</p>
<h2>Benchmark (quick: held-out nodules)</h2>
<p>{notes}</p>
<table><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in TABLE_HEADER)}</tr>{benchmark_rows}</table>
<p>Cost against the targets (method time / reference time):</p><ul>{costs}</ul>
{image("benchmark/localization.png", "Localization on the nodule mask and insertion AUC.")}
{image("benchmark/deletion_curves.png", "RISE deletion on the patches called malignant: p(malignant) as the pixels of most evidence become lung (lower is better).")}
{image("benchmark/insertion_curves.png", "RISE insertion: the same, restoring pixels onto a lung-only patch (higher is better).")}
<p>Full numbers: <a href="benchmark/benchmark.md">benchmark.md</a>, <a href="benchmark/benchmark.json">benchmark.json</a>.</p>
</body></html>
"""
    written.path("report.html").write_text(page)
