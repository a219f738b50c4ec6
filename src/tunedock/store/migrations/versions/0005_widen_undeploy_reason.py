"""widen the un-deploy reason: a crash reason quotes the replica's last error lines

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 22:05:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deployments') as batch:
        batch.alter_column('undeploy_reason', existing_type=sa.String(length=255), type_=sa.Text(),
                           existing_nullable=True)


def downgrade() -> None:
    with op.batch_alter_table('deployments') as batch:
        batch.alter_column('undeploy_reason', existing_type=sa.Text(), type_=sa.String(length=255),
                           existing_nullable=True)
