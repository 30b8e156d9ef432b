"""API keys over REST, for admin keys: list, create (the key is in the answer once), revoke."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.auth import SCOPES, create_key, list_keys, revoke_key
from orchestrator.dependencies import Admin, get_service
from orchestrator.service import Service, ServiceError, not_found

router = APIRouter(prefix="/v1/keys", tags=["keys"])


class KeyOut(BaseModel):
    id: str = Field(description="The key's id: the part after 'hta_' (not secret).")
    name: str
    scope: str
    created_at: str | None
    revoked: bool


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scope: str = Field("read", description="read, write or admin.")
    name: str = Field("", max_length=200, description="A label for the key.")


class KeyCreated(KeyOut):
    key: str = Field(description="The key itself, shown this once; only its hash is stored.")


@router.get("", response_model=list[KeyOut], dependencies=[Admin], summary="Every API key (never the keys)")
def get_keys(service: Service = Depends(get_service)) -> list[KeyOut]:
    return [KeyOut(**k) for k in list_keys(service.store.sessions)]


@router.post("", status_code=201, response_model=KeyCreated, dependencies=[Admin], summary="Create an API key")
def post_key(body: KeyCreate, service: Service = Depends(get_service)) -> KeyCreated:
    if body.scope not in SCOPES:
        raise ServiceError(422, "invalid request", f"scope: choose one of {', '.join(SCOPES)}, not {body.scope!r}")
    key_id, key = create_key(service.store.sessions, body.scope, body.name)
    row = next(k for k in list_keys(service.store.sessions) if k["id"] == key_id)
    return KeyCreated(**row, key=key)


@router.delete(
    "/{key_id}",
    response_model=KeyOut,
    dependencies=[Admin],
    summary="Revoke a key: refused at once by this replica, by others within 10 s",
)
def delete_key(key_id: str, service: Service = Depends(get_service)) -> KeyOut:
    row = revoke_key(service.store.sessions, key_id)
    if row is None:
        raise not_found("API key", key_id)
    return KeyOut(**row)
