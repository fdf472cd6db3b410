"""ctdl: a config-driven deep-learning engine for CT volumes.

Axis convention (stated once, used everywhere): a :class:`ctdl.io.Volume` array is
ordered ``(D, H, W)`` = (slices, rows, columns), i.e. axis 0 is the file voxel axis
closest to the patient's superior-inferior direction, axis 1 the one closest to
anterior-posterior and axis 2 the one closest to left-right. ``spacing`` is given in
the same order, in millimetres; ``affine`` maps ``(d, h, w, 1)`` voxel indices to
RAS+ world millimetres (the NIfTI/nibabel world). Tensors fed to models are
``(N, C, D, H, W)`` (3D) or ``(N, C, H, W)`` (2D slices taken along axis 0).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
