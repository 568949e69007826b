"""operations: erasure tombstones; the audit log outlives the review items it names.

An erased (or expired) review item is deleted, but its audit entries stay (the audit log is append-only and
never deleted). The foreign key from audit_log.review_item_id to review_items would forbid that, so it is
dropped: the audit entry keeps the item's id as a plain number.

Revision ID: 0a5e0b5e0004
Revises: 3e5ca0000003
Create Date: 2026-11-24 00:40:00
"""
from alembic import op
import sqlalchemy as sa


revision = "0a5e0b5e0004"
down_revision = "3e5ca0000003"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
SQLITE_FK = "fk_audit_log_review_item_id_review_items"
NAMING = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}
APPEND_ONLY_MESSAGE = "audit_log is append-only"


def upgrade() -> None:
    op.create_table(
        "erasures",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("erased_by", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("selector", sa.String(length=300), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("erasures", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_erasures_sha256"), ["sha256"], unique=False)
        batch_op.create_index(batch_op.f("ix_erasures_erased_at"), ["erased_at"], unique=False)
    if op.get_context().dialect.name == "postgresql":
        op.drop_constraint("audit_log_review_item_id_fkey", "audit_log", type_="foreignkey")
        return
    # SQLite: the table is rebuilt without the key; the rebuild drops its append-only triggers, so they are
    # dropped first (the copy is an INSERT, which they allow anyway) and made again.
    _sqlite_triggers(create=False)
    with op.batch_alter_table("audit_log", recreate="always", naming_convention=NAMING) as batch_op:
        batch_op.drop_constraint(SQLITE_FK, type_="foreignkey")
    _sqlite_triggers(create=True)


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.create_foreign_key("audit_log_review_item_id_fkey", "audit_log", "review_items", ["review_item_id"], ["id"])
    else:
        _sqlite_triggers(create=False)
        with op.batch_alter_table("audit_log", recreate="always") as batch_op:
            batch_op.create_foreign_key(SQLITE_FK, "review_items", ["review_item_id"], ["id"])
        _sqlite_triggers(create=True)
    with op.batch_alter_table("erasures", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_erasures_erased_at"))
        batch_op.drop_index(batch_op.f("ix_erasures_sha256"))
    op.drop_table("erasures")


def _sqlite_triggers(create: bool) -> None:
    for verb in ("UPDATE", "DELETE"):
        op.execute(f"DROP TRIGGER IF EXISTS audit_log_no_{verb.lower()}")
        if create:
            op.execute(f"""
                CREATE TRIGGER audit_log_no_{verb.lower()} BEFORE {verb} ON audit_log
                BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END;
            """)
