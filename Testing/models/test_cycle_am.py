"""Cycle-consistent activation maximization: network shapes at the paper's widths, the losses, and a
few generator steps that raise the classifier's activation of the generator's class."""
import numpy as np
import pytest
import torch
import xaiexplain
from xaiexplain.models import cycle_am
from xaiexplain.models.architectures import MALIGNANT


def test_shapes_at_paper_widths():
    torch.manual_seed(0)
    generator = cycle_am.Generator()
    assert [stage[0].out_channels for stage in generator.encoder.stages] == [48, 96, 192, 384]
    assert all(sum(isinstance(m, torch.nn.Conv2d) for m in stage) == 3 for stage in generator.encoder.stages)
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        y = generator(x)
    assert y.shape == x.shape and y.min().item() >= 0 and y.max().item() <= 1
    discriminator = cycle_am.PairDiscriminator()
    features = discriminator.encoder(torch.cat([x, y]))
    assert [f.shape[-1] for f in features] == [64, 32, 16, 8]  # cut after stage 3; heads on stages 2 and 3
    loss = discriminator(x, y.detach(), generator=torch.Generator().manual_seed(0))
    assert loss.shape == () and torch.isfinite(loss)


def test_losses_are_finite_and_zero_where_they_must_be():
    x = torch.rand(3, 1, 64, 64)
    other = torch.rand(3, 1, 64, 64)
    for loss in (cycle_am.dssim, cycle_am.ms_dssim, cycle_am.cycle_loss, cycle_am.similarity_loss):
        assert float(loss(x, x)) == pytest.approx(0.0, abs=1e-6), loss.__name__
        different = loss(x, other)
        assert torch.isfinite(different) and 0 < float(different) <= 1, loss.__name__
    # the cycle loss is the mean of L1 and MS-DSSIM (eq. 2)
    expected = (torch.mean(torch.abs(x - other)) + cycle_am.ms_dssim(x, other)) / 2
    torch.testing.assert_close(cycle_am.cycle_loss(x, other), expected)


def test_discriminator_labels_invert_for_the_generators():
    torch.manual_seed(1)
    discriminator = cycle_am.PairDiscriminator(widths=(8, 16, 32, 64))
    real, fake = torch.rand(4, 1, 64, 64), torch.rand(4, 1, 64, 64)
    seed = 5
    straight = discriminator(real, fake, generator=torch.Generator().manual_seed(seed))
    inverted = discriminator(real, fake, generator=torch.Generator().manual_seed(seed), fake_is_real=True)
    # with two classes, inverting every label turns log p into log (1 - p): different unless p = 1/2
    assert straight.item() != pytest.approx(inverted.item())


def test_a_few_steps_raise_the_activation_of_the_generators_class():
    bundle = xaiexplain.load_bundle()
    classifier = bundle.model
    for parameter in classifier.parameters():
        parameter.requires_grad_(False)
    rng = np.random.default_rng(0)
    images = np.full((8, 64, 64), -850.0) + rng.normal(0, 20, (8, 64, 64))
    images[:, 26:38, 26:38] = 30.0  # a small solid nodule
    x = bundle.to_tensor(images)
    torch.manual_seed(0)
    generator = cycle_am.Generator(widths=(8, 16, 32, 64))
    optimiser = torch.optim.Adam(generator.parameters(), lr=2e-3)
    losses = []
    for _ in range(12):
        generated = generator(x)
        am = cycle_am.activation_maximization_loss(classifier, generated, MALIGNANT)
        loss = am + cycle_am.similarity_loss(x, generated)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(am.item())
    assert losses[-1] < 0.5 * losses[0], losses
