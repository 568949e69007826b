"""verdict thresholds: the cut-offs that made each verdict, stored with it.

Revision ID: 7e5d0a1d0007
Revises: 0b0c5e0d0006
Create Date: 2026-12-07 00:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = "7e5d0a1d0007"
down_revision = "0b0c5e0d0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("verdicts") as batch:
        batch.add_column(sa.Column("threshold_fake", sa.Float(), nullable=True))
        batch.add_column(sa.Column("threshold_real", sa.Float(), nullable=True))
        batch.add_column(sa.Column("min_face_side", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("verdicts") as batch:
        batch.drop_column("min_face_side")
        batch.drop_column("threshold_real")
        batch.drop_column("threshold_fake")
