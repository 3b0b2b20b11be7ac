"""One typed, frozen settings object: CLI flags > env ``MEDCLOUD_*`` > ``medcloud.toml`` > defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class OidcIssuer(BaseModel):
    """An external OpenID Connect provider whose JWT access tokens medcloud accepts (Keycloak, Entra ID...)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    issuer: str  # must equal the token's ``iss`` exactly
    audience: str | list[str]  # the token's ``aud`` must contain one of these
    # Key set URL; empty = read ``jwks_uri`` from ``<issuer>/.well-known/openid-configuration``.
    jwks_uri: str | None = None
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "RS384", "ES256", "ES384"])
    scope_claim: str = "scope"  # space-separated string or list; ``scp`` (Entra ID) is read too
    patient_claim: str = "patient"
    subject_claim: str = "sub"
    # IdP scope/role name -> SMART scopes (space separated), for IdPs that cannot name scopes
    # ``patient/Observation.rs`` (Entra ID app roles, e.g. {"FHIR.Read" = "user/*.rs"}).
    scope_map: dict[str, str] = Field(default_factory=dict)

    @field_validator("issuer", "audience")
    @classmethod
    def _not_empty(cls, v: str | list[str]) -> str | list[str]:
        if not v or (isinstance(v, list) and not all(v)):
            raise ValueError("must not be empty")
        return v

    @field_validator("algorithms")
    @classmethod
    def _asymmetric(cls, v: list[str]) -> list[str]:
        # HS* would verify with a shared secret; an IdP's published keys are public.
        bad = [a for a in v if a not in _SIGNATURE_ALGORITHMS]
        if bad or not v:
            raise ValueError(f"accepted algorithms are {', '.join(sorted(_SIGNATURE_ALGORITHMS))}; not {bad or v}")
        return v


_SIGNATURE_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
                                   "EdDSA"})


class RemoteAE(BaseModel):
    """A DICOM peer medcloud talks DIMSE to (C-MOVE destination, SCU target, allowed calling AE)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    title: str = Field(min_length=1, max_length=16)  # AE title (PS3.5 AE VR: 16 chars, no backslash)
    host: str
    port: int = Field(ge=1, le=65535)

    @field_validator("title")
    @classmethod
    def _ae_title(cls, v: str) -> str:
        v = v.strip()
        if not v or "\\" in v or any(ord(c) < 32 for c in v):
            raise ValueError("an AE title is 1-16 characters without backslash or control characters")
        return v


class CdsClient(BaseModel):
    """An EHR (CDS client) allowed to call medcloud's CDS Hooks services (docs/cds.md, "Security").

    Its JWTs are verified with ``jwks`` (inline JWK Set) or the set at ``jwks_url``; a token whose
    ``jku`` header names another URL is refused unless that URL is in ``jku_allow``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    iss: str = Field(min_length=1)  # the JWT's ``iss``
    jwks_url: str | None = None
    jwks: dict[str, Any] | None = None
    jku_allow: list[str] = Field(default_factory=list)
    services: list[str] = Field(default_factory=lambda: ["*"])  # service ids this client may call


class CdsModelService(BaseModel):
    """A CDS service made by configuration: a registered tabular model + a ViewDefinition for its features."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    title: str
    description: str = ""
    model: str  # registry name; the active version unless ``version``
    version: str | None = None
    view: dict[str, Any]  # SQL-on-FHIR ViewDefinition JSON (docs/cds.md, "Services by configuration")
    hook: str = "patient-view"
    outcome: str = ""  # what the probability is of (RiskAssessment.prediction.outcome.text)
    threshold: float | None = Field(default=None, ge=0, le=1)  # default: the model's decision_threshold metric
    max_missing: int = Field(default=0, ge=0)  # features allowed to be missing (then imputed by the model)
    # Prefetch templates (key -> FHIR query); default: every resource of the view's type for the patient.
    prefetch: dict[str, str] = Field(default_factory=dict)


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
    # Security (issue 4, docs/security.md). ``auth = false`` (``serve --no-auth``) is loopback only.
    auth: bool = True
    access_token_ttl: int = 300  # seconds
    # Public base of this server as clients see it (https://fhir.example.org); empty = from host/port.
    public_url: str = ""
    oidc_issuers: list[OidcIssuer] = Field(default_factory=list)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    master_key_file: Path | None = None  # default DATA_DIR/master.key
    # Envelope-encrypt DICOM instances and $export files under DATA_DIR (docs/security.md).
    encrypt_at_rest: bool = True
    # DIMSE (issue 5, docs/imaging.md "DIMSE"): the SCP port (0 = off), our AE title, known peers;
    # calling AE titles not in ``dicom_remotes`` are refused unless ``dicom_allow_unknown``.
    dicom_port: int = Field(default=11112, ge=0, le=65535)
    dicom_ae_title: str = Field(default="MEDCLOUD", min_length=1, max_length=16)
    dicom_remotes: list[RemoteAE] = Field(default_factory=list)
    dicom_allow_unknown: bool = False
    # SCP processes sharing the DIMSE port (SO_REUSEPORT; the kernel spreads associations over
    # them). One process tops out near one core (pynetdicom's polling threads + our store path
    # under one GIL); more help only where the database takes concurrent writers (PostgreSQL) and
    # cores are spare: on 2 cores with SQLite, 2 processes were slower (docs/imaging.md).
    dicom_processes: int = Field(default=1, ge=1, le=64)
    # C-STORE/C-ECHO associations are served by an asyncio acceptor (imaging/dimse/acceptor.py)
    # instead of pynetdicom's two polling threads per association; everything else still goes to
    # pynetdicom. False: pure pynetdicom, as before (docs/imaging.md "DIMSE").
    dicom_fast_store: bool = True
    # The archive's store policy (STOW-RS and C-STORE alike): a second instance with a stored SOP
    # Instance UID is refused (0x0111 / 409) or replaces it (0xB000 warning); instances larger than
    # the limit are refused with 0xA700; a study is "stable" after this many quiet seconds.
    dicom_duplicates: Literal["reject", "overwrite"] = "reject"
    dicom_max_instance_mb: int = Field(default=512, ge=1, le=4096)
    dicom_stable_after: float = Field(default=5.0, gt=0, le=86400)
    # Extra QIDO-RS / C-FIND matching keys beyond PS3.18's (keywords or 8-hex tags, e.g.
    # ["InstitutionName", "StationName", "00181030"]); indexed per instance on store. After changing
    # the list, `medcloud dicom reindex` indexes the instances already stored.
    dicom_extra_tags: list[str] = Field(default_factory=list)
    # Where DICOM instance files live (docs/imaging.md "Object storage (S3)"): "local" (DATA_DIR/dicom)
    # or "s3://bucket/prefix" (any S3-compatible store: AWS, MinIO, Ceph RGW). Credentials come from
    # boto3's standard chain (AWS_ACCESS_KEY_ID/..., AWS_PROFILE, instance role), never from here.
    blob_store: str = "local"
    s3_endpoint_url: str = ""  # empty = AWS; e.g. http://minio:9000
    s3_region: str = ""  # empty = boto3's chain (AWS_REGION / profile), else us-east-1

    @field_validator("dicom_extra_tags")
    @classmethod
    def _extra_tags(cls, v: list[str]) -> list[str]:
        from medcloud.imaging.extra_tags import normalise_tag

        return [normalise_tag(t) for t in v]

    # CDS Hooks (issue 8, docs/cds.md): allowed EHR clients, RiskAssessment writing, staleness limits,
    # services made by configuration.
    cds_clients: list[CdsClient] = Field(default_factory=list)
    cds_write_risk_assessments: bool = True
    cds_stale_days: int = Field(default=365, ge=1)  # labs/BP older than this are flagged (PCE)
    cds_vitals_stale_hours: int = Field(default=24, ge=1)  # vital signs older than this are flagged (NEWS2)
    cds_jwt_max_lifetime: int = Field(default=300, ge=1)  # seconds between iat and exp
    cds_news2_scale2_conditions: list[str] = Field(default_factory=lambda: ["389087006"])  # SNOMED, SpO2 scale 2
    cds_model_services: list[CdsModelService] = Field(default_factory=list)
    # AI image diagnosis (issue 7, docs/ai.md): ONNX Runtime intra-op threads per session (0 = its
    # default, all cores), images per inference batch, and automatic reads of stable studies.
    ai_threads: int = Field(default=0, ge=0, le=256)
    ai_batch: int = Field(default=16, ge=1, le=1024)
    ai_auto_read: bool = True
    # register + activate the shipped default image models (brain-mri, pneumonia) at start when their
    # name has no registered version (medcloud/ai/defaults.py)
    ai_default_models: bool = True

    @field_validator("blob_store")
    @classmethod
    def _blob_store(cls, v: str) -> str:
        if v != "local" and not (v.startswith("s3://") and len(v) > 5 and not v[5:].startswith("/")):
            raise ValueError(f"blob_store must be 'local' or 's3://bucket[/prefix]', got {v!r}")
        return v

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

    @property
    def public_base(self) -> str:
        """``public_url``, or ``http(s)://host:port`` (a wildcard bind address reads as localhost)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "localhost" if self.host in ("", "0.0.0.0", "::") else self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{'https' if self.tls_cert else 'http'}://{host}:{self.port}"

    @property
    def auth_issuer(self) -> str:
        """The ``iss`` of access tokens medcloud issues itself."""
        return self.public_base + "/auth"

    @property
    def fhir_audience(self) -> str:
        """The ``aud`` access tokens for this server carry: the FHIR base URL."""
        return self.base_url.rstrip("/") if self.base_url else self.public_base + "/fhir"

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


