"""EventOps' bottom layer: settings, errors, record types (ARCHITECTURE.md).

``__version__`` is the project's one version string: pyproject.toml reads it (setuptools
``dynamic``), the API reports it (OpenAPI ``info.version``) and ``eventops --version`` prints it.
"""

__version__ = "0.1.0"
