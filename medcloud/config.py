"""One typed, frozen settings object: CLI flags > env ``MEDCLOUD_*`` > ``medcloud.toml`` > defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MEDCLOUD_", frozen=True, extra="forbid", toml_file="medcloud.toml"
    )

    data_dir: Path = Path("./medcloud-data")
    # SQLAlchemy URL; empty means SQLite (WAL) at DATA_DIR/medcloud.db.
    db: str = ""
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    # Public base URL of the FHIR endpoint used in links; empty = derived from the request.
    base_url: str = ""
    max_body_bytes: int = 64 * 1024 * 1024
    max_json_depth: int = 100
    default_page_size: int = 50
    max_page_size: int = 1000
    # Lifetime of an opaque paging cursor, seconds.
    cursor_ttl: int = 3600
    # Resources per batch insert when loading.
    db_pool_size: int = 8
    export_ttl: int = 24 * 3600
    log_level: str = "info"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    @property
    def db_url(self) -> str:
        if self.db:
            return normalise_db_url(self.db)
        return f"sqlite:///{(self.data_dir / 'medcloud.db').resolve()}"

    def with_overrides(self, **changes: Any) -> Settings:
        values = self.model_dump()
        values.update({k: v for k, v in changes.items() if v is not None})
        return Settings(**values)


def normalise_db_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` and select the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


