"""OAuth2 authorization server tables (issue 4): clients, users, signing keys, codes, refresh tokens,
revoked access tokens and used client-assertion jtis (medcloud/storage/security_schema.py).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('oauth_clients',
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('secret_hash', sa.String(length=256), nullable=True),
    sa.Column('auth_method', sa.String(length=32), nullable=False),
    sa.Column('jwks', sa.Text(), nullable=True),
    sa.Column('jwks_uri', sa.String(length=2048), nullable=True),
    sa.Column('redirect_uris', sa.Text(), nullable=False),
    sa.Column('scopes', sa.Text(), nullable=False),
    sa.Column('grant_types', sa.Text(), nullable=False),
    sa.Column('revoked', sa.Boolean(), nullable=False),
    sa.Column('created', sa.BigInteger(), nullable=False),
    sa.Column('rotated', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('client_id')
    )
    op.create_table('oauth_codes',
    sa.Column('code_hash', sa.String(length=64), nullable=False),
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('username', sa.String(length=128), nullable=False),
    sa.Column('redirect_uri', sa.String(length=2048), nullable=False),
    sa.Column('scope', sa.Text(), nullable=False),
    sa.Column('patient', sa.String(length=64), nullable=True),
    sa.Column('fhir_user', sa.String(length=256), nullable=True),
    sa.Column('code_challenge', sa.String(length=128), nullable=False),
    sa.Column('expires', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('code_hash')
    )
    op.create_index('ix_oauth_codes_expires', 'oauth_codes', ['expires'], unique=False)
    op.create_table('oauth_refresh_tokens',
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('family', sa.String(length=64), nullable=False),
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('subject', sa.String(length=256), nullable=False),
    sa.Column('scope', sa.Text(), nullable=False),
    sa.Column('patient', sa.String(length=64), nullable=True),
    sa.Column('fhir_user', sa.String(length=256), nullable=True),
    sa.Column('issued', sa.BigInteger(), nullable=False),
    sa.Column('expires', sa.BigInteger(), nullable=False),
    sa.Column('rotated', sa.Boolean(), nullable=False),
    sa.Column('revoked', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('token_hash')
    )
    op.create_index('ix_oauth_refresh_expires', 'oauth_refresh_tokens', ['expires'], unique=False)
    op.create_index('ix_oauth_refresh_family', 'oauth_refresh_tokens', ['family'], unique=False)
    op.create_table('oauth_revoked_tokens',
    sa.Column('jti', sa.String(length=64), nullable=False),
    sa.Column('expires', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('jti')
    )
    op.create_index('ix_oauth_revoked_expires', 'oauth_revoked_tokens', ['expires'], unique=False)
    op.create_table('oauth_signing_keys',
    sa.Column('generation', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('kid', sa.String(length=64), nullable=False),
    sa.Column('alg', sa.String(length=16), nullable=False),
    sa.Column('private_pem', sa.LargeBinary(), nullable=False),
    sa.Column('public_jwk', sa.Text(), nullable=False),
    sa.Column('created', sa.BigInteger(), nullable=False),
    sa.Column('retired', sa.BigInteger(), nullable=True),
    sa.Column('expires', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('generation'),
    sa.UniqueConstraint('kid')
    )
    op.create_table('oauth_used_jtis',
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('jti', sa.String(length=256), nullable=False),
    sa.Column('expires', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('client_id', 'jti')
    )
    op.create_index('ix_oauth_used_jtis_expires', 'oauth_used_jtis', ['expires'], unique=False)
    op.create_table('oauth_users',
    sa.Column('username', sa.String(length=128), nullable=False),
    sa.Column('password_hash', sa.String(length=256), nullable=False),
    sa.Column('fhir_user', sa.String(length=256), nullable=True),
    sa.Column('patient', sa.String(length=64), nullable=True),
    sa.Column('disabled', sa.Boolean(), nullable=False),
    sa.Column('created', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('username')
    )


def downgrade() -> None:
    op.drop_table('oauth_users')
    op.drop_index('ix_oauth_used_jtis_expires', table_name='oauth_used_jtis')
    op.drop_table('oauth_used_jtis')
    op.drop_table('oauth_signing_keys')
    op.drop_index('ix_oauth_revoked_expires', table_name='oauth_revoked_tokens')
    op.drop_table('oauth_revoked_tokens')
    op.drop_index('ix_oauth_refresh_family', table_name='oauth_refresh_tokens')
    op.drop_index('ix_oauth_refresh_expires', table_name='oauth_refresh_tokens')
    op.drop_table('oauth_refresh_tokens')
    op.drop_index('ix_oauth_codes_expires', table_name='oauth_codes')
    op.drop_table('oauth_codes')
    op.drop_table('oauth_clients')
