"""phd-lab: reproducible training and layer-wise analysis of convolutional classifiers.

Implements the experiment method of M. Richter, *Towards Efficient Convolutional Neural
Architecture Design* (2022): grids of trainings from one JSON config, saturation tracking,
receptive fields, latent extraction and logistic-regression probes.
"""

__version__ = "0.2.0"
