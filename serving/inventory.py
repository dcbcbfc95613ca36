"""Inventory: enrichment tags per source (host). Reads need ``read``, writes ``admin``.

The enrich stage re-reads the table every ``inventory_refresh_s``; writes here take effect then.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from psycopg.types.json import Jsonb
from pydantic import BaseModel

from pipeline.errors import NotFound
from serving.deps import AdminKey, PoolDep, ReadKey, SettingsDep
from serving.errors import BadRequest

router = APIRouter(prefix="/inventory", tags=["inventory"])
SourcePath = Annotated[str, Path(min_length=1, max_length=255)]


class Item(BaseModel):
    source_id: str
    tags: dict
    updated_at: datetime


class TagsIn(BaseModel):
    tags: dict[str, str]


def _check(tags: dict[str, str], max_tags: int, max_bytes: int) -> None:
    if len(tags) > max_tags:
        raise BadRequest(f"at most {max_tags} tags")
    for k, v in tags.items():
        if not k or len(k.encode()) > 128:
            raise BadRequest("tag names must be 1-128 bytes")
        if len(v.encode()) > max_bytes:
            raise BadRequest(f"tag {k!r}: value longer than {max_bytes} bytes")
        if "\x00" in k or "\x00" in v:
            raise BadRequest("tags must not contain NUL characters")


@router.get("", response_model=list[Item])
async def list_inventory(
    pool: PoolDep, key: ReadKey, limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> list[Item]:
    """Inventory entries of the tenant."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT source_id, tags, updated_at FROM inventory WHERE tenant_id = %s "
            "ORDER BY source_id LIMIT %s", (key.tenant_id, limit))
        rows = await cur.fetchall()
    return [Item(source_id=s, tags=t, updated_at=u) for s, t, u in rows]


@router.get("/{source_id}", response_model=Item)
async def get_item(pool: PoolDep, key: ReadKey, source_id: SourcePath) -> Item:
    """Tags of one source."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT source_id, tags, updated_at FROM inventory WHERE tenant_id = %s AND source_id = %s",
            (key.tenant_id, source_id))
        row = await cur.fetchone()
    if row is None:
        raise NotFound(f"source {source_id!r} not found")
    return Item(source_id=row[0], tags=row[1], updated_at=row[2])


async def _upsert(pool, tenant: str, source: str, tags: dict, replace: bool) -> Item:
    merge = "EXCLUDED.tags" if replace else "inventory.tags || EXCLUDED.tags"
    async with pool.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO inventory (tenant_id, source_id, tags) VALUES (%s, %s, %s) "
            f"ON CONFLICT (tenant_id, source_id) DO UPDATE SET tags = {merge}, updated_at = now() "
            "RETURNING source_id, tags, updated_at", (tenant, source, Jsonb(tags)))
        row = await cur.fetchone()
    return Item(source_id=row[0], tags=row[1], updated_at=row[2])


@router.put("/{source_id}", response_model=Item)
async def put_item(pool: PoolDep, key: AdminKey, settings: SettingsDep, source_id: SourcePath,
                   body: TagsIn) -> Item:
    """Create a source or replace all of its tags."""
    _check(body.tags, settings.max_tags, settings.max_tag_value_bytes)
    return await _upsert(pool, key.tenant_id, source_id, body.tags, replace=True)


@router.patch("/{source_id}", response_model=Item)
async def patch_item(pool: PoolDep, key: AdminKey, settings: SettingsDep, source_id: SourcePath,
                     body: TagsIn) -> Item:
    """Merge tags into a source (created if missing)."""
    _check(body.tags, settings.max_tags, settings.max_tag_value_bytes)
    return await _upsert(pool, key.tenant_id, source_id, body.tags, replace=False)


@router.delete("/{source_id}", status_code=204, response_class=Response)
async def delete_item(pool: PoolDep, key: AdminKey, source_id: SourcePath) -> Response:
    """Remove a source's inventory entry."""
    async with pool.connection() as conn:
        cur = await conn.execute("DELETE FROM inventory WHERE tenant_id = %s AND source_id = %s",
                                 (key.tenant_id, source_id))
    if cur.rowcount == 0:
        raise NotFound(f"source {source_id!r} not found")
    return Response(status_code=204)
