"""Who may see which images: DICOMweb goes through the same guard and policy as FHIR.

Images are authorised as their ``ImagingStudy`` (issue 5, Privacy): QIDO/WADO need read/search on
ImagingStudy, STOW needs create, DELETE needs delete, and what a principal may see of ImagingStudy
(patient compartment, ``?param=value`` restrictions) decides which studies it sees. Every study
links to its ImagingStudy (``dicom_studies.fhir_id``), so the FHIR policy answers for the DICOM
index too: in SQL for QIDO (the same ``Planner.restrict`` searches use, so ``limit``/``offset`` and
counts never include a hidden study) and per study for WADO and DELETE. A study the principal
cannot see answers 404, as if it did not exist.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, select

from medcloud.errors import NotFound
from medcloud.fhir.context import FhirContext
from medcloud.fhir.exchange import Principal
from medcloud.fhir.search.parse import WarnFn
from medcloud.fhir.search.plan import Planner
from medcloud.security.scopes import parse_scopes
from medcloud.storage.imaging_schema import dicom_studies
from medcloud.storage.schema import resources

STUDY = "ImagingStudy"


class ImagingAccess:
    def __init__(self, ctx: FhirContext):
        self.ctx = ctx

    def require(self, principal: Principal, interaction: str) -> None:
        """``search-type``, ``read``, ``create`` or ``delete`` on ImagingStudy, else NotFound."""
        self.ctx.guard.authorize(principal, interaction, STUDY)

    def unrestricted(self, principal: Principal) -> bool:
        return self.ctx.guard.read_filter(principal, STUDY) is None

    def study_condition(self, principal: Principal) -> ColumnElement[bool] | None:
        """A condition on ``dicom_studies`` rows: the studies whose ImagingStudy the principal may search."""
        if self.unrestricted(principal):
            return None
        planner = Planner(base="", now_us=self.ctx.clock(), warn=WarnFn(strict=True),
                          access=lambda rtype: self.ctx.guard.read_filter(principal, rtype))
        visible = select(resources.c.id).where(resources.c.type == STUDY, resources.c.deleted.is_(False),
                                               *planner.restrict(resources, (STUDY,)))
        return dicom_studies.c.fhir_id.in_(visible)

    def check_study(self, principal: Principal, study_uid: str) -> None:
        """Raise NotFound unless the principal may read the ImagingStudy of ``study_uid``."""
        if self.unrestricted(principal):
            return
        with self.ctx.db.read() as conn:
            fhir_id = conn.execute(select(dicom_studies.c.fhir_id)
                                   .where(dicom_studies.c.study_uid == study_uid)).scalar_one_or_none()
            stored = self.ctx.store.read_many(conn, [(STUDY, fhir_id)]).get((STUDY, fhir_id)) if fhir_id else None
        if stored is None or stored.deleted or not self.ctx.guard.can_read(principal, stored):
            raise NotFound(f"study {study_uid} is not known")

    def require_store(self, principal: Principal) -> None:
        """STOW: a ``user/`` or ``system/`` create scope on ImagingStudy without restrictions.

        What a stored instance belongs to is only known after parsing it, and a modality pushes for
        many patients: patient-confined or ``?param``-restricted create scopes do not admit STOW.
        """
        self.require(principal, "create")
        if not any(s.context != "patient" and not s.params
                   for s in parse_scopes(principal.scopes, strict=False).granting("create", STUDY)):
            raise NotFound("storing images needs a user/ or system/ create scope on ImagingStudy")
