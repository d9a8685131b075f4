"""The convolutional autoencoder of §7.2 (Table 1): the thesis' first look at projected networks.

Encoder: 3×3 convolutions with 16, 8 and 8 filters, each followed by ReLU and 2×2 max pooling (stride 2);
its output, 1/8 of the input's side with 8 channels, is the encoding. Decoder, its mirror: 3×3
convolutions with 8, 8 and 16 filters, each with ReLU and followed by nearest upsampling ×2, then a 3×3
convolution back to the input's channels with ReLU (Table 1's ``output_activation``; images normalised to
mean 0 are then reconstructed only where positive, so the §7.2 config loads them unnormalised, in [0, 1]).
A ReLU output can die early in training (every output 0: the loss stays at the mean squared pixel value,
one seed in six on Digits); "sigmoid" cannot, and null leaves the output linear. Padding keeps every side,
so a side divisible by 8 comes back at its size. It is trained to reconstruct its input,
not to classify (``phd_lab_objective``), so ``num_classes`` is accepted and unused.
"""

from __future__ import annotations

import torch
from torch import nn

from phd_lab.models.init import kaiming_init
from phd_lab.objectives import RECONSTRUCTION

ENCODER_FILTERS = (16, 8, 8)
DECODER_FILTERS = (8, 8, 16)
OUTPUT_ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, None: nn.Identity}


def _conv(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True)]


class ConvAutoencoder(nn.Module):
    phd_lab_objective = RECONSTRUCTION
    downscale = 2 ** len(ENCODER_FILTERS)  # the input's side must be a multiple of it

    def __init__(self, *, in_channels: int = 3, output_activation: str | None = "relu") -> None:
        super().__init__()
        encoder: list[nn.Module] = []
        channels = in_channels
        for filters in ENCODER_FILTERS:
            encoder += [*_conv(channels, filters), nn.MaxPool2d(2, stride=2)]
            channels = filters
        decoder: list[nn.Module] = []
        for filters in DECODER_FILTERS:
            decoder += [*_conv(channels, filters), nn.Upsample(scale_factor=2, mode="nearest")]
            channels = filters
        decoder += [nn.Conv2d(channels, in_channels, 3, padding=1), OUTPUT_ACTIVATIONS[output_activation]()]
        self.encoder = nn.Sequential(*encoder)
        self.decoder = nn.Sequential(*decoder)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def create_conv_autoencoder(*, num_classes: int, in_channels: int = 3,
                            output_activation: str | None = "relu") -> ConvAutoencoder:
    del num_classes  # a reconstruction model has no classes
    if output_activation not in OUTPUT_ACTIVATIONS:
        raise ValueError(f"output_activation must be \"relu\" (Table 1), \"sigmoid\" or null (linear); got "
                         f"{output_activation!r}")
    return ConvAutoencoder(in_channels=in_channels, output_activation=output_activation)
