"""add the notification outbox, model watchers, webhooks and the user's notify flag

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 21:35:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('users') as batch:
        batch.add_column(sa.Column('notify', sa.Boolean(), server_default='1', nullable=False))
    op.create_table('model_watchers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_model_watchers_model_id_models')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_model_watchers_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_watchers')),
    sa.UniqueConstraint('model_id', 'user_id', name='uq_model_watchers_model_user')
    )
    op.create_index(op.f('ix_model_watchers_model_id'), 'model_watchers', ['model_id'], unique=False)
    op.create_table('webhooks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('secret', sa.String(length=128), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_webhooks_model_id_models')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhooks'))
    )
    op.create_index(op.f('ix_webhooks_model_id'), 'webhooks', ['model_id'], unique=False)
    op.create_table('notifications',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('deployment_id', sa.Integer(), nullable=True),
    sa.Column('webhook_id', sa.Integer(), nullable=True),
    sa.Column('recipients', sa.JSON(), nullable=False),
    sa.Column('message_id', sa.String(length=255), nullable=False),
    sa.Column('subject', sa.Text(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('html', sa.Text(), nullable=False),
    sa.Column('facts', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['deployment_id'], ['deployments.id'], name=op.f('fk_notifications_deployment_id_deployments')),
    sa.ForeignKeyConstraint(['webhook_id'], ['webhooks.id'], name=op.f('fk_notifications_webhook_id_webhooks')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notifications')),
    sa.UniqueConstraint('message_id', name=op.f('uq_notifications_message_id'))
    )
    op.create_index(op.f('ix_notifications_deployment_id'), 'notifications', ['deployment_id'], unique=False)
    op.create_index('ix_notifications_status_next_attempt_at', 'notifications', ['status', 'next_attempt_at'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('ix_notifications_status_next_attempt_at', table_name='notifications')
    op.drop_index(op.f('ix_notifications_deployment_id'), table_name='notifications')
    op.drop_table('notifications')
    op.drop_index(op.f('ix_webhooks_model_id'), table_name='webhooks')
    op.drop_table('webhooks')
    op.drop_index(op.f('ix_model_watchers_model_id'), table_name='model_watchers')
    op.drop_table('model_watchers')
    with op.batch_alter_table('users') as batch:
        batch.drop_column('notify')
