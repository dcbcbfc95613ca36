"""Inventory: enrichment tags per source (host). Reads need ``read``, writes ``admin``.

The enrich stage re-reads the table every ``inventory_refresh_s``; writes here take effect then.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, StringConstraints, WithJsonSchema

from core.errors import NotFound
from core.settings import Settings
from serving.deps import AdminKey, PoolDep, ReadKey, SettingsDep
from serving.errors import invalid
from serving.openapi import links
from serving.params import NO_NUL, NamePath
from storage import inventory as inventory_repo

router = APIRouter(prefix="/inventory", tags=["inventory"])
SourcePath = NamePath
TAG_KEY_MAX = 128

TagKey = Annotated[str, StringConstraints(min_length=1, max_length=TAG_KEY_MAX, pattern=NO_NUL)]
TagValue = Annotated[str, StringConstraints(pattern=NO_NUL)]
#: what the OpenAPI shows; the value length and tag count are the settings ``max_tag_value_bytes``
#: (counted in characters here) and ``max_tags``, checked by :func:`_check` and written in by
#: :func:`document_limits`
TAGS_SCHEMA = {
    "type": "object",
    "description": f"Tag name (1-{TAG_KEY_MAX} characters) -> value (a string); no NUL characters.",
    "propertyNames": {
        "type": "string",
        "minLength": 1,
        "maxLength": TAG_KEY_MAX,
        "pattern": NO_NUL,
    },
    "additionalProperties": {"type": "string", "pattern": NO_NUL},
}


class Item(BaseModel):
    source_id: str
    tags: dict
    updated_at: datetime


class TagsIn(BaseModel):
    tags: Annotated[dict[TagKey, TagValue], WithJsonSchema(TAGS_SCHEMA)]


def _check(tags: dict[str, str], max_tags: int, max_value: int) -> None:
    """The configured limits (the schema states them; pydantic checked the rest)."""
    if len(tags) > max_tags:
        raise invalid(("body", "tags"), f"at most {max_tags} tags", "too_long")
    for k, v in tags.items():
        if len(v) > max_value:
            raise invalid(
                ("body", "tags", k), f"value longer than {max_value} characters", "string_too_long"
            )


def document_limits(schema: dict[str, Any], settings: Settings) -> None:
    """Write the configured tag limits into the OpenAPI ``schema`` (of one app)."""
    tags = (
        schema.get("components", {})
        .get("schemas", {})
        .get("TagsIn", {})
        .get("properties", {})
        .get("tags")
    )
    if tags is not None:
        tags["maxProperties"] = settings.max_tags
        tags["additionalProperties"]["maxLength"] = settings.max_tag_value_bytes
        tags["description"] += (
            f" At most {settings.max_tags} tags, values of at most "
            f"{settings.max_tag_value_bytes} characters."
        )


ITEM_LINKS = links(
    get_item={"source_id": "$response.body#/source_id"},
    patch_item={"source_id": "$response.body#/source_id"},
    delete_item={"source_id": "$response.body#/source_id"},
)


@router.get(
    "",
    response_model=list[Item],
    responses={200: links(get_item={"source_id": "$response.body#/0/source_id"})},
)
async def list_inventory(
    pool: PoolDep,
    key: ReadKey,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> list[Item]:
    """Inventory entries of the tenant."""
    async with pool.connection() as conn:
        rows = await inventory_repo.list_items(conn, key.tenant_id, limit)
    return [Item(source_id=s, tags=t, updated_at=u) for s, t, u in rows]


@router.get("/{source_id}", response_model=Item, responses={200: ITEM_LINKS})
async def get_item(pool: PoolDep, key: ReadKey, source_id: SourcePath) -> Item:
    """Tags of one source."""
    async with pool.connection() as conn:
        row = await inventory_repo.get_item(conn, key.tenant_id, source_id)
    if row is None:
        raise NotFound(f"source {source_id!r} not found")
    return Item(source_id=row[0], tags=row[1], updated_at=row[2])


async def _put(pool, tenant: str, source: str, tags: dict) -> Item:
    async with pool.connection() as conn:
        row = await inventory_repo.put_item(conn, tenant, source, tags)
    return Item(source_id=row[0], tags=row[1], updated_at=row[2])


async def _merge(pool, tenant: str, source: str, tags: dict) -> Item:
    async with pool.connection() as conn:
        row = await inventory_repo.merge_item(conn, tenant, source, tags)
    if row is None:
        raise NotFound(f"source {source!r} not found (PUT creates it)")
    return Item(source_id=row[0], tags=row[1], updated_at=row[2])


@router.put("/{source_id}", response_model=Item, responses={200: ITEM_LINKS})
async def put_item(
    pool: PoolDep, key: AdminKey, settings: SettingsDep, source_id: SourcePath, body: TagsIn
) -> Item:
    """Create a source or replace all of its tags."""
    _check(body.tags, settings.max_tags, settings.max_tag_value_bytes)
    return await _put(pool, key.tenant_id, source_id, body.tags)


@router.patch("/{source_id}", response_model=Item, responses={200: ITEM_LINKS})
async def patch_item(
    pool: PoolDep, key: AdminKey, settings: SettingsDep, source_id: SourcePath, body: TagsIn
) -> Item:
    """Merge tags into an existing source (404 if there is none: PUT creates it)."""
    _check(body.tags, settings.max_tags, settings.max_tag_value_bytes)
    return await _merge(pool, key.tenant_id, source_id, body.tags)


@router.delete("/{source_id}", status_code=204, response_class=Response)
async def delete_item(pool: PoolDep, key: AdminKey, source_id: SourcePath) -> Response:
    """Remove a source's inventory entry."""
    async with pool.connection() as conn:
        deleted = await inventory_repo.delete_item(conn, key.tenant_id, source_id)
    if not deleted:
        raise NotFound(f"source {source_id!r} not found")
    return Response(status_code=204)
