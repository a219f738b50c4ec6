"""record what each deployment ran, where a redeploy came from, and cancellations

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 21:20:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deployments') as batch:
        batch.add_column(sa.Column('files_hash', sa.String(length=80), nullable=True))
        batch.add_column(sa.Column('engine_version', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('origin_deployment_id', sa.Integer(), nullable=True))
        batch.create_foreign_key(op.f('fk_deployments_origin_deployment_id_deployments'), 'deployments',
                                 ['origin_deployment_id'], ['id'])
    op.create_index('ix_deployments_model_status_version', 'deployments', ['model_id', 'status', 'version'])
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('cancel_requested_by', sa.String(length=64), nullable=True))
    with op.batch_alter_table('models') as batch:
        batch.add_column(sa.Column('deleted_by', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('models') as batch:
        batch.drop_column('deleted_by')
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('cancel_requested_by')
    op.drop_index('ix_deployments_model_status_version', table_name='deployments')
    with op.batch_alter_table('deployments') as batch:
        batch.drop_constraint(op.f('fk_deployments_origin_deployment_id_deployments'), type_='foreignkey')
        batch.drop_column('origin_deployment_id')
        batch.drop_column('engine_version')
        batch.drop_column('files_hash')
