"""DICOM status codes for storage (PS3.4 Annex B.2.3, PS3.7 C.4, PS3.18 §10.5.3 Table 10.5.3-2).

The archive raises medcloud error categories; ``store_status`` is the one translation to a
status code, shared by STOW-RS (FailureReason / WarningReason) and the DIMSE C-STORE SCP.
"""

from __future__ import annotations

from medcloud.errors import MedcloudError

SUCCESS = 0x0000
# Failures
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
SOP_CLASS_NOT_SUPPORTED = 0x0122
NOT_AUTHORIZED = 0x0124
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
# Warnings
COERCION_OF_DATA_ELEMENTS = 0xB000
ELEMENTS_DISCARDED = 0xB006
DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING = 0xB007

_BY_CATEGORY = {
    "too-large": OUT_OF_RESOURCES,
    "busy": OUT_OF_RESOURCES,
    "invalid": DATASET_DOES_NOT_MATCH_SOP_CLASS,
    "unprocessable": CANNOT_UNDERSTAND,
    "unsupported": SOP_CLASS_NOT_SUPPORTED,
    "unsupported-media": TRANSFER_SYNTAX_NOT_SUPPORTED,
    "conflict": DUPLICATE_SOP_INSTANCE,
    "forbidden": NOT_AUTHORIZED,
    "unauthorized": NOT_AUTHORIZED,
}


def store_status(err: MedcloudError) -> int:
    """The C-STORE / STOW-RS failure status for an error category (anything else: 0xC000)."""
    return _BY_CATEGORY.get(err.category, CANNOT_UNDERSTAND if err.category != "fault" else PROCESSING_FAILURE)
