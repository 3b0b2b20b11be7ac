"""The DICOM index: patient, study, series and instance rows, on the shared ``metadata``.

One row per level, with the attributes QIDO-RS must match and return (PS3.18 Table 10.6.1-5)
as plain columns, so a study search is one indexed SELECT on SQLite and PostgreSQL alike.
Dates are stored as DICOM DA strings (YYYYMMDD) and times normalised to HHMMSS.ffffff, so
ranges compare as strings. Each instance keeps its precomputed DICOM JSON (PS3.18 F.2, bulk data
as BulkDataURI relative to the DICOMweb base) so WADO-RS metadata is a concatenation of stored bytes.

Counts (NumberOfStudyRelated*, NumberOfSeriesRelatedInstances) and ModalitiesInStudy are
recomputed in the same transaction as each write, so they never drift from the instance rows.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, ForeignKey, Index, Integer, LargeBinary, String, Table, Text

from medcloud.storage.schema import Id, metadata

dicom_patients = Table(
    "dicom_patients",
    metadata,
    Column("pk", Id, primary_key=True, autoincrement=True),
    Column("patient_id", String(64), nullable=False),  # (0010,0020), "" when absent
    Column("patient_name", Text, nullable=True),
    Column("patient_birth_date", String(8), nullable=True),
    Column("patient_sex", String(16), nullable=True),
    Column("fhir_id", String(64), nullable=True),  # the linked FHIR Patient
    Index("ux_dicom_patients_pid", "patient_id", unique=True),
    Index("ix_dicom_patients_name", "patient_name"),
)

dicom_studies = Table(
    "dicom_studies",
    metadata,
    Column("pk", Id, primary_key=True, autoincrement=True),
    Column("study_uid", String(64), nullable=False),
    Column("patient_pk", BigInteger, ForeignKey("dicom_patients.pk"), nullable=False),
    Column("study_date", String(8), nullable=True),
    Column("study_time", String(16), nullable=True),
    Column("accession_number", String(64), nullable=True),
    Column("referring_physician_name", Text, nullable=True),
    Column("study_description", Text, nullable=True),
    Column("study_id", String(16), nullable=True),
    Column("modalities", String(256), nullable=True),  # backslash-joined, sorted
    Column("num_series", Integer, nullable=False, default=0),
    Column("num_instances", Integer, nullable=False, default=0),
    Column("fhir_id", String(64), nullable=True),  # the linked FHIR ImagingStudy
    Column("updated", BigInteger, nullable=False),  # microseconds since epoch: last store request
    Column("stable_at", BigInteger, nullable=True),  # set after the quiet period; NULL again on any change
    Index("ux_dicom_studies_uid", "study_uid", unique=True),
    Index("ix_dicom_studies_patient", "patient_pk"),
    Index("ix_dicom_studies_date", "study_date"),
    Index("ix_dicom_studies_accession", "accession_number"),
    Index("ix_dicom_studies_updated", "updated"),
    Index("ix_dicom_studies_stable", "stable_at", "updated"),
)

dicom_series = Table(
    "dicom_series",
    metadata,
    Column("pk", Id, primary_key=True, autoincrement=True),
    Column("series_uid", String(64), nullable=False),
    Column("study_pk", BigInteger, ForeignKey("dicom_studies.pk"), nullable=False),
    Column("modality", String(16), nullable=True),
    Column("series_number", Integer, nullable=True),
    Column("series_description", Text, nullable=True),
    Column("body_part_examined", String(64), nullable=True),
    Column("pps_start_date", String(8), nullable=True),
    Column("pps_start_time", String(16), nullable=True),
    Column("num_instances", Integer, nullable=False, default=0),
    Index("ux_dicom_series_uid", "series_uid", unique=True),
    Index("ix_dicom_series_study", "study_pk"),
    Index("ix_dicom_series_modality", "modality"),
)

dicom_instances = Table(
    "dicom_instances",
    metadata,
    Column("pk", Id, primary_key=True, autoincrement=True),
    Column("sop_uid", String(64), nullable=False),
    Column("series_pk", BigInteger, ForeignKey("dicom_series.pk"), nullable=False),
    Column("study_pk", BigInteger, nullable=False),
    Column("sop_class_uid", String(64), nullable=False),
    Column("instance_number", Integer, nullable=True),
    Column("rows", Integer, nullable=True),
    Column("columns", Integer, nullable=True),
    Column("number_of_frames", Integer, nullable=True),
    Column("bits_allocated", Integer, nullable=True),
    Column("transfer_syntax_uid", String(64), nullable=False),
    Column("blob_key", String(256), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("stored", BigInteger, nullable=False),  # microseconds since epoch
    Column("metadata", LargeBinary, nullable=False),  # DICOM JSON (one object), UTF-8
    Index("ux_dicom_instances_uid", "sop_uid", unique=True),
    Index("ix_dicom_instances_series", "series_pk", "instance_number"),
    Index("ix_dicom_instances_study", "study_pk"),
    Index("ix_dicom_instances_class", "sop_class_uid"),
)

# Configured extra matching keys (imaging/extra_tags.py): one row per value of each instance.
dicom_extra_index = Table(
    "dicom_extra_index",
    metadata,
    Column("instance_pk", BigInteger, nullable=False),
    Column("series_pk", BigInteger, nullable=False),
    Column("study_pk", BigInteger, nullable=False),
    Column("tag", String(8), nullable=False),
    Column("value", String(256), nullable=False),
    Index("ix_dicom_extra_tag_value", "tag", "value"),
    Index("ix_dicom_extra_instance", "instance_pk"),
)

IMAGING_TABLES = (dicom_patients, dicom_studies, dicom_series, dicom_instances, dicom_extra_index)
