"""SSIM and three-scale MS-SSIM (Wang et al. 2003) as cycle-am's losses and evaluation use them, on images in
[0, 1] (``xaiexplain.models.cycle_am``)."""
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


def ssim_and_contrast_structure(x, y) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and channel (N, C): SSIM and its contrast-structure term, with the losses' Gaussian window
    (valid convolution, as pytorch-msssim computes them) and constants, for images in [0, 1]."""
    coordinates = torch.arange(SSIM_WINDOW, dtype=x.dtype, device=x.device) - SSIM_WINDOW // 2
    gauss = torch.exp(-coordinates ** 2 / (2 * SSIM_SIGMA ** 2))
    gauss = gauss / gauss.sum()
    window = (gauss[:, None] * gauss[None, :]).expand(x.shape[1], 1, SSIM_WINDOW, SSIM_WINDOW)

    def local_mean(image):
        return functional.conv2d(image, window, groups=x.shape[1])

    c1, c2 = SSIM_K[0] ** 2, SSIM_K[1] ** 2  # data range 1
    mean_x, mean_y = local_mean(x), local_mean(y)
    variance_x = local_mean(x * x) - mean_x ** 2
    variance_y = local_mean(y * y) - mean_y ** 2
    covariance = local_mean(x * y) - mean_x * mean_y
    contrast_structure = (2 * covariance + c2) / (variance_x + variance_y + c2)
    luminance = (2 * mean_x * mean_y + c1) / (mean_x ** 2 + mean_y ** 2 + c1)
    return (luminance * contrast_structure).flatten(2).mean(-1), contrast_structure.flatten(2).mean(-1)


def ms_ssim_three_scales(x, y) -> torch.Tensor:
    """MS-SSIM (Wang et al. 2003) over three scales: pytorch-msssim's ``ms_ssim`` refuses images smaller
    than (window - 1) * 16 pixels because it assumes five scales; this is the same product of
    contrast-structure terms and a last-scale SSIM at the three scales a 64 x 64 image has room for."""
    x, y = x.float(), y.float()
    terms = []
    for level in range(len(MS_SSIM_WEIGHTS)):
        ssim_per_channel, contrast_structure = ssim_and_contrast_structure(x, y)
        if level < len(MS_SSIM_WEIGHTS) - 1:
            terms.append(torch.relu(contrast_structure))
            x, y = functional.avg_pool2d(x, 2), functional.avg_pool2d(y, 2)
    terms.append(torch.relu(ssim_per_channel))
    weights = x.new_tensor(MS_SSIM_WEIGHTS).view(-1, 1, 1)
    return torch.prod(torch.stack(terms) ** weights, dim=0).mean()


def ms_dssim(x, y) -> torch.Tensor:
    """Multi-scale DSSIM (1 - MS-SSIM) / 2 at three scales."""
    return (1 - ms_ssim_three_scales(x, y)) / 2
