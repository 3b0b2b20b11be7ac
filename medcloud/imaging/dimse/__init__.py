"""DIMSE (PS3.7/PS3.4) for the imaging archive, on pynetdicom: an SCP in front of ``Archive`` and an SCU.

``scp.DimseServer`` serves C-ECHO, C-STORE, C-FIND, C-MOVE and C-GET; ``scu`` talks to remote AEs
(``medcloud dicom echo|send|find|move``); ``find`` translates C-FIND identifiers to QIDO queries so
both protocols share one matcher; ``remotes`` resolves configured peers.
"""
