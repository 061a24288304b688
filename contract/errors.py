"""The errors a bundle or a model file raises when it breaks the contract."""

from __future__ import annotations


class BundleError(ValueError):
    """A bundle that cannot be written or served: missing file, tampered file, bad schema.

    The message names the file and says why; callers show it as it is.
    """


class ModelLoadError(BundleError):
    """An ONNX file that onnxruntime cannot load or whose signature breaks the contract."""
