"""What explanations cost: wall time (the fastest of repeated calls for fast methods), peak memory added,
and the reference passes a method's time is divided by (a forward pass of the classifier with the gradient
with respect to its input, the two generator passes of cycle-am, a whole phantom series)."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from xaiexplain.models.bundles import Bundle

SERIES_SCAN = "LIDC-IDRI-0078"
SERIES_METHOD = "saliency"


def reset_peak_memory() -> None:
    """Restart the kernel's peak-RSS count of this process (Linux); elsewhere the peak only grows."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def resident_mb(field: str = "VmRSS") -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# A method whose first call takes less than this is called FAST_METHOD_REPEATS times and the fastest
# call counts, as for the references: one call of a fast method is mostly scheduler noise.
REPEAT_BELOW_SECONDS = 2.0
FAST_METHOD_REPEATS = 5


def timed(function, repeats: int = 1, repeat_below_seconds: float | None = None):
    """(result of the last call, the fastest wall time in s, peak memory added in MB) over ``repeats``
    calls, or over one call when ``repeat_below_seconds`` is given and that call took longer."""
    best, result = float("inf"), None
    reset_peak_memory()
    before = resident_mb()
    for call in range(repeats):
        if call == 1 and repeat_below_seconds is not None and best >= repeat_below_seconds:
            break
        started = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - started)
    return result, best, max(0.0, resident_mb("VmHWM") - before)


def input_gradient_seconds(bundle: Bundle, images: np.ndarray, repeats: int = 20) -> float:
    """One forward pass of the classifier on the batch and the gradient of its output with respect to the
    input only (``torch.autograd.grad``): what saliency computes, the floor of gradient methods. A plain
    ``.backward()`` also computes every weight's gradient, which no attribution method needs, and made
    the reference slower than saliency itself."""
    score = bundle.score_model()

    def step():
        x = bundle.to_tensor(images).requires_grad_(True)
        torch.autograd.grad(score(x).sum(), x)

    step()  # warm-up
    return timed(step, repeats)[1]


def generator_forward_seconds(generators: Bundle, bundle: Bundle, images: np.ndarray, repeats: int = 20) -> float:
    """G+(x) and G-(x), the two generator forward passes cycle-am needs."""
    x = generators.to_tensor(images)

    def step():
        with torch.no_grad():
            generators.model.plus(x)
            generators.model.minus(x)

    step()
    return timed(step, repeats)[1]


def whole_series_seconds(bundle: Bundle, scan: str = SERIES_SCAN, method: str = SERIES_METHOD) -> dict:
    """Seconds to read a phantom series, explain all its LIDC nodules with one method and write the NRRD
    files and nodules.json (no PNG panels): the first call in this process, and a repeat."""
    from xaiexplain.data import lidc
    from xaiexplain.data.sources.phantom_series import write_phantom_series
    from xaiexplain.io.explanation_files import write_series_explanation

    with tempfile.TemporaryDirectory(prefix="xaiexplain-benchmark-") as folder:
        written = write_phantom_series(lidc.find_scan_by_key(scan), Path(folder) / "series", seed=0)
        seconds = []
        for repeat in range(2):
            started = time.perf_counter()
            write_series_explanation(written.series_folder, Path(folder) / f"explained{repeat}", [method],
                                     model=bundle.path, use_lidc=True, panels=False)
            seconds.append(time.perf_counter() - started)
    return {"scan": scan, "method": method, "slices": written.slices, "nodules": written.nodules,
            "first_seconds": seconds[0], "repeat_seconds": seconds[1]}
