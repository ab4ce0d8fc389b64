"""Cycle-consistent activation maximization (paper 1, sections 2 and 3.2): the networks and the losses.

Two U-Net generators G+ and G- are trained on the same image domain, G+ to make the frozen classifier
say malignant, G- benign, each changing the image as little as possible and staying cycle-consistent
(G-(G+(x)) ~ x); a discriminator per generator compares a real and a fake image patch by patch. The
relevance is R = G+(x) - G-(x).

Images are on the classifier's scale (its HU window mapped to [0, 1]) but not clipped to the window: the
generators read and write every value a CT holds (``CT_HU_RANGE``), so that calcification (850 HU and
more, far above the window's 400) can be seen and changed. Only where the classifier reads an image is it
clipped to its window (``classifier_view``).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from xaiexplain.models.ssim import dssim, ms_dssim

PAPER_WIDTHS = (48, 96, 192, 384)
CONVOLUTIONS_PER_STAGE = 3
# The HU a CT stores (12 bits from -1024): what the generators read and write.
CT_HU_RANGE = (-1024.0, 3071.0)

def _convolution(spatial_dims: int) -> type[nn.Module]:
    return nn.Conv3d if spatial_dims == 3 else nn.Conv2d


def _stage(in_channels: int, width: int, stride: int, spatial_dims: int = 2) -> nn.Sequential:
    """Three 3 x 3 convolutions (3 x 3 x 3 for volumes, ``spatial_dims`` 3: the same design in 3D, ours where
    paper 1 is 2D), each followed by LeakyReLU and batch norm (paper 1, Fig. 4); the first one strided when
    the stage goes down in resolution."""
    convolution, norm = _convolution(spatial_dims), nn.BatchNorm3d if spatial_dims == 3 else nn.BatchNorm2d
    layers = []
    for n in range(CONVOLUTIONS_PER_STAGE):
        layers += [convolution(in_channels if n == 0 else width, width, 3, stride=stride if n == 0 else 1, padding=1),
                   nn.LeakyReLU(0.2), norm(width)]
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """Stages 0..depth: full resolution, then halved by a strided convolution at each stage."""

    def __init__(self, widths=PAPER_WIDTHS, in_channels: int = 1, spatial_dims: int = 2):
        super().__init__()
        stages, channels = [], in_channels
        for n, width in enumerate(widths):
            stages.append(_stage(channels, width, 1 if n == 0 else 2, spatial_dims))
            channels = width
        self.stages = nn.ModuleList(stages)

    def forward(self, x) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class Generator(nn.Module):
    """U-Net of depth 3 (stages 0-3), nearest-neighbour upsampling, skip connections.

    The U-Net's output is a bounded residual added to the input on the unclipped HU scale: G(x) = x + m
    tanh(U(x) / m), so every pixel, whatever its value, moves either way with gradient 1 at the start, by at
    most ``max_change`` m (default one window width, 1400 HU: calcification at 850 HU down to soft tissue,
    lung at -860 up to a solid nodule). (The paper leaves the output layer open. An output squashed into the
    classifier's window, sigmoid(logit(x) + U(x)), cannot move pixels at the window's edges: its gradient
    vanishes there, and 92 % of calcified pixels sit at the top. An unbounded residual painted stripes and
    spots of up to 4300 HU.) With the last convolution starting at zero every generator starts as the
    identity, which the similarity and cycle losses want anyway.

    ``output_range`` (low, high), on the input's scale: the output is clamped to it, so no generated pixel
    leaves the values a CT stores (``output_range_for``), whatever the losses allow. (A loss alone left
    0.027 % of G-'s pixels below -1024 HU, some at -1320.) Beyond the range the clamp passes no gradient: a
    pixel pushed there stays at the bound."""

    def __init__(self, widths=PAPER_WIDTHS, in_channels: int = 1, max_change: float = 1.0,
                 output_range: tuple[float, float] | None = None, spatial_dims: int = 2):
        super().__init__()
        self.max_change = max_change
        self.output_range = None if output_range is None else (float(output_range[0]), float(output_range[1]))
        self.encoder = Encoder(widths, in_channels, spatial_dims)
        self.decoder = nn.ModuleList(
            _stage(widths[n + 1] + widths[n], widths[n], 1, spatial_dims) for n in reversed(range(len(widths) - 1)))
        self.output = _convolution(spatial_dims)(widths[0], in_channels, 1)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(self, x):
        skips = self.encoder(x)
        y = skips[-1]
        for stage, skip in zip(self.decoder, reversed(skips[:-1])):
            # to the skip's size: twice the size, less one where a strided convolution halved an odd side
            y = stage(torch.cat([functional.interpolate(y, size=skip.shape[2:], mode="nearest"), skip], dim=1))
        generated = x + self.max_change * torch.tanh(self.output(y) / self.max_change)
        return generated if self.output_range is None else generated.clamp(*self.output_range)


def output_range_for(hu_window) -> tuple[float, float]:
    """``CT_HU_RANGE`` on the generators' scale (the classifier's ``hu_window`` mapped to [0, 1])."""
    low, high = hu_window
    return tuple((hu - low) / (high - low) for hu in CT_HU_RANGE)


# The encoder stages whose patch outputs the pair discriminator judges (stage n is 1 / 2^n of the image).
# Paper 1 uses "multiple intermediate scales". Judged at stages 2 and 3 alone, G- painted checkers and
# stripes of 2 px period (hundreds of HU, above the classifier's window, so invisible to it) into the
# nodules it brightened: too fine for patches 1/4 and 1/8 of the image. Stage 1 (half resolution) sees them.
DISCRIMINATOR_SCALES = (1, 2, 3)


class PairDiscriminator(nn.Module):
    """The generator's encoder cut after the last of ``scales`` (encoder stages 1-3, one patch scale each).
    A real and a fake image go through it with shared weights; at each patch position the two feature
    vectors are concatenated, in an order drawn at random per position, and a two-way softmax says which of
    the two is the real one. The random order keeps a "real neuron" from emerging (paper 1, 2.3)."""

    def __init__(self, widths=PAPER_WIDTHS, in_channels: int = 1, scales=DISCRIMINATOR_SCALES, spatial_dims: int = 2):
        super().__init__()
        self.encoder = Encoder(widths[:max(scales) + 1], in_channels, spatial_dims)
        self.scales = scales
        self.heads = nn.ModuleList(_convolution(spatial_dims)(2 * widths[s], 2, 1) for s in scales)

    def forward(self, real, fake, generator: torch.Generator | None = None, fake_is_real: bool = False):
        """Cross entropy of telling the real image from the fake one at every patch position of every
        scale (their mean). With ``fake_is_real`` the labels are inverted: the generators' adversarial loss."""
        features = self.encoder(torch.cat([real, fake]))
        n = len(real)
        losses = []
        for s, head in zip(self.scales, self.heads):
            real_features, fake_features = features[s][:n], features[s][n:]
            fake_first = torch.rand(n, 1, *real_features.shape[2:], generator=generator,
                                    device=real.device if generator is None else generator.device).to(real.device) < 0.5
            pair = torch.cat([torch.where(fake_first, fake_features, real_features),
                              torch.where(fake_first, real_features, fake_features)], dim=1)
            logits = head(pair).float()
            real_slot = fake_first[:, 0].long()  # class 0: the first vector is the real image's, 1: the second
            target = 1 - real_slot if fake_is_real else real_slot
            losses.append(functional.cross_entropy(logits, target))
        return torch.stack(losses).mean()


def cycle_loss(x, reconstructed) -> torch.Tensor:
    """Eq. 2: (L1 + MS-DSSIM) / 2."""
    return (functional.l1_loss(reconstructed.float(), x.float()) + ms_dssim(x, reconstructed)) / 2


SIMILARITY_LOSSES = ("l1+dssim", "dssim")
# The L1 weight of the similarity loss. On the generators' scale a unit is a window width (1400 HU), so
# the paper's cycle-loss weight of .5 prices a 30 HU change of the whole background at .01, against an
# activation loss of about .1: the generators shifted the background by 20-50 HU (60-97 % of |R| on
# calcified patches). At 20 such a shift costs .4 while removing a calcification (30 pixels, 700 HU)
# costs .1; L1 keeps the changes sparse (only pixels worth that much to the classifier move).
SIMILARITY_L1_WEIGHT = 20.0


# How much more the similarity's L1 costs at the middle of a patch's edge than at its centre (``context_weights``).
# With the floor loss but the same L1 weight everywhere, G- brightened the context instead: blobs of a few
# hundred HU beside the middle of the patch's edges, far from the nodule, on 15 of the benchmark's 39 patches
# called malignant (erasing them raised p(G-(x)) from 0.117 to 0.159). At 3 there were none, and G-'s mean
# change more than 6 px from the nodule fell from 8.4 to 1.2 HU. But every patch is cut around a nodule, so
# that factor tells the generators where the nodule is, and the localization benchmark then rewards the prior,
# not the method (pointing 0.87 -> 1.00 when it was added), while the blobs it hid are a real response of the
# classifier. So the default is 1, the same weight everywhere; the factor stays an option, recorded in the
# bundle, and the benchmark names it beside cycle-am's scores.
CONTEXT_L1_FACTOR = 1.0


def context_weights(shape, factor: float, device=None) -> torch.Tensor:
    """Weights of an image's ``shape`` (its spatial sides; one number: a square) rising with the squared
    distance from its centre: 1 there, ``factor`` at the middle of each face (more in the corners). Every
    patch is cut around a nodule, so the centre is the nodule and the rest its context."""
    shape = (shape, shape) if isinstance(shape, int) else tuple(shape)
    squared = torch.zeros(shape, dtype=torch.float32, device=device)
    for axis, size in enumerate(shape):
        coordinates = (torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2) / (size / 2)
        squared = squared + (coordinates ** 2).view([size if a == axis else 1 for a in range(len(shape))])
    return 1 + (factor - 1) * squared


def similarity_loss(x, generated, kind: str = "l1+dssim", l1_weight: float = SIMILARITY_L1_WEIGHT,
                    context_factor: float = 1.0) -> torch.Tensor:
    """The similarity loss between an image and its generated version. Paper 1's is DSSIM alone ("dssim"),
    which bounds structure but barely intensity: enough for an output squashed into the window, not for a
    residual that can move pixels by any amount, which then paints dipoles and blobs of thousands of HU.
    The default adds an L1 term, as the paper's cycle loss does "to preserve the average intensity" (eq. 2),
    weighted ``l1_weight`` (``SIMILARITY_L1_WEIGHT``): l1_weight |x - G(x)| + DSSIM / 2. With
    ``context_factor`` > 1 each pixel's |x - G(x)| is weighted by ``context_weights``: a change of the nodule's
    context costs up to that many times one of the nodule."""
    if kind == "dssim":
        return dssim(x, generated)
    if kind != "l1+dssim":
        raise ValueError(f"unknown similarity loss {kind!r}; known: {', '.join(SIMILARITY_LOSSES)}")
    change = (generated.float() - x.float()).abs()
    if context_factor != 1.0:
        change = change * context_weights(change.shape[2:], context_factor, change.device)
    return l1_weight * change.mean() + dssim(x, generated) / 2


# The weight of the identity loss (``identity_loss``) on the window-width scale, like SIMILARITY_L1_WEIGHT.
# Without it G- changed vessels and the patch's edges on patches the classifier already called benign (on
# the benchmark's 21: mean 8.2 HU, 99th percentile 117 HU more than 4 px from the nodule), 19-58 % of |R| on
# the calcified ones. At 60 (with the similarity's 20) that fell to 1.5 and 10 HU.
IDENTITY_WEIGHT = 60.0


def identity_loss(x, generated, class_probability, weight: float = IDENTITY_WEIGHT) -> torch.Tensor:
    """CycleGAN's identity loss (Zhu et al. 2017, sec. 5.2, after Taigman et al. 2017): a generator handed an
    image that already belongs to the class it produces should return it unchanged. Paper 1 has no labelled
    domains (its generators never see labels), so "belongs" is the frozen classifier's probability of the
    generator's class on x, which weighs each image's mean |G(x) - x|: weight * mean_i p_i |G(x_i) - x_i|.
    G- on a patch called benign with p(benign) 0.97 then pays ``weight`` more per HU than on one called
    malignant, where it has work to do."""
    per_image = (generated.float() - x.float()).abs().flatten(1).mean(dim=1)
    return weight * (class_probability.float() * per_image).mean()


# The floor loss (``floor_loss``): how far around a pixel its floor reaches, and its weight on the window-width
# scale. Trained without it, G- ringed the large solid nodules it made benign-looking with pixels darker than
# any lung around them: on 43 of the benchmark's 60 held-out patches some lay more than 100 HU below the
# darkest input pixel within 4 px (0.41 % of all pixels, up to 1329 HU below it; in the demo panel down to
# -1185 HU, darker than air). At 200 a ring of 80 pixels 600 HU under its floor costs 1.7, many times what it
# gains in the activation loss; trained with it (and ``CONTEXT_L1_FACTOR``), 0.09 % of the pixels, up to 571 HU.
FLOOR_RADIUS = 4
FLOOR_WEIGHT = 200.0


def local_floor(images: torch.Tensor, radius: int = FLOOR_RADIUS) -> torch.Tensor:
    """Each pixel's floor: the darkest pixel of the image within ``radius`` px (a square window, a cube for
    volumes, cut at the image's edge)."""
    pool = functional.max_pool3d if images.dim() == 5 else functional.max_pool2d
    return -pool(-images, 2 * radius + 1, stride=1, padding=radius)


def floor_loss(x, generated, weight: float = FLOOR_WEIGHT, radius: int = FLOOR_RADIUS) -> torch.Tensor:
    """A counterfactual is made of the tissue around it: no pixel of G(x) darker than the darkest of x within
    ``radius`` px (``local_floor``), weight * mean(max(floor(x) - G(x), 0)). Neither class of nodule is drawn
    with air: a generator may darken a nodule down to the lung around it, and carving dark rings and notches
    below it (or values below -1000 HU, which no CT holds) costs more than it gains. One-sided on purpose:
    brightening, as calcification, stays free of it. Not in paper 1 (its output layer cannot leave the window)."""
    floor = local_floor(x.float(), radius)
    return weight * functional.relu(floor - generated.float()).mean()


def input_spec(classifier_input: dict) -> dict:
    """A cycle-am bundle's input spec: the classifier's HU window as the scale, clipped to the CT range
    instead of the window (``Bundle.to_tensor`` reads ``hu_range``)."""
    return {**classifier_input, "hu_range": list(CT_HU_RANGE),
            "normalisation": "window"}


def classifier_view(images: torch.Tensor) -> torch.Tensor:
    """Generator-scale images as the classifier reads them: clipped to its window, [0, 1]."""
    return images.clamp(0.0, 1.0)


class WindowScaleScore(nn.Module):
    """A classifier bundle's decision score (its contract's log-odds of the positive class, (N, 1)) for images
    on the window's [0, 1] scale, the scale the generators' images are read on: an affine map to the network's
    own input values first where its contract standardises instead (``InputSpec.normalisation``)."""

    def __init__(self, bundle):
        super().__init__()
        spec = bundle.input
        if spec.slices != 1:
            from xaiexplain.errors import XAIExplainError

            raise XAIExplainError(f"cycle-am generators read one slice or one volume: {bundle.path} reads "
                                  f"{spec.slices} slices as channels")
        self.score = bundle.score_model()
        low, high = spec.hu_window
        # window scale v -> HU = low + v (high - low) -> the network's value
        self.scale = spec.input_value(high) - spec.input_value(low) if spec.normalisation != "window" else 1.0
        self.offset = spec.input_value(low) if spec.normalisation != "window" else 0.0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.score(images * self.scale + self.offset)


def class_probabilities(score: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(p(negative), p(positive)), (N, 2), of a decision score (``WindowScaleScore``: log-odds (N, 1)) for
    generator-scale images, read through the window."""
    positive = torch.sigmoid(score(classifier_view(images)).float()[:, 0])
    return torch.stack([1 - positive, positive], dim=1)


class _ClipIntoWindow(torch.autograd.Function):
    """Clipping to [0, 1] forward; backward, the gradient passes wherever a descent step leads into the
    window or stays in it: inside it, above it when the step goes down, below it when the step goes up."""

    @staticmethod
    def forward(context, images):
        context.save_for_backward(images)
        return classifier_view(images)

    @staticmethod
    def backward(context, gradient):
        (images,) = context.saved_tensors
        inward = ((images >= 0) & (images <= 1)) | ((images > 1) & (gradient > 0)) | ((images < 0) & (gradient < 0))
        return gradient * inward


def straight_through_classifier_view(images: torch.Tensor) -> torch.Tensor:
    """``classifier_view`` forward; backward, the activation-maximization gradient reaches pixels beyond the
    window where it would bring them into it (calcification above 400 HU, which the classifier reads only
    once it crosses into the window), and not where it would push them further out: a pixel above the
    window already reads as the window's top, so nothing should drive it higher."""
    return _ClipIntoWindow.apply(images)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) images or (N, C, D, H, W) volumes along every spatial axis,
    ``sigma`` in pixels, edges reflected; 0: unchanged."""
    if sigma <= 0:
        return images
    radius = max(1, round(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(taps / sigma) ** 2 / 2)
    kernel = (kernel / kernel.sum()).repeat(images.shape[1], 1, 1)
    spatial = images.dim() - 2
    convolve = functional.conv3d if spatial == 3 else functional.conv2d
    blurred = functional.pad(images, (radius, radius) * spatial, mode="reflect")
    for axis in range(spatial):
        shape = [2 * radius + 1 if a == axis else 1 for a in range(spatial)]
        blurred = convolve(blurred, kernel.view(images.shape[1], 1, *shape), groups=images.shape[1])
    return blurred


def random_dihedral(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each (C, H, W) image of a batch flipped left-right with probability 1/2, then turned by a random number
    of quarter turns: one of the eight symmetries of the square, as the classifier saw in training (a volume's
    in its axial planes, as the 3D classifier trains). Drawn where
    ``generator`` lives and chosen by indexing, so a GPU step waits for no per-image decision on the host."""
    flips = torch.rand(len(images), generator=generator, device=generator.device).to(images.device) < 0.5
    turns = torch.randint(0, 4, (len(images),), generator=generator, device=generator.device).to(images.device)
    flipped = torch.where(flips.view(-1, *([1] * (images.dim() - 1))), images.flip(-1), images)
    turned = torch.stack([torch.rot90(flipped, quarter, dims=(-2, -1)) for quarter in range(4)])
    return turned[turns, torch.arange(len(images), device=images.device)]


# How far the classifier's read of a generated image is shifted at random in the activation loss
# (``random_shift``), in px along each in-plane axis. Read flipped and turned alone, G- still brightened the
# context at the same two places on 11 of the benchmark's 40 patches called malignant, diagonally opposite
# (an orbit of the symmetries it was read with): the classifier's flattened last layer weighs each place on its
# own, and a change tuned to one place pays only there. The shipped classifier reads a nodule shifted by up
# to 6 px as it reads it centred (mean p on those 40: 0.917 unshifted, 0.898 at 6 px; 0.785 at 8 px); it
# was trained with shifts of up to 3 px.
ACTIVATION_SHIFT_PX = 6


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each image of a batch moved along its two in-plane axes (the last two; a volume's axial planes) by a
    whole number of pixels from -``max_shift`` to ``max_shift`` per axis, drawn where ``generator`` lives;
    the edge rows and columns repeat into what the move uncovers (the classifier's training shifts did the
    same). Chosen by indexing, so a GPU step waits for nothing on the host."""
    if max_shift <= 0:
        return images
    n, height, width = len(images), images.shape[-2], images.shape[-1]
    shifts = torch.randint(-max_shift, max_shift + 1, (2, n), generator=generator,
                           device=generator.device).to(images.device)
    rows = (torch.arange(height, device=images.device) - shifts[0, :, None]).clamp(0, height - 1)
    columns = (torch.arange(width, device=images.device) - shifts[1, :, None]).clamp(0, width - 1)
    planes = images.reshape(n, -1, height, width)
    moved = planes[torch.arange(n, device=images.device)[:, None, None], :, rows[:, :, None], columns[:, None, :]]
    return moved.permute(0, 3, 1, 2).reshape(images.shape)


def activation_maximization_loss(score: nn.Module, generated, target_class: int,
                                 blur_sigma: float = 0.0, symmetries: torch.Generator | None = None,
                                 shift_px: int = 0, shifts: torch.Generator | None = None) -> torch.Tensor:
    """Cross entropy of the frozen classifier's decision towards the generator's class (1: positive, 0:
    negative; no image labels): -log sigmoid(+/- s) of its log-odds s (``WindowScaleScore``), which for two
    class logits is the softmax cross entropy; ``generated`` on the generators' scale, read through the window
    with a straight-through gradient.

    With ``blur_sigma`` > 0 the classifier reads the generated image through a Gaussian blur of that many
    pixels. A 1 px blur keeps what a nodule looks like; a change that works only unblurred is a pixel-level
    pattern against the classifier (an adversarial example), not a change of the nodule, and the blur leaves
    such patterns no gradient (transformation robustness, as in feature visualization: C. Olah et al.,
    Feature visualization, Distill 2017).

    With a ``symmetries`` generator the classifier reads each image flipped and turned at random
    (``random_dihedral``): a nodule reads the same whichever way up (the classifier was trained so), a change
    at one place of the patch does not. Read as it is, G- learned a bright blob in the bottom right corner
    (up to 315 HU, away from every nodule; erasing it raised p(malignant) on G-(x) from 0.08 to 0.12): the
    classifier's flattened last layer weighs each place of the patch on its own.

    With a ``shifts`` generator each image is also read moved by up to ``shift_px`` px along each in-plane
    axis (``random_shift``; jitter, the other transformation of Olah et al.): a nodule reads the same a few
    pixels off centre, a change that pays at one place of the patch only sometimes. Neither transformation
    knows where the nodule is."""
    read = gaussian_blur(straight_through_classifier_view(generated), blur_sigma)
    if shifts is not None:
        read = random_shift(read, shift_px, shifts)
    log_odds = score(read if symmetries is None else random_dihedral(read, symmetries)).float()[:, 0]
    return functional.softplus(log_odds if target_class == 0 else -log_odds).mean()
