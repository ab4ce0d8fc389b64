"""SSIM and three-scale MS-SSIM (Wang et al. 2003) as cycle-am's losses and evaluation use them, on images (or
volumes) in [0, 1] (``xaiexplain.models.cycle_am``)."""
from __future__ import annotations

import torch
from pytorch_msssim import ssim
from torch.nn import functional

# SSIM's stabilising constants (paper: c1 = .01, c2 = .03) and a Gaussian window (sigma 1.5) that fits
# 64 x 64 images at three scales (64, 32, 16 pixels).
SSIM_K = (0.01, 0.03)
SSIM_WINDOW = 7
SSIM_SIGMA = 1.5
# The first three of Wang et al.'s five scale weights, renormalised to sum to one.
MS_SSIM_WEIGHTS = tuple(w / (0.0448 + 0.2856 + 0.3001) for w in (0.0448, 0.2856, 0.3001))



def dssim(x, y) -> torch.Tensor:
    """Structural dissimilarity (1 - SSIM) / 2 of images in [0, 1]: 0 for identical images.

    Paper 1's eq. 1 prints the 2 inside the SSIM fraction, which would make DSSIM(x, x) = 1/2; the usual
    (1 - SSIM) / 2 is meant."""
    return (1 - ssim(x.float(), y.float(), data_range=1.0, win_size=SSIM_WINDOW, win_sigma=SSIM_SIGMA, K=SSIM_K)) / 2


def ssim_per_image(x, y) -> torch.Tensor:
    """SSIM of each pair of images in [0, 1] (N,), with the losses' window and constants."""
    return ssim(x.float(), y.float(), data_range=1.0, win_size=SSIM_WINDOW, win_sigma=SSIM_SIGMA, K=SSIM_K,
                size_average=False)


def _local_mean(images: torch.Tensor) -> torch.Tensor:
    """The Gaussian window's weighted mean about each position (valid convolution, separable along each spatial
    axis), of (N, C, H, W) images or (N, C, D, H, W) volumes. An axis shorter than the window is not smoothed,
    as pytorch-msssim does (the third scale of a 16-plane volume has 4 planes)."""
    coordinates = torch.arange(SSIM_WINDOW, dtype=images.dtype, device=images.device) - SSIM_WINDOW // 2
    gauss = torch.exp(-coordinates ** 2 / (2 * SSIM_SIGMA ** 2))
    gauss = gauss / gauss.sum()
    spatial = images.dim() - 2
    convolve = functional.conv3d if spatial == 3 else functional.conv2d
    channels = images.shape[1]
    for axis, side in enumerate(images.shape[2:]):
        if side >= SSIM_WINDOW:
            shape = [SSIM_WINDOW if a == axis else 1 for a in range(spatial)]
            images = convolve(images, gauss.view(1, 1, *shape).expand(channels, 1, *shape), groups=channels)
    return images


def ssim_and_contrast_structure(x, y) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and channel (N, C): SSIM and its contrast-structure term, with the losses' Gaussian window
    (valid convolution, as pytorch-msssim computes them) and constants, for images (or volumes) in [0, 1]."""
    c1, c2 = SSIM_K[0] ** 2, SSIM_K[1] ** 2  # data range 1
    mean_x, mean_y = _local_mean(x), _local_mean(y)
    variance_x = _local_mean(x * x) - mean_x ** 2
    variance_y = _local_mean(y * y) - mean_y ** 2
    covariance = _local_mean(x * y) - mean_x * mean_y
    contrast_structure = (2 * covariance + c2) / (variance_x + variance_y + c2)
    luminance = (2 * mean_x * mean_y + c1) / (mean_x ** 2 + mean_y ** 2 + c1)
    return (luminance * contrast_structure).flatten(2).mean(-1), contrast_structure.flatten(2).mean(-1)


def ms_ssim_three_scales(x, y) -> torch.Tensor:
    """MS-SSIM (Wang et al. 2003) over three scales: pytorch-msssim's ``ms_ssim`` refuses images smaller
    than (window - 1) * 16 pixels because it assumes five scales; this is the same product of
    contrast-structure terms and a last-scale SSIM at the three scales a 64 x 64 image has room for. Volumes
    (N, C, D, H, W) are halved along every axis from scale to scale (3D MS-SSIM: ours, paper 1 is 2D)."""
    x, y = x.float(), y.float()
    pool = functional.avg_pool3d if x.dim() == 5 else functional.avg_pool2d
    terms = []
    for level in range(len(MS_SSIM_WEIGHTS)):
        ssim_per_channel, contrast_structure = ssim_and_contrast_structure(x, y)
        if level < len(MS_SSIM_WEIGHTS) - 1:
            terms.append(torch.relu(contrast_structure))
            x, y = pool(x, 2), pool(y, 2)
    terms.append(torch.relu(ssim_per_channel))
    weights = x.new_tensor(MS_SSIM_WEIGHTS).view(-1, 1, 1)
    return torch.prod(torch.stack(terms) ** weights, dim=0).mean()


def ms_dssim(x, y) -> torch.Tensor:
    """Multi-scale DSSIM (1 - MS-SSIM) / 2 at three scales."""
    return (1 - ms_ssim_three_scales(x, y)) / 2
