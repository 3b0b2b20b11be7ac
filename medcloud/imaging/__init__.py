"""The imaging archive (issue 5): DICOM storage, index, DICOMweb edge, FHIR ImagingStudy link.

The web edge (``medcloud.imaging.dicomweb``) is not imported here, so domain users (DIMSE, jobs, AI)
do not pull in Starlette.
"""

from medcloud.imaging.archive import Archive, ArchiveConfig, InstanceRef, StoreResult
from medcloud.imaging.blobs import BlobStore, LocalBlobStore

__all__ = ["Archive", "ArchiveConfig", "BlobStore", "InstanceRef", "LocalBlobStore", "StoreResult"]
