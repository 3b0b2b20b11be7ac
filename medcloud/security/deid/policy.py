"""A de-identification policy: what to do with each class of identifier, independent of format.

The classes follow HIPAA Safe Harbor, 45 CFR §164.514(b)(2)(i)(A)-(R); the FHIR walker
(``deid/fhir.py``) and, in the imaging issue, the DICOM walker map their elements onto these
classes and ask this object for the action and its parameters. The actions line up with the
DICOM PS3.15 Annex E action codes so the same policy drives both:

    keep          K
    remove        X (Z/D where the element is mandatory)
    pseudonymise  U for UIDs, D for other identifiers: a keyed HMAC, consistent across records
    generalise    C ("clean"): ZIP -> 3 digits, date -> year, age > 89 -> 90+
    shift         dates only: PS3.15 "Retain Longitudinal Temporal Information with Modified Dates"

Pseudonyms are HMAC-SHA-256 under a secret key, so the same identifier (or resource id) maps
to the same pseudonym in every record and links a patient's records together, and nobody
without the key can reverse or recompute them. §164.514(c) asks a re-identification code not to
be *derived from* the individual's information; a keyed HMAC is, so the key must be kept as
secret as the data (or the mapping replaced by random pseudonyms with a lookup table).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import tomllib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import date, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from medcloud.errors import Invalid


class Action(StrEnum):
    KEEP = "keep"
    REMOVE = "remove"
    PSEUDONYMISE = "pseudonymise"
    GENERALISE = "generalise"
    SHIFT = "shift"


K, X, P, G, S = Action.KEEP, Action.REMOVE, Action.PSEUDONYMISE, Action.GENERALISE, Action.SHIFT

# class -> (Safe Harbor letters it covers, actions allowed, actions that satisfy Safe Harbor)
CLASSES: dict[str, tuple[str, frozenset[Action], frozenset[Action]]] = {
    "names": ("A", frozenset({K, X, P}), frozenset({X, P})),
    "geography": ("B", frozenset({K, X, G}), frozenset({X, G})),
    "dates": ("C", frozenset({K, X, G, S}), frozenset({X, G})),
    "ages": ("C", frozenset({K, X, G}), frozenset({X, G})),
    "telecom": ("D E F", frozenset({K, X, P}), frozenset({X, P})),
    "identifiers": ("G H I J K L M R", frozenset({K, X, P}), frozenset({X, P})),
    "urls": ("N", frozenset({K, X}), frozenset({X})),
    "ip_addresses": ("O", frozenset({K, X}), frozenset({X})),
    "biometrics": ("P Q", frozenset({K, X}), frozenset({X})),
    "free_text": ("all, in narrative", frozenset({K, X}), frozenset({X})),
    "resource_ids": ("R", frozenset({K, P}), frozenset({P})),
}

# 3-digit ZIP prefixes whose area held 20,000 people or fewer in the 2000 Census (HHS OCR,
# 67 FR 53182, 53233-53234): these become "000". Replace with current Census data when published.
RESTRICTED_ZIP3 = frozenset({"036", "059", "063", "102", "203", "556", "692", "790", "821", "823", "830",
                             "831", "878", "879", "884", "890", "893"})

# string/markdown elements that are terminology labels or units, not free text
DEFAULT_KEEP_STRINGS = frozenset({
    "Coding.display", "Quantity.unit", "Age.unit", "Duration.unit", "Count.unit", "Distance.unit",
    "SimpleQuantity.unit", "MoneyQuantity.unit", "Address.state", "Address.country",
})


# Secondary Capture image storage SOP classes (PS3.4 B.5): screenshots, scanned documents, often text.
SECONDARY_CAPTURE = frozenset({"1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.1",
                               "1.2.840.10008.5.1.4.1.1.7.2", "1.2.840.10008.5.1.4.1.1.7.3",
                               "1.2.840.10008.5.1.4.1.1.7.4"})


@dataclass(frozen=True)
class MaskRule:
    """Rectangles ``(x0, y0, x1, y1)`` (pixels, end exclusive) blacked out on images of one device/size."""

    manufacturer: str
    rows: int
    columns: int
    rects: tuple[tuple[int, int, int, int], ...]


@dataclass(frozen=True)
class DicomOptions:
    """The DICOM-only part of a policy (the ``[dicom]`` table of a policy file); see ``deid/dicom.py``.

    ``burned_in``: what to do with an instance whose pixels may carry burned-in text (BurnedInAnnotation
    YES, or no flag and a suspect modality / SOP class): ``refuse`` it, or ``mask`` it with the first
    ``mask`` rule matching (Manufacturer, Rows, Columns), else a ``mask_top_rows`` band (0 = refuse).
    """

    clean_descriptors: bool = False  # PS3.15 Clean Descriptors Option (113105)
    burned_in: str = "refuse"  # refuse | mask
    suspect_modalities: frozenset[str] = frozenset({"US", "XC", "ES", "OT", "DOC"})
    suspect_sop_classes: frozenset[str] = SECONDARY_CAPTURE
    mask: tuple[MaskRule, ...] = ()
    mask_top_rows: int = 0
    keep_private_creators: frozenset[str] = frozenset()  # private blocks kept (default: every one removed)

    def __post_init__(self) -> None:
        if self.burned_in not in ("refuse", "mask"):
            raise Invalid("dicom.burned_in must be refuse or mask")
        if not 0 <= self.mask_top_rows <= 65535:
            raise Invalid("dicom.mask_top_rows must be 0..65535")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> DicomOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise Invalid(f"de-identification policy: unknown keys {', '.join('dicom.' + k for k in unknown)}")
        values = dict(data)
        for name in ("suspect_modalities", "suspect_sop_classes", "keep_private_creators"):
            if name in values:
                values[name] = frozenset(str(x) for x in values[name])
        if "mask" in values:
            values["mask"] = tuple(_mask_rule(r) for r in values["mask"])
        try:
            return cls(**values)
        except TypeError as e:
            raise Invalid(f"de-identification policy: [dicom]: {e}") from None


def _mask_rule(raw: Any) -> MaskRule:
    try:
        rects = tuple((int(a), int(b), int(c), int(d)) for a, b, c, d in raw["rects"])
        rule = MaskRule(str(raw.get("manufacturer", "")), int(raw["rows"]), int(raw["columns"]), rects)
    except (KeyError, TypeError, ValueError):
        raise Invalid("dicom.mask: each rule needs manufacturer, rows, columns and rects = "
                      "[[x0, y0, x1, y1], ...]") from None
    if any(not (0 <= x0 < x1 and 0 <= y0 < y1) for x0, y0, x1, y1 in rects):
        raise Invalid("dicom.mask: a rectangle needs 0 <= x0 < x1 and 0 <= y0 < y1")
    return rule


@dataclass(frozen=True)
class DeidPolicy:
    """One de-identification policy; build with ``safe_harbor(key)``, ``from_mapping`` or ``load``."""

    key: bytes = field(repr=False)
    names: Action = X
    geography: Action = G
    dates: Action = G
    ages: Action = G
    telecom: Action = X
    identifiers: Action = P
    urls: Action = X
    ip_addresses: Action = X
    biometrics: Action = X
    free_text: Action = X
    resource_ids: Action = P
    shift_max_days: int = 365  # |offset| in 1..shift_max_days when dates = "shift"
    max_age: int = 89  # ages above are aggregated into max_age + 1 ("90 or older")
    restricted_zip3: frozenset[str] = RESTRICTED_ZIP3
    keep_strings: frozenset[str] = DEFAULT_KEEP_STRINGS  # "Type.element" kept as is
    codeable_concept_text: str = "keep-if-coded"  # keep | remove | keep-if-coded
    dicom: DicomOptions = field(default_factory=DicomOptions)

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes) or len(self.key) < 16:
            raise Invalid("a de-identification key must be at least 16 bytes")
        for name, (_, allowed, _) in CLASSES.items():
            value = getattr(self, name)
            try:
                action = Action(value)
            except ValueError:
                raise Invalid(f"de-identification policy: {name} = {value!r} is not an action") from None
            if action not in allowed:
                raise Invalid(f"de-identification policy: {name} cannot be {action.value!r} "
                              f"(allowed: {', '.join(sorted(a.value for a in allowed))})")
            object.__setattr__(self, name, action)
        if self.codeable_concept_text not in ("keep", "remove", "keep-if-coded"):
            raise Invalid("codeable_concept_text must be keep, remove or keep-if-coded")
        if not 1 <= self.shift_max_days <= 3650 or not 0 < self.max_age < 150:
            raise Invalid("shift_max_days must be 1..3650 and max_age 1..149")

    # ------------------------------------------------------------ construction

    @classmethod
    def safe_harbor(cls, key: bytes) -> DeidPolicy:
        return cls(key=key)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, key: bytes) -> DeidPolicy:
        """From a parsed policy file: ``{"actions": {class: action}, "options": {...}, "dicom": {...}}``."""
        unknown = set(data) - {"actions", "options", "dicom"}
        actions, options = dict(data.get("actions", {})), dict(data.get("options", {}))
        unknown |= {f"actions.{k}" for k in actions if k not in CLASSES}
        option_names = {f.name for f in fields(cls)} - set(CLASSES) - {"key", "dicom"}
        unknown |= {f"options.{k}" for k in options if k not in option_names}
        if unknown:
            raise Invalid(f"de-identification policy: unknown keys {', '.join(sorted(unknown))}")
        for name in ("restricted_zip3", "keep_strings"):
            if name in options:
                options[name] = frozenset(options[name])
        dicom = DicomOptions.from_mapping(data.get("dicom") or {})
        return cls(key=key, **actions, **options, dicom=dicom)

    @classmethod
    def load(cls, path: Path, *, key: bytes) -> DeidPolicy:
        """A TOML or JSON policy file; the key comes from the caller (never from the policy file)."""
        text = Path(path).read_bytes()
        try:
            data = tomllib.loads(text.decode()) if str(path).endswith(".toml") else json.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise Invalid(f"cannot parse de-identification policy {path}: {e}") from None
        return cls.from_mapping(data, key=key)

    def with_actions(self, **actions: Action | str) -> DeidPolicy:
        return replace(self, **actions)  # type: ignore[arg-type]

    @property
    def is_safe_harbor(self) -> bool:
        """Whether every class's action meets §164.514(b)(2) (date shifting, for one, does not)."""
        return all(getattr(self, n) in ok for n, (_, _, ok) in CLASSES.items())

    # ------------------------------------------------------------ the operations walkers call

    def _mac(self, namespace: str, value: str) -> bytes:
        return hmac.new(self.key, f"{namespace}\x00{value}".encode(), hashlib.sha256).digest()

    def pseudonym(self, namespace: str, value: str) -> str:
        """A stable opaque token for ``value`` (32 hex digits)."""
        return self._mac(namespace, value)[:16].hex()

    def pseudonym_id(self, value: str) -> str:
        """A resource id -> a UUID-shaped id (valid as FHIR id and inside ``urn:uuid:``)."""
        return str(uuid.UUID(bytes=self._mac("id", value)[:16], version=4))

    def pseudonym_uid(self, value: str) -> str:
        """A DICOM/OID UID -> a ``2.25.<int>`` UID (PS3.5 B.2), consistent across records."""
        return "2.25." + str(int.from_bytes(self._mac("uid", value)[:16], "big"))

    def shift_days(self, patient_id: str) -> int:
        """The patient's date offset: non-zero, |offset| <= shift_max_days, same for all their records."""
        n = int.from_bytes(self._mac("date-shift", patient_id)[:8], "big")
        magnitude = 1 + n % self.shift_max_days
        return magnitude if (n >> 63) & 1 else -magnitude

    def shift_date(self, d: date, patient_id: str) -> date:
        return d + timedelta(days=self.shift_days(patient_id))

    def generalise_zip(self, postal_code: str) -> str | None:
        """US ZIP -> its first 3 digits, or "000" for a restricted prefix; anything else -> None (removed)."""
        digits = postal_code.strip()
        if len(digits) in (5, 10) and digits[:5].isdigit() and (len(digits) == 5 or digits[5] == "-"):
            zip3 = digits[:3]
            return "000" if zip3 in self.restricted_zip3 else zip3
        return None

    def generalise_age(self, years: float) -> tuple[float, bool]:
        """(age, aggregated): ages above ``max_age`` become ``max_age + 1`` ("90 or older")."""
        if years > self.max_age:
            return float(self.max_age + 1), True
        return years, False
