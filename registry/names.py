"""Registered-model names: one registered model per tenant.

Every tenant has its own registered model, ``<Settings.model_name>.<tenant>``
(``eventops-detector.acme``), with its own ``champion`` and ``challenger`` aliases, versions,
decision tags and alias history.  A tenant id is ``[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`` (the
``tenants`` table's CHECK), so the name is a valid MLflow name and the tenant is everything after
the prefix and its dot.  A model registered under the bare ``Settings.model_name`` (before models
were per tenant) is scored for nobody.

This module imports nothing heavy: any layer may call it.

>>> from core.settings import Settings
>>> s = Settings()
>>> tenant_model(s, "acme")
'eventops-detector.acme'
>>> tenant_of(s, "eventops-detector.acme"), tenant_of(s, "eventops-detector")
('acme', None)
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from core.settings import Settings

__all__ = ["TENANT_ID", "like_pattern", "tenant_model", "tenant_of"]

#: a tenant id (the ``tenants`` table's CHECK constraint)
TENANT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def tenant_model(settings: Settings, tenant: str) -> str:
    """The registered model of ``tenant``; ``ValueError`` for a string that is no tenant id."""
    if not isinstance(tenant, str) or not TENANT_ID.fullmatch(tenant):
        raise ValueError(f"invalid tenant id {tenant!r}: use 1-64 letters, digits, '_', '.' or '-'")
    return f"{settings.model_name}.{tenant}"


def tenant_of(settings: Settings, name: str) -> str | None:
    """The tenant whose registered model is ``name``; ``None`` for any other name."""
    prefix = settings.model_name + "."
    if not name.startswith(prefix):
        return None
    t = name[len(prefix) :]
    return t if TENANT_ID.fullmatch(t) else None


def like_pattern(settings: Settings) -> str:
    """``search_registered_models`` filter selecting every tenant's model (post-filter the
    result with :func:`tenant_of`: ``_`` in a name is a LIKE wildcard)."""
    return "name LIKE '" + settings.model_name.replace("'", "''") + ".%'"
