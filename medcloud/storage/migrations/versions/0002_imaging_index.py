"""Imaging index: dicom_patients, dicom_studies, dicom_series, dicom_instances (issue 5).

Generated with alembic autogenerate from medcloud/storage/imaging_schema.py; checked by
tests/storage/test_migrations.py once schema.py imports imaging_schema.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 17:34:11.716904
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('dicom_patients',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('patient_name', sa.Text(), nullable=True),
    sa.Column('patient_birth_date', sa.String(length=8), nullable=True),
    sa.Column('patient_sex', sa.String(length=16), nullable=True),
    sa.Column('fhir_id', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('pk')
    )
    with op.batch_alter_table('dicom_patients', schema=None) as batch_op:
        batch_op.create_index('ix_dicom_patients_name', ['patient_name'], unique=False)
        batch_op.create_index('ux_dicom_patients_pid', ['patient_id'], unique=True)

    op.create_table('dicom_studies',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('patient_pk', sa.BigInteger(), nullable=False),
    sa.Column('study_date', sa.String(length=8), nullable=True),
    sa.Column('study_time', sa.String(length=16), nullable=True),
    sa.Column('accession_number', sa.String(length=64), nullable=True),
    sa.Column('referring_physician_name', sa.Text(), nullable=True),
    sa.Column('study_description', sa.Text(), nullable=True),
    sa.Column('study_id', sa.String(length=16), nullable=True),
    sa.Column('modalities', sa.String(length=256), nullable=True),
    sa.Column('num_series', sa.Integer(), nullable=False),
    sa.Column('num_instances', sa.Integer(), nullable=False),
    sa.Column('fhir_id', sa.String(length=64), nullable=True),
    sa.Column('updated', sa.BigInteger(), nullable=False),
    sa.Column('stable_at', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['patient_pk'], ['dicom_patients.pk'], ),
    sa.PrimaryKeyConstraint('pk')
    )
    with op.batch_alter_table('dicom_studies', schema=None) as batch_op:
        batch_op.create_index('ix_dicom_studies_accession', ['accession_number'], unique=False)
        batch_op.create_index('ix_dicom_studies_date', ['study_date'], unique=False)
        batch_op.create_index('ix_dicom_studies_patient', ['patient_pk'], unique=False)
        batch_op.create_index('ix_dicom_studies_stable', ['stable_at', 'updated'], unique=False)
        batch_op.create_index('ix_dicom_studies_updated', ['updated'], unique=False)
        batch_op.create_index('ux_dicom_studies_uid', ['study_uid'], unique=True)

    op.create_table('dicom_series',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('series_uid', sa.String(length=64), nullable=False),
    sa.Column('study_pk', sa.BigInteger(), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=True),
    sa.Column('series_number', sa.Integer(), nullable=True),
    sa.Column('series_description', sa.Text(), nullable=True),
    sa.Column('body_part_examined', sa.String(length=64), nullable=True),
    sa.Column('pps_start_date', sa.String(length=8), nullable=True),
    sa.Column('pps_start_time', sa.String(length=16), nullable=True),
    sa.Column('num_instances', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['study_pk'], ['dicom_studies.pk'], ),
    sa.PrimaryKeyConstraint('pk')
    )
    with op.batch_alter_table('dicom_series', schema=None) as batch_op:
        batch_op.create_index('ix_dicom_series_modality', ['modality'], unique=False)
        batch_op.create_index('ix_dicom_series_study', ['study_pk'], unique=False)
        batch_op.create_index('ux_dicom_series_uid', ['series_uid'], unique=True)

    op.create_table('dicom_instances',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('sop_uid', sa.String(length=64), nullable=False),
    sa.Column('series_pk', sa.BigInteger(), nullable=False),
    sa.Column('study_pk', sa.BigInteger(), nullable=False),
    sa.Column('sop_class_uid', sa.String(length=64), nullable=False),
    sa.Column('instance_number', sa.Integer(), nullable=True),
    sa.Column('rows', sa.Integer(), nullable=True),
    sa.Column('columns', sa.Integer(), nullable=True),
    sa.Column('number_of_frames', sa.Integer(), nullable=True),
    sa.Column('bits_allocated', sa.Integer(), nullable=True),
    sa.Column('transfer_syntax_uid', sa.String(length=64), nullable=False),
    sa.Column('blob_key', sa.String(length=256), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('stored', sa.BigInteger(), nullable=False),
    sa.Column('metadata', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['series_pk'], ['dicom_series.pk'], ),
    sa.PrimaryKeyConstraint('pk')
    )
    with op.batch_alter_table('dicom_instances', schema=None) as batch_op:
        batch_op.create_index('ix_dicom_instances_class', ['sop_class_uid'], unique=False)
        batch_op.create_index('ix_dicom_instances_series', ['series_pk', 'instance_number'], unique=False)
        batch_op.create_index('ix_dicom_instances_study', ['study_pk'], unique=False)
        batch_op.create_index('ux_dicom_instances_uid', ['sop_uid'], unique=True)



def downgrade() -> None:
    with op.batch_alter_table('dicom_instances', schema=None) as batch_op:
        batch_op.drop_index('ux_dicom_instances_uid')
        batch_op.drop_index('ix_dicom_instances_study')
        batch_op.drop_index('ix_dicom_instances_series')
        batch_op.drop_index('ix_dicom_instances_class')

    op.drop_table('dicom_instances')
    with op.batch_alter_table('dicom_series', schema=None) as batch_op:
        batch_op.drop_index('ux_dicom_series_uid')
        batch_op.drop_index('ix_dicom_series_study')
        batch_op.drop_index('ix_dicom_series_modality')

    op.drop_table('dicom_series')
    with op.batch_alter_table('dicom_studies', schema=None) as batch_op:
        batch_op.drop_index('ux_dicom_studies_uid')
        batch_op.drop_index('ix_dicom_studies_updated')
        batch_op.drop_index('ix_dicom_studies_stable')
        batch_op.drop_index('ix_dicom_studies_patient')
        batch_op.drop_index('ix_dicom_studies_date')
        batch_op.drop_index('ix_dicom_studies_accession')

    op.drop_table('dicom_studies')
    with op.batch_alter_table('dicom_patients', schema=None) as batch_op:
        batch_op.drop_index('ux_dicom_patients_pid')
        batch_op.drop_index('ix_dicom_patients_name')

    op.drop_table('dicom_patients')
