"""Attachments and receipts on transactions (decision 0037): only the transaction's owner may add, read
or remove them; each change re-renders the transaction (its `attachments` and `receipts`) as a new
version and announces it (`transaction.updated`, change `annotated`), like a note.

Every method receives the caller's session; the api layer commits once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.transactions import repository as repo
from services.transactions.feed import FeedItem
from services.transactions.models import Attachment, Receipt, Transaction, TransactionRow, Upload
from services.transactions.publish import Announcer, feed_event
from services.transactions.render import rfc3339, transaction_json
from services.transactions.schemas import ReceiptIn
from services.transactions.storage import FILES, MAX_BYTES, LocalStore, ObjectStore, new_key, valid_key
from shared.errors import BankError, bad_request, conflict, not_found
from shared.ids import new_id
from shared.money import parse_currency


def _now() -> datetime:
    return datetime.now(UTC)


def attachment_json(a: Attachment) -> dict[str, Any]:
    return {
        "id": a.id, "user_id": a.user_id, "external_id": a.external_id, "file_url": a.file_url,
        "file_type": a.file_type, "created": rfc3339(a.created),
    }  # fmt: skip


def receipt_json(r: Receipt) -> dict[str, Any]:
    return {"id": r.id, "external_id": r.external_id, "transaction_id": r.transaction_id, **r.doc}


@dataclass(frozen=True)
class ReceiptAnswer:
    receipt_id: str
    items_total: int
    total: int

    def to_json(self) -> dict[str, Any]:
        """Monzo's answer, plus the flag: items that do not add up to the total are accepted, not hidden."""
        return {
            "receipt_id": self.receipt_id,
            "items_total": self.items_total,
            "total_matches_items": self.items_total == self.total,
        }


class Annotations:
    def __init__(self, announcer: Announcer, store: ObjectStore, public_url: str) -> None:
        self.announcer = announcer
        self.store = store
        self.files_url = public_url.rstrip("/") + FILES

    # -- the transaction ---------------------------------------------------------------------------------

    async def owned_transaction(self, session: AsyncSession, user_id: str, tx_id: str) -> TransactionRow:
        """The caller's transaction, locked; a 404 for anyone else's (nothing said about it)."""
        tx = await repo.row_by_id(session, tx_id) if len(tx_id) <= 128 else None
        if tx is None or tx.user_id != user_id:
            raise not_found("transaction", "no transaction with that id")
        return tx

    async def _refresh(self, session: AsyncSession, tx: TransactionRow) -> None:
        """Show the transaction's live attachments and receipts; a new version, announced, if they changed."""
        attachments = await session.scalars(
            select(Attachment)
            .where(Attachment.external_id == tx.id, Attachment.deregistered.is_(None))
            .order_by(Attachment.created, Attachment.id)
        )
        receipts = await session.scalars(
            select(Receipt).where(Receipt.transaction_id == tx.id).order_by(Receipt.created, Receipt.id)
        )
        shown = [attachment_json(a) for a in attachments]
        listed = [{"id": r.id, "external_id": r.external_id} for r in receipts]
        if (shown, listed) == (tx.attachments, tx.receipts):
            return
        tx.attachments, tx.receipts = shown, listed
        await self._publish(session, tx)

    async def annotate(
        self, session: AsyncSession, user_id: str, tx_id: str, changes: dict[str, str]
    ) -> None:
        """Set metadata keys (an empty value deletes the key; `notes` sets the notes); a new version,
        announced, if anything changed."""
        tx = await self.owned_transaction(session, user_id, tx_id)
        notes, metadata = tx.notes, dict(tx.metadata)
        for key, value in changes.items():
            if key == "notes":
                notes = value
            elif value == "":
                metadata.pop(key, None)
            else:
                metadata[key] = value
        if (notes, metadata) != (tx.notes, tx.metadata):
            tx.notes, tx.metadata = notes, metadata
            await self._publish(session, tx)

    async def _publish(self, session: AsyncSession, tx: TransactionRow) -> None:
        """Save an annotated transaction as a new version and announce it (`annotated`)."""
        tx.annotated, tx.version = _now(), tx.version + 1
        item = FeedItem.from_json(tx.item)
        body = transaction_json(tx, item)
        day = (tx.account_id, tx.spend_day)
        saved = await repo.save_batch(
            session, [(tx, body)], merchants=[], spend_moves={}, want_spend=[day],
            want_merchants=[tx.merchant_id] if tx.merchant_id else [],
        )  # fmt: skip
        event = feed_event(
            tx, kind=item.kind, currency=item.currency, body=body, spend_today=saved.spend.get(day, 0),
            merchant=saved.merchants.get(tx.merchant_id) if tx.merchant_id else None, change="annotated",
            first=False,
        )  # fmt: skip
        await self.announcer.announce_many(session, [(event, None)])

    # -- attachments ---------------------------------------------------------------------------------------

    async def start_upload(
        self, session: AsyncSession, user_id: str, file_name: str, file_type: str, content_length: int
    ) -> dict[str, str]:
        key = new_key(file_name)
        session.add(
            Upload(key=key, user_id=user_id, file_name=file_name, file_type=file_type,
                   content_length=content_length, created=_now(), uploaded=None)
        )  # fmt: skip
        await session.flush()
        return {
            "file_url": self.files_url + key,
            "upload_url": self.store.upload_url(key, file_type, content_length),
        }

    async def receive_upload(self, session: AsyncSession, key: str, content_type: str, data: bytes) -> None:
        """The bytes of an upload, PUT to its signed URL (the local store only): exactly the type and
        length the upload was asked for, and not once the file is attached."""
        assert isinstance(self.store, LocalStore)
        upload = await session.get(Upload, key, with_for_update=True) if valid_key(key) else None
        if upload is None:
            raise not_found("file", "no upload with that URL")
        if content_type.split(";", 1)[0].strip().lower() != upload.file_type:
            raise BankError(
                "bad_request.content_type", f"this upload is of {upload.file_type}: send that Content-Type"
            )
        if len(data) != upload.content_length:
            raise BankError(
                "bad_request.content_length",
                f"this upload is of {upload.content_length} bytes, not {len(data)}",
            )
        attached = await session.scalar(select(Attachment.id).where(Attachment.file_key == key).limit(1))
        if attached is not None:
            raise conflict("file_attached", "the file is attached to a transaction and cannot change")
        await self.store.put(key, data)
        upload.uploaded = _now()

    def _key_of(self, file_url: str) -> str:
        key = file_url.removeprefix(self.files_url) if file_url.startswith(self.files_url) else ""
        if not valid_key(key):
            raise bad_request(
                "bad_param.file_url", "file_url is the file_url /attachment/upload answered", param="file_url"
            )
        return key

    async def register(
        self, session: AsyncSession, user_id: str, external_id: str, file_url: str, file_type: str
    ) -> Attachment:
        """Attach an uploaded file to one of the caller's transactions. Registering the same file on the
        same transaction again answers the same attachment."""
        tx = await self.owned_transaction(session, user_id, external_id)
        key = self._key_of(file_url)
        upload = await session.get(Upload, key)
        if upload is None or upload.user_id != user_id:
            raise not_found("file", "no file of yours at that file_url")
        if file_type != upload.file_type:
            raise bad_request("bad_param.file_type", f"the file is {upload.file_type}", param="file_type")
        size = await self.store.size(key)
        if size is None:
            raise conflict(
                "file_not_uploaded", "the file's bytes have not been uploaded to its upload_url yet"
            )
        if size != upload.content_length or size > MAX_BYTES:
            raise bad_request("bad_param.file_url", "the stored file is not the size that was announced")
        existing = await session.scalar(
            select(Attachment).where(
                Attachment.external_id == tx.id, Attachment.file_key == key, Attachment.deregistered.is_(None)
            )
        )
        if existing is not None:
            return existing
        attachment = Attachment(
            id=new_id("attach"), user_id=user_id, external_id=tx.id, file_key=key, file_url=file_url,
            file_type=file_type, created=_now(), deregistered=None,
        )  # fmt: skip
        session.add(attachment)
        await session.flush()
        await self._refresh(session, tx)
        return attachment

    async def deregister(self, session: AsyncSession, user_id: str, attachment_id: str) -> None:
        """Remove an attachment from its transaction; again is a no-op."""
        found = await session.get(Attachment, attachment_id) if len(attachment_id) <= 128 else None
        if found is None or found.user_id != user_id:
            raise not_found("attachment", "no attachment with that id")
        tx = await self.owned_transaction(session, user_id, found.external_id)
        if found.deregistered is None:
            found.deregistered = _now()
            await session.flush()
            await self._refresh(session, tx)

    async def download_url(self, session: AsyncSession, user_id: str, key: str) -> str:
        upload = await session.get(Upload, key) if valid_key(key) else None
        if upload is None or upload.user_id != user_id:
            raise not_found("file", "no file of yours at that URL")
        if await self.store.size(key) is None:
            raise not_found("file", "the file's bytes have not been uploaded yet")
        return self.store.download_url(key)

    async def file_type(self, session: AsyncSession, key: str) -> str:
        upload = await session.get(Upload, key) if valid_key(key) else None
        if upload is None:
            raise not_found("file", "no such file")
        return upload.file_type

    # -- receipts -------------------------------------------------------------------------------------------

    async def put_receipt(self, session: AsyncSession, user_id: str, body: ReceiptIn) -> ReceiptAnswer:
        """Add a receipt to one of the caller's transactions, or replace the one with the same external id
        (which may move it to another of the caller's transactions)."""
        for where, currency in body.currencies():
            parse_currency(currency, param=where)
        tx = await self.owned_transaction(session, user_id, body.transaction_id)
        doc = body.model_dump(exclude={"transaction_id", "external_id"})
        now = _now()
        row = (
            await session.execute(
                insert(Receipt)
                .values(id=new_id("receipt"), user_id=user_id, external_id=body.external_id,
                        transaction_id=tx.id, doc=doc, created=now, updated=now)
                .on_conflict_do_update(
                    constraint="uq_receipts_user_external_id",
                    set_={"transaction_id": tx.id, "doc": doc, "updated": now},
                )
                .returning(Receipt.id, Receipt.transaction_id)
            )
        ).one()  # fmt: skip
        await self._refresh(session, tx)
        for other in await self._other_transactions_listing(session, row.id, tx.id):
            await self._refresh(session, other)
        return ReceiptAnswer(row.id, body.items_total, body.total)

    async def _other_transactions_listing(
        self, session: AsyncSession, receipt_id: str, but: str
    ) -> list[TransactionRow]:
        """Transactions other than `but` whose body still lists the receipt (it moved away from them)."""
        ids = await session.scalars(
            select(Transaction.id).where(
                Transaction.receipts.contains([{"id": receipt_id}]), Transaction.id != but
            )
        )
        out = []
        for tx_id in ids:
            row = await repo.row_by_id(session, tx_id)
            if row is not None:
                out.append(row)
        return out

    async def owned_receipt(self, session: AsyncSession, user_id: str, external_id: str) -> Receipt:
        found = await session.scalar(
            select(Receipt).where(Receipt.user_id == user_id, Receipt.external_id == external_id)
        )
        if found is None:
            raise not_found("receipt", "no receipt with that external_id")
        return found

    async def delete_receipt(self, session: AsyncSession, user_id: str, external_id: str) -> None:
        receipt = await self.owned_receipt(session, user_id, external_id)
        tx = await self.owned_transaction(session, user_id, receipt.transaction_id)
        await session.delete(receipt)
        await session.flush()
        await self._refresh(session, tx)
