"""Loading a registered version as the :class:`models.batch.BatchModel` detect scores with.

MLflow is imported when a model is loaded, never at import of this module.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from features.windows import FEATURES
from models.batch import BatchModel
from registry.tags import TAG_FEATURES

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

__all__ = ["load_version"]


def load_version(
    client: MlflowClient, name: str, version: str | int, tracking_uri: str | None = None
) -> BatchModel:
    """Load registered ``name`` version ``version`` as a :class:`BatchModel`.

    The estimator comes from ``mlflow.sklearn.load_model`` (the pyfunc of an anomaly detector
    would return labels only); the feature columns from the version's ``eventops.features`` tag,
    else from its signature, else :data:`features.windows.FEATURES`.
    """
    import mlflow.artifacts
    import mlflow.sklearn

    mv = client.get_model_version(name, str(version))
    uri = client.get_model_version_download_uri(name, str(version))
    local = mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=tracking_uri)
    est = mlflow.sklearn.load_model(local)
    feats: tuple[str, ...] | None = None
    if mv.tags.get(TAG_FEATURES):
        feats = tuple(json.loads(mv.tags[TAG_FEATURES]))
    else:
        try:
            from mlflow.models import Model

            sig = Model.load(local).signature
            feats = tuple(sig.inputs.input_names()) if sig is not None else None
        except Exception:  # noqa: BLE001 - fall back to the default columns
            feats = None
    return BatchModel(est, feats or FEATURES, version=str(mv.version))
