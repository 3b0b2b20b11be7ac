"""medcloud AI: model packages (``package.py``) and the model registry (``registry.py``).

Image diagnosis (issue 7) and CDS Hooks risk models (issue 8) load their ONNX models from the
registry; ``medcloud ml train`` (analytics/ml.py) produces packages for it.
"""

from medcloud.ai.package import ChecksumMismatch, Manifest, ModelPackage, PackageError
from medcloud.ai.registry import ModelVersion, Registry

__all__ = ["ChecksumMismatch", "Manifest", "ModelPackage", "ModelVersion", "PackageError", "Registry"]
