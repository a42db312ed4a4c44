"""Content trees can carry a signature (``ContentTree.siginfo``).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29

``siginfo`` names the signer's certificate (``signercerturl``), an
intermediate certificate (``intercertsurl``), both relative to the content
tree's datastore, and the signature over the content's sha256. Content trees
stored before this revision have none.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("content_trees") as batch:
        batch.add_column(sa.Column("signer_cert_url", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("intermediate_cert_url", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("signature", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("content_trees") as batch:
        for column in ("signature", "intermediate_cert_url", "signer_cert_url"):
            batch.drop_column(column)
