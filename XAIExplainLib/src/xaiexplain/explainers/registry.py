"""The explanation methods: one record each, and the only list of them.

A record says what a method computes (its published definition and reference), what its map means (its
kind), which options it takes and their defaults, what it needs, and how it is shown and measured. The
command line's help, the Slicer module's method list, the demo's figure, the benchmark's rows and cost
targets, the output file names, label values and colour maps all read it. ``iterative:<m>`` is derived
from every base method ``m`` (paper 2, Algorithm 1); ``cycle-am`` is a method like the others.

Kinds (what a map means, see docs/design.md):
- ``evidence``: signed; > 0 speaks for malignant, < 0 for benign;
- ``sensitivity``: how strongly the decision reacts to a pixel (paper 2, Table I);
- ``change``: cycle-am's R = G+(x) - G-(x) in HU, brighter or darker in the malignant version.

Options: a record's ``defaults`` say which options it takes and, by their Python type, what each is (bool: a
boolean, int: a whole number, float: a number, str: a name); its ``ranges`` bound the numbers (inclusive).
``parse_option`` reads every value given, from the command line's text or from Python, by that rule, so
that a bad value is one sentence before anything is computed.

A method's ``compute(bundle, patches_hu, options)`` returns (maps (N, H, W) float32, details or None);
its ``prepare(bundle, options)``, where it has one, resolves and checks the options for a classifier before
anything is computed (cycle-am: its generators must belong to that classifier). New methods are added with
``register``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

import numpy as np
import torch

from xaiexplain.errors import XAIExplainError
from xaiexplain.explainers import captum_methods, deep_lift, iterative, lrp, references
from xaiexplain.explainers.counterfactuals import DEFAULT_CYCLE_AM, counterfactuals, generators_for
from xaiexplain.explainers.kinds import KINDS, Kind  # noqa: F401 (the kinds are the registry's too)
from xaiexplain.explainers.option_values import option_specs, option_type, parse_option  # noqa: F401
from xaiexplain.models.contract import REQUIREMENTS

ITERATIVE_PREFIX = "iterative:"
PAPER_1 = ("A. Katzmann et al., Explaining clinical decision support systems in medical imaging using "
           "cycle-consistent activation maximization, Neurocomputing 458:141-156, 2021, arXiv:2010.05759")
PAPER_2 = ("C. Gonzalez-Gonzalo et al., Iterative augmentation of visual evidence for weakly-supervised lesion "
           "localization in deep interpretability frameworks, IEEE TMI 2020, arXiv:1910.07373, Algorithm 1")


@dataclass(frozen=True)
class Method:
    name: str
    kind: str
    summary: str  # one line for help texts
    reference: str
    compute: Callable[[Any, np.ndarray, dict], tuple[np.ndarray, Any]]
    defaults: Mapping[str, Any] = field(default_factory=dict)  # the options it takes; the type of each is its default's
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # (lowest, highest) of numeric options
    needs: tuple[str, ...] = ()  # "layer" (a Grad-CAM layer), "generators" (a cycle-am bundle)
    # what the model must allow (``xaiexplain.models.contract.REQUIREMENTS``); a model that does not is
    # refused in one sentence before anything is computed
    requires: tuple[str, ...] = ()
    figure_rank: int = 100  # order in paper 1's Fig. 6 panels
    cost_target: float | None = None  # at most this many reference times (benchmark)
    reference_passes: int = 1  # input-gradient passes of the classifier the method's time is divided by
    # (bundle, options) -> options resolved for that classifier, or an XAIExplainError; None: nothing to check
    prepare: Callable[[Any, dict], dict] | None = None
    # why the model-randomization test cannot judge the method (None: it can)
    randomization_not_applicable: str | None = None

    @property
    def file_name(self) -> str:
        """The method in file names (``iterative:lrp`` -> ``iterative_lrp``)."""
        return self.name.replace(":", "_")

    @property
    def is_iterative(self) -> bool:
        return self.name.startswith(ITERATIVE_PREFIX)

    @property
    def map_kind(self) -> Kind:
        return KINDS[self.kind]

    @property
    def option_specs(self) -> dict[str, dict]:
        """Each option as data: its type, default and, for numbers with one, the range (inclusive)."""
        return option_specs(self.defaults, self.ranges)

    def checked(self, given: Mapping[str, Any]) -> dict:
        """``given`` with each value read by ``parse_option``; an option the method does not take, or a
        value of the wrong type or out of range, is refused in one sentence."""
        unknown = sorted(set(given) - set(self.defaults))
        if unknown:
            takes = ", ".join(self.defaults) or "no options"
            raise XAIExplainError(f"{self.name} has no option {unknown[0]!r} (it takes {takes})")
        specs = self.option_specs
        return {name: parse_option(name, value, specs[name]) for name, value in given.items()}

    def options(self, given: Mapping[str, Any]) -> dict:
        """The defaults updated with ``given`` (``checked``)."""
        return {**self.defaults, **self.checked(given)}

    def refusal(self, bundle) -> str | None:
        """Why this method cannot explain the classifier ``bundle`` (the first requirement it does not meet),
        or None."""
        reasons = bundle.requirement_reasons
        return next((f"{self.name} needs {REQUIREMENTS[need]}, and {reasons[need]}" for need in self.requires
                     if reasons[need]), None)

    def prepared(self, bundle, given: Mapping[str, Any]) -> dict:
        """``options(given)`` resolved and checked for the classifier ``bundle`` (``prepare``); a model the
        method cannot explain is refused in one sentence that names the reason and the methods it can."""
        settings = self.options(given)
        refusal = self.refusal(bundle)
        if refusal:
            usable = [name for name in base_methods() if not get(name).refusal(bundle)]
            raise XAIExplainError(f"{refusal}; methods that work with this model: {', '.join(usable)}")
        return self.prepare(bundle, settings) if self.prepare else settings


_METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a base method; ``iterative:<name>`` comes with it."""
    if method.name in _METHODS or method.name.startswith(ITERATIVE_PREFIX) or ":" in method.name:
        raise ValueError(f"{method.name!r} is taken or not a base method name")
    if method.kind not in KINDS:
        raise ValueError(f"unknown kind {method.kind!r}; known: {', '.join(KINDS)}")
    for default in method.defaults.values():
        option_type(default)  # a ValueError for a default of a type that no option can have
    if set(method.ranges) - set(method.defaults):
        raise ValueError(f"{method.name} gives ranges of options it does not take")
    _METHODS[method.name] = method
    return method


def unregister(name: str) -> None:
    _METHODS.pop(name, None)


def base_methods() -> list[str]:
    """The base methods, in the order they were registered."""
    return list(_METHODS)


def available_methods() -> list[str]:
    """Every method name: the base methods, then ``iterative:`` of each.

    Returns
    -------
    list of str

    Examples
    --------
    >>> import xaiexplain
    >>> "iterative:lrp" in xaiexplain.available_methods()
    True
    """
    return base_methods() + [ITERATIVE_PREFIX + name for name in _METHODS]


def get(name: str) -> Method:
    """The record of a method name; an unknown name is refused with one sentence."""
    base = _METHODS.get(name.removeprefix(ITERATIVE_PREFIX))
    if base is None or (name.startswith(ITERATIVE_PREFIX) and name.count(":") > 1):
        raise XAIExplainError(f"unknown method {name!r}; choose one of {', '.join(available_methods())}")
    return _iterative(base) if name.startswith(ITERATIVE_PREFIX) else base


def check_method(name: str) -> None:
    get(name)


def method_file_name(name: str) -> str:
    return get(name).file_name


def methods_table() -> str:
    """The README's table of methods, in Markdown, from the records."""
    rows = ["| method | kind: what the map means | how it is drawn and labelled | definition and reference |",
            "|---|---|---|---|"]
    for name in base_methods():
        record = get(name)
        kind = record.map_kind
        colours = "red > 0, blue < 0" if kind.colour_map == "diverging" else "green, stronger with magnitude"
        labels = ", ".join(f"{value} {label}" for label, value, _ in kind.sides)
        rows.append(f"| `{name}` | {kind.name}: {kind.meaning} | {colours}; labels {labels} | {record.summary}; "
                    f"{record.reference} |")
    rows.append(f"| `{ITERATIVE_PREFIX}<method>` | the kind of `<method>` | as `<method>` | {PAPER_2}: Otsu on the "
                "method's map reduced to non-negative evidence for the malignant decision (positive part of "
                "evidence, magnitude of a sensitivity or change; our reduction, the paper does not state one), "
                "Navier-Stokes inpainting, sum_t exp(-alpha t) M_t |")
    return "\n".join(rows) + "\n"


# -- the built-in methods ---------------------------------------------------------------------------------

def _context(bundle, options, method: str = "") -> captum_methods.AttributionContext:
    chosen = references.reference_hu(bundle, method)
    return captum_methods.AttributionContext(bundle.score_model(), bundle.input_value, options,
                                             **({"reference_hu": chosen} if chosen else {}))


def _captum(function, method: str = "") -> Callable:
    """A captum method of ``captum_methods`` as a registry ``compute``."""
    def compute(bundle, patches_hu, options):
        return (captum_methods.attribute(function, bundle.to_tensor(patches_hu), _context(bundle, options, method)),
                None)
    return compute


def _deep_shap(bundle, patches_hu, options, images_per_call: int = 256):
    context = _context(bundle, options, "deep-shap")
    layers = [layer.to(bundle.device) for layer in lrp.folded_layers(bundle.model, bundle.contract.output)]
    x = bundle.to_tensor(patches_hu)
    baselines = torch.stack([torch.full(tuple(x.shape[1:]), context.baseline_value(hu), device=x.device)
                             for hu in context.reference_hu])
    maps = [deep_lift.deep_lift_shap(layers, x[n:n + images_per_call], baselines).detach().float().cpu()
            for n in range(0, len(x), images_per_call)]
    maps = torch.cat(maps).numpy() if maps else np.zeros((0,) + tuple(x.shape[1:]), np.float32)
    return (maps[:, 0] if maps.shape[1] == 1 else maps), None


def _lrp(rules: str) -> Callable:
    def compute(bundle, patches_hu, options):
        relevance, _ = lrp.relevance(bundle.model, bundle.to_tensor(patches_hu), rules,
                                     output=bundle.contract.output, input_range=bundle.input.bounds)
        relevance = relevance.cpu().numpy().astype(np.float32)
        return (relevance[:, 0] if relevance.shape[1] == 1 else relevance), None
    return compute


def _cycle_am(bundle, patches_hu, options):
    pair = counterfactuals(bundle, patches_hu, options["generators"], options["allow_other_classifier"])
    return (pair.malignant - pair.benign).astype(np.float32), pair


def _cycle_am_generators(bundle, options):
    """The generators loaded once, and refused unless trained against ``bundle``."""
    return {**options, "generators": generators_for(bundle, options["generators"], options["allow_other_classifier"])}


ITERATIVE_DEFAULTS = MappingProxyType({"max_iterations": iterative.MAX_ITERATIONS, "decay": iterative.DECAY,
                                       "inpaint_radius": iterative.INPAINT_RADIUS})
# Algorithm 1 runs passes t = 1 .. T-1 (while t < T), so T = 2 is one pass and T < 2 none (an all-zero map);
# 100 is five times the paper's 20. alpha weighs pass t by exp(-alpha t): below 0 later passes would outweigh
# the first ever more (alpha -1 scaled maps by 1e7), above 10 every pass after the first counts for nothing.
# The inpainting radius (3 px in the paper) is at least one pixel and at most half of a 64 px patch.
ITERATIVE_RANGES = MappingProxyType({"max_iterations": (2, 100), "decay": (0.0, 10.0), "inpaint_radius": (1, 32)})
# Integrated gradients' Riemann steps: at least 1; the cost grows with them, 1000 is 20 times the default.
# Images x steps pushed through the network at once: at least 1, at most 4096 (memory), and never more than
# captum_methods.INTEGRATED_GRADIENTS_VALUES input values (volumes).
INTEGRATED_GRADIENTS_RANGES = MappingProxyType({"steps": (1, 1000), "internal_batch_size": (1, 4096)})


def _iterative(base: Method) -> Method:
    """Paper 2's Algorithm 1 around ``base``, on its map reduced to non-negative evidence for the positive
    decision (``Kind.positive_evidence``): its options, and T, alpha and the inpainting radius."""
    reduce = base.map_kind.positive_evidence

    def compute(bundle, patches_hu, options):
        base_options = {key: value for key, value in options.items() if key in base.defaults}
        result = iterative.augment_evidence(
            patches_hu, lambda images: reduce(base.compute(bundle, images, base_options)[0]), bundle.predict,
            bundle.threshold, max_iterations=options["max_iterations"], decay=options["decay"],
            radius=options["inpaint_radius"])
        return result.augmented, result

    return Method(name=ITERATIVE_PREFIX + base.name, kind=base.kind,
                  summary=f"iterative augmentation of visual evidence around {base.name}",
                  reference=f"{PAPER_2}; around {base.reference}", compute=compute,
                  defaults=MappingProxyType({**base.defaults, **ITERATIVE_DEFAULTS}),
                  ranges=MappingProxyType({**base.ranges, **ITERATIVE_RANGES}), needs=base.needs,
                  figure_rank=base.figure_rank + 100, prepare=base.prepare,
                  requires=base.requires,
                  randomization_not_applicable=base.randomization_not_applicable)


def _grad_cam_layer(bundle, options):
    """The options with their layer resolved to the module path of a layer of ``bundle``'s network whose
    output is a map over the patch (``default``: the contract's default layer)."""
    return {**options, "layer": captum_methods.cam_layer_path(bundle.contract, bundle.spatial_layers, options["layer"])}


GRAD_CAM_DEFAULTS = MappingProxyType({"layer": captum_methods.DEFAULT_LAYER})
CAM_REQUIRES = ("hooks", "spatial layer")
for _record in (
    Method("saliency", "sensitivity", "gradient of the decision", "K. Simonyan et al., Deep inside convolutional "
           "networks, ICLR workshop 2014", _captum(captum_methods.saliency), figure_rank=5, cost_target=2.0),
    Method("guided-backprop", "sensitivity", "guided backpropagation", "J. T. Springenberg et al., Striving for "
           "simplicity: the all convolutional net, ICLR workshop 2015", _captum(captum_methods.guided_backprop),
           requires=("hooks", "ReLU activations"), figure_rank=6, cost_target=2.0),
    Method("integrated-gradients", "evidence", "integrated gradients from a lung-parenchyma baseline",
           "M. Sundararajan et al., Axiomatic attribution for deep networks, ICML 2017",
           _captum(captum_methods.integrated_gradients, "integrated-gradients"),
           defaults=MappingProxyType({"steps": captum_methods.INTEGRATED_GRADIENTS_STEPS,
                                      "internal_batch_size": captum_methods.INTEGRATED_GRADIENTS_BATCH}),
           ranges=INTEGRATED_GRADIENTS_RANGES,
           figure_rank=4, cost_target=1.3, reference_passes=captum_methods.INTEGRATED_GRADIENTS_STEPS),
    Method("grad-cam", "evidence", "Grad-CAM of the logit difference, with its ReLU (eq. 2): the evidence for "
           "malignant only, >= 0", "R. R. Selvaraju et al., Grad-CAM, ICCV 2017",
           _captum(captum_methods.grad_cam), defaults=GRAD_CAM_DEFAULTS, needs=("layer",), figure_rank=7,
           requires=CAM_REQUIRES,
           cost_target=2.0, prepare=_grad_cam_layer),
    Method("grad-cam-signed", "evidence", "Grad-CAM of the logit difference without its ReLU: the signed "
           "gradient-weighted sum of the layer's features (not Selvaraju et al.'s definition)",
           "R. R. Selvaraju et al., Grad-CAM, ICCV 2017, eq. 2 without the ReLU",
           _captum(captum_methods.grad_cam_signed), defaults=GRAD_CAM_DEFAULTS, needs=("layer",), figure_rank=9,
           requires=CAM_REQUIRES,
           cost_target=2.0, prepare=_grad_cam_layer),
    Method("guided-grad-cam", "sensitivity", "guided backpropagation times Grad-CAM",
           "R. R. Selvaraju et al., Grad-CAM, ICCV 2017", _captum(captum_methods.guided_grad_cam),
           defaults=GRAD_CAM_DEFAULTS, needs=("layer",), figure_rank=8, prepare=_grad_cam_layer,
           requires=CAM_REQUIRES + ("ReLU activations",)),
    Method("deep-shap", "evidence", "DeepLiftShap over lung-parenchyma baselines", "S. M. Lundberg, S.-I. Lee, A "
           "unified approach to interpreting model predictions, NeurIPS 2017", _deep_shap, requires=("DeepLIFT chain",),
           figure_rank=1),
    Method("lrp", "evidence", "layer-wise relevance propagation: z^B, gamma, epsilon, LRP-0 composite, batch norm "
           "folded. On the demo classifier its net relevance sum(R) is < 0 on most patches called malignant: the "
           "gamma rule, applied with the folded batch norm's biases, turns the sign (tested layer by layer)", "S. Bach et al., PLoS ONE 2015; composite of G. Montavon et al., Layer-wise relevance "
           "propagation: an overview, 2019", _lrp("composite"), figure_rank=3, requires=("layer chain",)),
    Method("deep-taylor", "evidence", "deep Taylor decomposition: z^B at the pixels (bounded by the window), z+ in "
           "every other layer, batch norm folded", "G. Montavon et al., Explaining nonlinear classification "
           "decisions with deep Taylor decomposition, Pattern Recognition 2017", _lrp("deep-taylor"), figure_rank=2,
           requires=("layer chain",)),
    Method("cycle-am", "change", "cycle-consistent activation maximization: G+(x) - G-(x) in HU", PAPER_1,
           _cycle_am, defaults=MappingProxyType({"generators": DEFAULT_CYCLE_AM, "allow_other_classifier": False}),
           needs=("generators",), figure_rank=0, cost_target=1.5, prepare=_cycle_am_generators, requires=("one image",),
           randomization_not_applicable="its generators belong to the trained classifier"),
):
    register(_record)
